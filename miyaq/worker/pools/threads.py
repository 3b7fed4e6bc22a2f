"""The threads pool: handlers run in ``--concurrency`` native threads.

For libraries that do not cooperate with gevent (C drivers that block in
their own code): nothing is monkey-patched, the worker's links, heartbeats
and watchdog keep running in the hub while handler threads block. A cancel
or a timeout raises the interruption in the handler's thread at its next
check -- the next Python bytecode it runs (CPython's asynchronous
exception, as Dramatiq's time limits use): a thread inside one long C call
(``time.sleep(60)``, a socket read without a timeout) sees it only when
that call returns.
"""
from __future__ import annotations

import ctypes
import logging

from ...runtime import green
from ..context import bind, unbind
from ..execute import Interrupted, Outcome, interrupted, run_sync
from ..jobs import Job
from .base import PoolParts

logger = logging.getLogger(__name__)

STOP_WAIT = 2.0     # seconds stop() waits for idle threads to end


def raise_in_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """Make ``exc_type`` raise in the thread ``ident`` at its next bytecode."""
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    if n > 1:   # cannot happen for one ident; undo rather than hit other threads
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
    return n == 1


class ThreadsPool:
    name = "threads"

    def __init__(self, parts: PoolParts) -> None:
        self.parts = parts
        self.threads = green.ThreadPool(parts.concurrency)

    def start(self) -> None:
        pass

    def ready(self, timeout: float) -> bool:
        return True

    def run(self, job: Job) -> Outcome:
        outcome: Outcome = self.threads.spawn(self._call, job).get()
        return outcome

    def _touch(self, task_id: str) -> None:
        self.parts.inbox.call(self.parts.touch, task_id)

    def _call(self, job: Job) -> Outcome:
        """In a pool thread."""
        try:
            with job.lock:
                job.handle = green.native_thread_ident()
            try:
                token = bind(job.context(self._touch))
                try:
                    return run_sync(job.fn, job.body)
                finally:
                    unbind(token)
            finally:
                with job.lock:
                    job.handle = None
        except Interrupted as exc:
            # set just as the handler returned: it was told to stop, so it stopped
            return interrupted(exc)

    def interrupt(self, job: Job) -> None:
        reason = job.stop_reason
        with job.lock:
            ident = job.handle
            if ident is not None and reason is not None:
                raise_in_thread(ident, reason)

    def stop(self) -> None:
        """End the idle threads (bounded wait); a thread still inside a
        handler cannot be ended and goes with the process."""
        try:
            with green.Timeout(STOP_WAIT, False):
                self.threads.kill()
        except Exception:
            logger.exception("stopping the handler threads failed")
