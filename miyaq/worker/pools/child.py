"""A process-pool child: this module run as ``__main__`` with ``ENDPOINT IDENTITY APP PARENT_PID LOG_LEVEL``
(``python -c CHILD_BOOT ...``: :func:`~miyaq.worker.pools.child_process.child_command`).

Started by :class:`~miyaq.worker.pools.processes.ProcessPool` as a fresh
interpreter (never forked from the gevent parent). It imports the app,
connects a plain DEALER to the parent's ROUTER (an ``ipc://`` socket in a
private directory), says HELLO and then runs one task at a time (the
handler runs in the main thread; a daemon thread watches the parent):

- parent → child: ``RUN {id, name, queue, attempt, timeout, body, node}``, ``EXIT``;
- child → parent: ``HELLO {pid}``, ``TOUCH {id}``, ``OUTCOME {id, outcome}``.

SIGINT, SIGTERM and SIGHUP are ignored, from the child's first line of
Python (``CHILD_BOOT``; before 2026-12-07 from :func:`main` only, after the
package's imports): a Ctrl-C, a closed terminal or a
service manager's SIGTERM to the whole process group reaches the parent,
which drains and then ends its children itself (before 2026-12-05 a SIGHUP
killed each child mid-task before its parent could drain). A child dies
with its parent (killed with SIGKILL, by the OOM killer), whatever it was
running: on Linux at once (``PR_SET_PDEATHSIG``, SIGKILL: nobody is left to
take its outcome, and its task goes to another worker); elsewhere within
``CHILD_PARENT_CHECK`` seconds (a thread watches the parent). Before
2026-12-07 it was the watch alone on Linux too: ``miyaq chaos --pool
processes`` saw a killed worker's children run on for up to a second and
finish tasks whose outcome no one took, run again elsewhere.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import msgpack

from ...logs import setup_logging
from ...runtime.sockets import SocketFactory
from ..config import CHILD_MESSAGE_BYTES, CHILD_PARENT_CHECK
from ..context import TaskContext, bind, unbind
from ..execute import Outcome, run_async, run_sync, too_large
from ..signals import default_in_forked_copies, disregard

logger = logging.getLogger(__name__)

HELLO, RUN, TOUCH, OUTCOME, EXIT = b"HELLO", b"RUN", b"TOUCH", b"OUTCOME", b"EXIT"


def pack(kind: bytes, body: dict[str, Any]) -> list[bytes]:
    return [kind, msgpack.packb(body, use_bin_type=True)]


def unpack(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    body = msgpack.unpackb(frames[1], raw=False, strict_map_key=False) if len(frames) > 1 else {}
    return frames[0], body if isinstance(body, dict) else {}


def outcome_frames(task_id: Any, outcome: Outcome) -> list[bytes]:
    """The OUTCOME message for ``outcome``; a result too large for the
    parent's socket fails instead (not retried, as a node fails a result
    over its ``max_payload``). Before (2026-12-04) the parent's socket
    dropped it with the connection, and the task ran on, as far as the
    worker knew, until its timeout stopped it (``Timeout``, retried)."""
    frames = pack(OUTCOME, {"id": task_id, "outcome": list(outcome)})
    if len(frames[1]) > CHILD_MESSAGE_BYTES:
        size = len(outcome[1]) if isinstance(outcome[1], bytes) else len(frames[1])
        failed = too_large(size, CHILD_MESSAGE_BYTES, "a processes-pool child can return")
        frames = pack(OUTCOME, {"id": task_id, "outcome": ["failed", failed]})
    return frames



TOUCH_RELAY_SHARE = 0.05
"""A child relays at most one touch of its task per this share of the
task's timeout (and per ``TOUCH_RELAY_MOST`` seconds at most)."""
TOUCH_RELAY_MOST = 0.05


