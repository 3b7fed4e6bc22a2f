"""The bench's handle on its producer process (:mod:`miyaq.bench.agent`).

:class:`Producer` starts the agent through the process group (it dies with
the bench), waits for its ``ready`` line and sends it one command at a
time, each answer read with a deadline. A producer that exits or stays
silent past the deadline raises :class:`~miyaq.errors.MiyaqError` naming
its log, so a broken client shows as a message, never as a hung bench.
It is then killed and :attr:`Producer.lost` says why: an answer it might
still write would be taken for the next command's, so it gets none.
"""
from __future__ import annotations

import json
import os
import select
import time
from array import array
from typing import Any

from ..errors import MiyaqError, Timeout
from . import TASK_NAME, agent
from .procs import Child, ProcessGroup

SLACK = 15.0     # seconds an answer may take beyond the command's own limit
#: Bytes the producer's encoding adds to a payload of ``--payload`` bytes at
#: most: a task's body is msgpack ``[[payload], {}]`` (a bin32 header of 5).
PAYLOAD_ENVELOPE = 8


def largest_payload(max_payload: int) -> int:
    """The largest ``--payload`` a node with this ``max_payload`` takes."""
    return max_payload - PAYLOAD_ENVELOPE


class Producer:
    def __init__(self, procs: ProcessGroup, python: str, system: str, connect: str, queue: str,
                 name: str = TASK_NAME, env: dict[str, str] | None = None) -> None:
        self.procs = procs
        self.env = dict(os.environ, **env) if env else None    # with --keys: MIYAQ_KEY/MIYAQ_SERVER_KEY
        self.argv = [python, agent.__file__, "--system", system, "--connect", connect,
                     "--queue", queue, "--name", name]
        self.child: Child | None = None
        self._buffer = b""
        #: Why the producer takes no more commands (it failed one); None while it is usable.
        self.lost: str | None = None

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def start(self, timeout: float) -> "Producer":
        self.child = self.procs.start("producer", self.argv, env=self.env, pipes=True)
        hello = self._read(timeout)
        if not hello.get("ready"):
            raise MiyaqError(f"the producer could not connect: {hello.get('error')}")
        return self

    def command(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one command and return its answer, read within ``timeout`` +
        :data:`SLACK` seconds. A producer that is gone, exits, or does not
        answer in time raises MiyaqError, is killed, and is :attr:`lost`
        (every later command raises at once)."""
        assert self.child is not None and self.child.proc.stdin is not None
        if self.lost is not None:
            raise MiyaqError(f"the producer is unusable: {self.lost}")
        try:
            try:
                self.child.proc.stdin.write((json.dumps(cmd) + "\n").encode())
                self.child.proc.stdin.flush()
            except OSError as exc:
                self.child.kill()
                raise MiyaqError(f"the producer is gone ({exc}): {self.child.describe_exit()}") from None
            return self._read(timeout + SLACK)
        except MiyaqError as err:
            self.lost = err.message
            self.child.kill()
            raise

    def load(self, times_path: str, timeout: float, **cmd: Any) -> tuple[dict[str, Any], list[float]]:
        """A ``load`` command; returns its answer and the submit times."""
        times = array("d")
        try:
            answer = self.command({"op": "load", "times": times_path, "seconds": timeout, **cmd}, timeout)
            with open(times_path, "rb") as fh:
                times.frombytes(fh.read())
        finally:
            if os.path.exists(times_path):
                os.unlink(times_path)
        return answer, times.tolist()

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.child is not None and self.child.proc.stdout is not None
        fd = self.child.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"the producer did not answer within {timeout:.0f}s; "
                              f"last lines of its output:\n{self.child.log_tail()}")
            # poll, not select: select() refuses a descriptor past 1023 (a
            # bench run in a process with many files open failed so).
            if not _readable(fd, min(left, 1.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                self.child.proc.wait(5.0)
                raise MiyaqError(f"the producer exited: {self.child.describe_exit()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def quit(self) -> None:
        """Ask the agent to close its connection and exit. Never raises."""
        if self.child is None or not self.child.alive():
            return
        try:
            assert self.child.proc.stdin is not None
            self.child.proc.stdin.write(b'{"op": "quit"}\n')
            self.child.proc.stdin.close()
            self.child.proc.wait(10.0)
        except Exception:   # the process group's close() kills it anyway
            pass


def _readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` has something to read (or is at its end) within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))
