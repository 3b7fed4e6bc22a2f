"""The one place the HTTP gateway stores a new task.

:func:`submit_task` returns the engine's submit outcome ``(status, detail)``:
``("accepted", None)`` or ``("duplicate", holder_id)``, and raises a
:class:`~miyaq.errors.MiyaqError` (BUSY, SHUTTING_DOWN, TIMEOUT...) when the
task was not stored. It blocks the calling request greenlet (never the
event loop) until the task is accepted as the ZeroMQ SUBMIT path would
acknowledge it: with a durable log, once the log has the task (fsync
policy permitting).

It goes through the role's intake — in a cluster, the replicating intake
that stores the task on ``min_acks`` holders before it answers — with a
callback as the acknowledgement's destination, exactly like a ZeroMQ SUBMIT.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from miyaq.constants import HTTP_ACK_WAIT
from miyaq.core.handles import Intake
from miyaq.errors import Timeout, from_wire
from miyaq.protocol.commands import REJECTED
from miyaq.runtime import green
from miyaq.store.task import Task



def submit_task(intake: Intake, wake: Callable[[float], None], task: Task, now: float) -> tuple[str, Any]:
    """Store ``task`` through ``intake``; ``wake(now)`` makes the node act on it at once."""
    answer: green.AsyncResult = green.AsyncResult()

    def acknowledged(results: list[list[Any]]) -> None:
        for task_id, status, detail in results:
            if task_id == task.id and not answer.ready():
                answer.set((status, detail))

    intake.submit(task, now, acknowledged)
    wake(now)
    try:
        status, detail = answer.get(timeout=HTTP_ACK_WAIT)
    except green.Timeout:
        raise Timeout(f"task {task.id} was not acknowledged within {HTTP_ACK_WAIT:g}s; "
                      "resubmit with the same id") from None
    if status == REJECTED:
        raise from_wire(detail if isinstance(detail, dict) else {})
    return status, detail
