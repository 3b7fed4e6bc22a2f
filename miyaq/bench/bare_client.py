"""The producer's side of the bare baseline (:mod:`miyaq.bench.bare`).

:class:`BareDriver` is what :mod:`miyaq.bench.agent` drives instead of
``miyaq.Client``: one DEALER, one message per task, no batching. Pipelined
submits keep at most ``window`` unacknowledged (as the client's window
does) and read acks as they come; a confirmed submit waits for its ack; a
call waits for the task's result. :class:`RelayProbe` asks a relay how many
tasks it received and saw done (the bench's drain check).
"""
from __future__ import annotations

import time
from typing import Any

import msgpack

from ..errors import MiyaqError, Timeout
from ..runtime.io_threads import NORMAL
from ..runtime.sockets import SocketFactory, zmq
from . import TASK_NAME

WINDOW = 10_000


class BareDriver:
    def __init__(self, endpoint: str, window: int = WINDOW, connect_timeout: float = 30.0) -> None:
        self.factory = SocketFactory(green=False, io_threads=NORMAL)
        self.sock = self.factory.dealer(endpoint)
        self.window = window
        self.in_flight = 0
        self.accepted = 0
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._stats(connect_timeout)          # the relay answers: connected

    def _stats(self, timeout: float) -> list[Any]:
        self.sock.send(self._pack(["S", 0]))
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(max(0.0, deadline - time.monotonic()))
            if msg[0] == "S":
                return msg

    def _recv(self, timeout: float | None) -> list[Any]:
        """The next message; counts acks. Raises Timeout."""
        if timeout is not None and not self.sock.poll(max(0, int(timeout * 1000))):
            raise Timeout(f"the relay did not answer within {timeout:.1f}s")
        msg: list[Any] = msgpack.unpackb(self.sock.recv(), raw=False)
        if msg[0] == "A":
            self.in_flight -= 1
            self.accepted += 1
        return msg

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msgpack.unpackb(data, raw=False)[0] == "A":
                self.in_flight -= 1
                self.accepted += 1

    def _send(self, task_id: str, payload: bytes, want_result: bool) -> None:
        body = self._pack([[payload], {}])
        self.sock.send(self._pack(["T", task_id, TASK_NAME, body, want_result]))
        self.in_flight += 1

    def submit(self, task_id: str, body: bytes, wait: bool, countdown: float | None,
               timeout: float) -> None:
        """Send one task; with ``wait``, until its ack, else while the window
        is full, wait at most ``timeout`` seconds (raises Timeout)."""
        if countdown:
            raise MiyaqError("the bare baseline has no timers (countdown)")
        if wait:
            self._send(task_id, body, False)
            self._wait_acks(0, timeout)
            return
        self._drain()
        if self.in_flight >= self.window:
            self._wait_acks(self.window - 1, timeout)
        self._send(task_id, body, False)

    def _wait_acks(self, most: int, timeout: float) -> None:
        """Read messages until at most ``most`` tasks await their ack. Raises Timeout."""
        deadline = time.monotonic() + timeout
        while self.in_flight > most:
            self._recv(max(0.0, deadline - time.monotonic()))

    def call(self, task_id: str, body: bytes, timeout: float) -> None:
        self._send(task_id, body, True)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(max(0.0, deadline - time.monotonic()))
            if msg[0] == "R" and msg[1] == task_id:
                return

    def flush(self, timeout: float) -> int:
        self._wait_acks(0, timeout)
        return self.accepted

    def cancel(self, task_id: str) -> bool:
        raise MiyaqError("the bare baseline cannot cancel")

    def close(self) -> None:
        self.factory.close()


class RelayProbe:
    """The bench's own connection to a relay, for :meth:`stats`."""

    def __init__(self, endpoint: str) -> None:
        self.factory = SocketFactory(green=False, io_threads=NORMAL)
        self.sock = self.factory.dealer(endpoint)
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._seq = 0

    def stats(self, timeout: float = 2.0) -> tuple[int, int, int]:
        """(tasks received, tasks done, workers registered) as the relay
        counted them after this request. Raises Timeout. Each request
        carries a number the relay echoes: the answer to an earlier request
        that timed out, arriving late, is skipped, never taken for this
        one's (a slow relay start once made the first drain check read the
        counts from before the phase). An answer without a number (a relay
        of a build that echoes none) is taken as it comes."""
        self._seq += 1
        seq = self._seq
        self.sock.send(self._pack(["S", seq]))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(max(1, int(left * 1000))):
                raise Timeout(f"the bare relay did not answer within {timeout:g}s")
            msg = msgpack.unpackb(self.sock.recv(), raw=False)
            if msg[0] == "S" and msg[4:5] in ([seq], []):   # [] : a relay that echoes no number
                return int(msg[1]), int(msg[2]), int(msg[3])

    def close(self) -> None:
        self.factory.close()
