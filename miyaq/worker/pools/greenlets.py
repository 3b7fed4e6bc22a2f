"""The gevent pool: each handler runs in its runner greenlet.

Blocking calls yield only because ``miyaq worker`` monkey-patched the
standard library before it imported the app (``--pool gevent``, the
default). A cancel or a timeout raises the interruption inside the handler
at its next yield; a handler that never yields (CPU work) is not stopped.
"""
from __future__ import annotations

import logging

from ...runtime import green
from ..context import bind, unbind
from ..execute import Outcome, run_sync
from ..jobs import Job
from .base import PoolParts
from .process_pool_refusal import refuse_process_pools

logger = logging.getLogger(__name__)


class GreenletPool:
    name = "gevent"

    def __init__(self, parts: PoolParts) -> None:
        self.parts = parts
        if not green.is_patched("socket"):
            logger.warning(
                "gevent pool in a process gevent has not patched: handlers that block (time.sleep, "
                "sockets) run one at a time; `miyaq worker` patches before it imports the app")
        else:
            refuse_process_pools()      # it would hang the whole worker here

    def start(self) -> None:
        pass

    def ready(self, timeout: float) -> bool:
        return True

    def run(self, job: Job) -> Outcome:
        job.handle = green.current()
        token = bind(job.context(self.parts.touch))
        try:
            return run_sync(job.fn, job.body, self._killing)
        finally:
            unbind(token)
            job.handle = None

    def _killing(self) -> bool:
        """A GreenletExit in a handler is the worker's, killing its runners
        as it stops, only then (the supervisor is stopping); else the
        handler raised it and its task fails."""
        return self.parts.supervisor.stopping

    def withdraw(self) -> list[Job]:
        return []       # a runner's handler starts at once: none waits here

    def interrupt(self, job: Job) -> None:
        # Thrown from the hub, while the runner is suspended, and only if it
        # still runs this job: it never lands in the runner's next task.
        green.call_soon(self._throw, job)

    @staticmethod
    def _throw(job: Job) -> None:
        runner = job.handle
        if runner is not None and job.stop_reason is not None:
            runner.throw(job.stop_reason())

    def stop(self) -> None:
        pass
