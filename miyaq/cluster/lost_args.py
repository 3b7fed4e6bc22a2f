"""What the other holders do with an at-most-once task dead-lettered
without its arguments: its runner's node was lost, and the worker's FAILED
came to a holder that had only a ``started-elsewhere`` placeholder
(:meth:`~miyaq.core.placeholders.Placeholders.fail_placeholder`). That
holder's ``D`` event carries the dead letter's record
(:func:`lost_record`); each other holder's placeholder becomes the same
dead letter (:func:`dead_without_args`). Moved out of
:mod:`miyaq.cluster.holder_events` (past 400 lines).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from miyaq.errors import InvalidField
from miyaq.protocol.recordspec import task_from_record
from miyaq.store.records import task_record
from miyaq.store.task import Task, args_lost

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole


def lost_record(task: Task) -> dict[str, Any]:
    """The record a ``D`` event carries of ``task``, a dead letter whose
    arguments were lost (:data:`~miyaq.store.task.ARGS_LOST`): its ``A``
    record without the body (no arguments: each holder makes the same,
    :func:`~miyaq.core.placeholders.lost_args_body`) and the error (the
    event's own)."""
    record = task_record(task)
    record.pop("body", None)
    record.pop("error", None)
    return record


def dead_without_args(role: ClusterRole, src: str, ev: list[Any], now: float) -> None:
    """Another holder dead-lettered an at-most-once task without its
    arguments (its runner's node was lost, and the worker's FAILED came
    there: :meth:`~miyaq.core.placeholders.Placeholders.fail_placeholder`),
    its ``D`` event carrying the dead letter's record: this node's
    ``started-elsewhere`` placeholder becomes that dead letter. A record
    that does not pass the checks a SUBMIT's copy passes, or is not of
    such a dead letter of the event's task, is refused and counted; any
    other tombstone here (the task ended otherwise) is left as it is."""
    try:
        task = task_from_record(ev[4], role.config)
        if task.id != ev[1] or not task.at_most_once or args_lost(task) is None:
            raise InvalidField("a DEAD event's record must be its at-most-once task's, its arguments lost",
                               field="event")
        task.attempt = ev[2]
        task.rank = task.holders.index(role.node_id) if role.node_id in task.holders else 0
        role.engine.dead_without_args(task, ev[3], now)     # refuses a new queue past MAX_QUEUES
    except InvalidField as err:
        role.refusals.refuse("stream", src, err)
