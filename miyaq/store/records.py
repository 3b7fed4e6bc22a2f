"""The record format of a task: one map shared by the append-only log and
replication (REPLICATE, handoff, SYNC).

Records are small msgpack-able maps, ``{"o": op, ...}``. ``A`` holds a whole
task (every field of :data:`TASK_FIELDS` that is set, plus ``state``,
``attempt`` and ``error`` once the task has moved), ``F`` a finished task's
tombstone. The log adds the small change records (``S``, ``R``, ``D``,
``V``, ``P``: :mod:`miyaq.persistence.journal`); a transfer to another holder
adds the state the task is in here (:func:`transfer_record`).

Both sides import this module, which imports only :mod:`miyaq.store.task`,
:mod:`miyaq.store.table` and :mod:`miyaq.constants`. Records are read back -- from the log or from
another node -- by :mod:`miyaq.protocol.recordspec`, which checks every field
like a SUBMIT's before it rebuilds a task.
"""
from __future__ import annotations

from typing import Any

from miyaq.constants import MAX_LESSEE
from miyaq.store.table import Tombstone
from miyaq.store.task import RUNNING, SCHEDULED, Task

TASK_FIELDS = ("id", "queue", "name", "url", "method", "body", "priority", "eta", "created", "expires",
               "max_retries", "backoff", "backoff_max", "timeout", "key", "replicas", "at_most_once",
               "meta", "rank", "holders")


def task_record(task: Task) -> dict[str, Any]:
    """The ``A`` record of ``task``: every field that is set, and its state
    once it moved. ``eta`` is the task's own; a copy's extra wait past it,
    when it has one, is ``copy_wait`` (:attr:`Task.due`), for the log only:
    another holder waits its own (:func:`transfer_record` leaves it out)."""
    record: dict[str, Any] = {"o": "A"}
    for name in TASK_FIELDS:
        value = getattr(task, name)
        if value is not None and value != () and value is not False:
            record[name] = list(value) if name == "holders" else value
    if task.copy_wait:
        record["copy_wait"] = task.copy_wait
    if task.state != SCHEDULED or task.attempt:
        record["state"] = task.state
        record["attempt"] = task.attempt
        if task.error is not None:
            record["error"] = task.error
    return record


def transfer_record(task: Task) -> dict[str, Any]:
    """``task`` as it is sent to another holder (handoff, SYNC): always with
    its state and attempt, its lease end while it runs here, and who its
    latest attempt was leased to (``lessee``: ``[attempt, principal]``), so
    that a worker whose node died may report that attempt to the new holder."""
    record = task_record(task)
    record.pop("copy_wait", None)       # the receiver waits its own
    record["state"] = task.state
    record["attempt"] = task.attempt
    if task.state == RUNNING:
        record["lease_end"] = task.lease_end
    lessee = latest_lessee(task)
    if lessee is not None:
        record["lessee"] = list(lessee)
    return record


def latest_lessee(task: Task) -> tuple[int, str] | None:
    """``(attempt, principal)`` of the task's latest lease, if another holder
    may be told it (a principal longer than ``MAX_LESSEE`` is not)."""
    lessees = task.lessees
    if not lessees or len(lessees[-1][1]) > MAX_LESSEE:
        return None
    return lessees[-1]


def stone_record(stone: Tombstone) -> dict[str, Any]:
    """The ``F`` record of a finished task."""
    record: dict[str, Any] = {"o": "F", "id": stone.id, "state": stone.state, "at": stone.finished,
                              "queue": stone.queue, "attempt": stone.attempt}
    if stone.result is not None:
        record["result"] = stone.result
    if stone.error is not None:
        record["error"] = stone.error
    if stone.key is not None:
        record["key"] = stone.key
    return record
