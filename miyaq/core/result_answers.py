"""What a RESULT answers about a task this node holds or held: the body of
a task that ended (or is dead), and the refusal of a copy dropped because
another holder started it. One shape for every door -- a ZeroMQ RESULT
(:mod:`miyaq.core.handlers`), ``GET /tasks/{id}/result``
(:mod:`miyaq.gateway.tasks_api`) and a RESULT long-poll answered when its
task ends (:class:`miyaq.core.waiters.Waiters`) -- so the three never
differ in what they report.

Constraints: pure functions of what they are given (no lookup, no I/O);
a tombstone's ``result`` and ``error`` appear only when it has one; a copy
of an at-most-once task dropped because another holder started it has no
outcome here: it is ``not_found`` naming that, and the client asks the
next node.
"""
from __future__ import annotations

from typing import Any

from miyaq.errors import MiyaqError, NotFound, Unavailable
from miyaq.protocol.commands import RECONCILING
from miyaq.store.table import Tombstone
from miyaq.store.task import Task

__all__ = ["outcome", "ran_elsewhere", "unknown_here"]


def unknown_here(message: str, reconciling: bool, **details: Any) -> MiyaqError:
    """What a read of a task this node does not know answers (``message``:
    the not-found's, ``no task <id>``): ``not_found``; or, while the node
    reconciles with the other holders (``reconciling``: after a restart --
    from its log, or with an empty data dir while the ring lists it -- a
    freeze or a fence), ``unavailable``: it may not have its copy back
    yet, and ``not_found`` from a holder says the cluster has no such task
    (a producer may submit it again). Before 2026-12-06 such a node
    answered ``no task <id>`` for a task it held before a restart with an
    empty data dir until its resyncs came. A client asks another node, or
    this one again shortly (the reconcile lasts one resync round trip to
    each peer, at most ``reconcile_timeout``). ``details`` go with the
    ``unavailable`` only (the gateway's ``holders``), and ``reconciling:
    true`` with them: a client's wait for a result asks again after a
    pause rather than give up (:func:`miyaq.client.operations.wait_result`)."""
    if not reconciling:
        return NotFound(message)
    return Unavailable(f"{message} here yet: this node is reconciling with the other holders (after a restart, "
                       "a freeze or a fence) and may not have its copy back; ask another node, or again shortly",
                       **details, **{RECONCILING: True})


def ran_elsewhere(task_id: str) -> NotFound:
    """What a RESULT (ZeroMQ or ``GET /tasks/{id}/result``) answers on a
    holder whose copy of an at-most-once task was dropped because another
    holder started it: not an outcome -- the outcome is that holder's, and
    a client asks the next node (a Timeout "still started-elsewhere" over
    ZeroMQ, a 200 ``started-elsewhere`` over HTTP, before 2026-12-05)."""
    return NotFound(f"task {task_id} started on another of its holders (at most once): its outcome is there")


def outcome(stone_or_task: Tombstone | Task) -> dict[str, Any]:
    """How RESULT reports a task that ended (or is dead)."""
    if isinstance(stone_or_task, Tombstone):
        body: dict[str, Any] = {"state": stone_or_task.state}
        if stone_or_task.result is not None:
            body["result"] = stone_or_task.result
        if stone_or_task.error is not None:
            body["error"] = stone_or_task.error
        return body
    return {"state": stone_or_task.state, "error": stone_or_task.error}
