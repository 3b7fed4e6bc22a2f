"""What a pool is given and what it must do."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ...runtime import Supervisor
from ...runtime.green import HubInbox
from ..execute import Outcome
from ..jobs import Job


class PoolShortage(Exception):
    """The pool cannot run one more handler now: the process is at a limit
    (threads, memory), which is no fault of the task's. Raised by
    :meth:`Pool.run` before the handler started and before anything was
    queued for it: the worker gives the task back unstarted (no attempt
    spent) and runs on with the handler slots it has."""


class NotStarted(Exception):
    """The worker is stopping and the pool took ``job`` back before its
    handler started (:meth:`Pool.withdraw`): raised by :meth:`Pool.run`. The
    worker gives the task back to its node unstarted (no attempt spent)."""


@dataclass
class PoolParts:
    """The narrow handles a pool gets from its worker."""

    concurrency: int
    supervisor: Supervisor
    #: Extends a running task's lease and sends TOUCH; call in the hub.
    touch: Callable[[str], None]
    #: Hands a call from another thread to the hub.
    inbox: HubInbox
    #: ``module:attribute`` of the app (child processes import it themselves).
    app_spec: str | None
    max_tasks_per_child: int
    log_level: str


class Pool(Protocol):
    name: str

    def start(self) -> None:
        """Get ready to run (threads, children); called once, in the hub."""

    def ready(self, timeout: float) -> bool:
        """Wait (cooperatively, at most ``timeout`` seconds) until the pool can
        run ``concurrency`` handlers at once; True if it can. The worker
        registers with its nodes -- offers its capacity -- only then, or
        after :data:`~miyaq.worker.config.POOL_READY_WAIT`."""

    def run(self, job: Job) -> Outcome:
        """Run ``job``'s handler; called in a runner greenlet, which it blocks
        cooperatively until the handler ended or was stopped. Never raises
        for anything the handler does; raises :class:`PoolShortage`, the
        handler not started, when the pool cannot get what one more handler
        needs (the threads pool: a thread)."""

    def withdraw(self) -> list[Job]:
        """The worker is stopping: start no more handlers. The jobs whose
        ``run`` call waits for room (none of them started: the processes
        pool's, waiting for a child) are taken back -- those calls raise
        :class:`NotStarted` -- and returned, for the worker to give back
        unstarted; a later ``run`` call raises it at once. Pools that never
        make a job wait return an empty list. Must not block."""

    def interrupt(self, job: Job) -> None:
        """Stop ``job``'s handler for ``job.stop_reason``, as this pool can
        (must not block). The ``run`` call returns that interruption."""

    def stop(self) -> None:
        """Release threads and children once no handler runs. Never raises."""
