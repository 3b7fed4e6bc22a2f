"""The one place the HTTP gateway stores a new task.

Standalone, the engine is the only holder, so storing the task is the whole
submit. The cluster work redirects this function to its replicating intake
(store on ``min_acks`` holders, then answer); it may block the calling
request greenlet, never the event loop's other work. It returns the
engine's submit outcome ``(status, detail)``: ``("accepted", None)`` or
``("duplicate", holder_id)``, and raises :class:`~miyaq.errors.MiyaqError`
(BUSY, SHUTTING_DOWN, NOT_ENOUGH_REPLICAS) when the task was not stored.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store.task import Task

if TYPE_CHECKING:
    from ..node.node import Node


def submit_task(node: "Node", task: Task, now: float) -> tuple[str, Any]:
    return node.engine.submit(task, now)
