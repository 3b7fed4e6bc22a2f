"""The one place the HTTP gateway stores a new task.

It returns the engine's submit outcome ``(status, detail)``:
``("accepted", None)`` or ``("duplicate", holder_id)``, and raises a
:class:`~miyaq.errors.MiyaqError` (BUSY, SHUTTING_DOWN, TIMEOUT...) when the
task was not stored. It blocks the calling request greenlet (never the
event loop) until the task is accepted as the ZeroMQ SUBMIT path would
acknowledge it: with a durable log, once the log has the task (fsync
policy permitting).

Cluster seam: standalone, the engine is the only holder. A clustered node's
submits must go through its replicating intake (store on ``min_acks``
holders, then answer); that intake answers through the ZeroMQ socket today,
so the cluster work redirects this function to a request/response form of
it. Until then an HTTP submit on a clustered node is stored on this node only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gevent.event

from ..errors import Timeout
from ..protocol.commands import ACCEPTED
from ..store.task import Task

if TYPE_CHECKING:
    from ..node.node import Node

LOG_WAIT = 10.0


def submit_task(node: Node, task: Task, now: float) -> tuple[str, Any]:
    status, detail = node.engine.submit(task, now)
    persistence = getattr(node, "persistence", None)
    if status == ACCEPTED and persistence is not None:
        written = gevent.event.Event()
        persistence.after_written(written.set)
        if not written.wait(LOG_WAIT):
            raise Timeout(f"the log did not confirm task {task.id} within {LOG_WAIT:g}s; "
                          "resubmit with the same id")
    return status, detail