class TouchRelay:
    """A handler's ``touch()`` in a child: sent to the parent at most once
    per ``min(TOUCH_RELAY_MOST, TOUCH_RELAY_SHARE × timeout)`` seconds;
    touches closer together are dropped (the lease then runs from the
    first of them: at most a twentieth of the timeout earlier). Before
    2026-12-05 every touch was a message the parent unpacked and relayed:
    13.5 µs of the parent's CPU a touch against 3.3 in the child, and 8
    handlers touching in a loop took 83 % of a core in the parent alone."""

    __slots__ = ("send", "every", "last")

    def __init__(self, send: Any, timeout: Any) -> None:
        self.send = send
        share = TOUCH_RELAY_SHARE * timeout if isinstance(timeout, (int, float)) and timeout > 0 else TOUCH_RELAY_MOST
        self.every = min(TOUCH_RELAY_MOST, share)
        self.last = float("-inf")

    def __call__(self, task_id: str) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.send(task_id)

class Child:
    def __init__(self, endpoint: str, identity: bytes, app_spec: str, parent: int) -> None:
        from ..loader import load_app
        self.parent = parent
        self.pid = os.getpid()
        # Watched from the start: an app that takes long to import (or never
        # finishes) must not outlive a parent killed meanwhile (it ran on for
        # the whole import before 2026-12-05's review: its signals are the
        # pool's, disregarded here).
        threading.Thread(target=self._watch_parent, name="parent-watch", daemon=True).start()
        self.app = load_app(app_spec)
        self.app.green = False          # handlers that submit use a thread-based client
        self.factory = SocketFactory(green=False)
        self.sock = self.factory.dealer(endpoint, identity=identity)
        self.loop: asyncio.AbstractEventLoop | None = None

    def serve(self) -> None:
        self.sock.send_multipart(pack(HELLO, {"pid": os.getpid()}))
        while True:
            kind, body = unpack(self.sock.recv_multipart())
            if kind == EXIT:
                return
            if kind == RUN:
                outcome = self.run(body)
                if os.getpid() != self.pid:
                    # A handler forked and its copy returned here: only the
                    # child the pool started reports, the copy ends now (it
                    # has no parent watch, and its socket is the child's).
                    os._exit(0)
                self.sock.send_multipart(outcome_frames(body.get("id"), outcome))

    def _watch_parent(self) -> None:
        """Exit at once when the parent is gone (killed with SIGKILL), even
        in the middle of a handler: nobody is left to take its outcome."""
        while True:
            time.sleep(CHILD_PARENT_CHECK)
            if os.getppid() != self.parent:
                logger.warning("worker child %d: the parent is gone; exiting", os.getpid())
                os._exit(1)

    def _send_touch(self, task_id: str) -> None:
        self.sock.send_multipart(pack(TOUCH, {"id": task_id}))

    def run(self, task: dict[str, Any]) -> Outcome:
        tdef = self.app.tasks.get(str(task.get("name")))
        if tdef is None:
            return ("failed", {"type": "UnknownTask", "retry": True,
                               "message": self.app.unknown_task(task.get("name"), "this worker's child")})
        touch = TouchRelay(self._send_touch, task["timeout"])
        token = bind(TaskContext(task["id"], task["name"], task["queue"], task["attempt"], task["timeout"],
                                 touch, task.get("node")))
        try:
            if tdef.is_async:
                if self.loop is None:
                    self.loop = asyncio.new_event_loop()
                return self.loop.run_until_complete(run_async(tdef.fn, task.get("body"), lambda: None))
            return run_sync(tdef.fn, task.get("body"))
        finally:
            unbind(token)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()
        self.app.close()
        self.factory.close()


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process the moment its parent
    (the thread of it that started this one: the worker's hub) ends; exit
    now if it has already. Elsewhere nothing: the parent watch is all."""
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if libc_name:
        ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:      # it died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    endpoint, identity, app_spec, parent, log_level = argv
    die_with_parent(int(parent))
    disregard(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)     # the pool's to act on; not SIG_IGN (inherited)
    default_in_forked_copies()      # but a handler's forked helper's, as in a fresh Python
    setup_logging(log_level)
    child = Child(endpoint, identity.encode(), app_spec, int(parent))
    try:
        child.serve()
    finally:
        child.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
