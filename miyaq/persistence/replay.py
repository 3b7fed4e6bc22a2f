"""Rebuilding a node's task table from its append-only log.

The log's records are described in :mod:`miyaq.persistence.journal`; the
task and tombstone formats in :mod:`miyaq.store.records`. A record can be
whole (its checksum holds) and still wrong -- written by another version, or
by a bug: each is checked like a record from a peer
(:mod:`miyaq.protocol.recordspec`), and one that fails is skipped, counted
(source ``log``) and logged, so nothing the log holds can poison the node. One limit is not checked
against today's setting: ``max_payload`` bounds new submits, and a task or
result the node accepted under a higher one (lowered since) is kept.
"""
from __future__ import annotations

import dataclasses

from miyaq.config import NodeConfig
from miyaq.core.cancels_ahead import AHEAD, END_AHEAD, KEPT_AHEAD
from miyaq.core.engine import Engine
from miyaq.core.refusals import Refusals
from miyaq.errors import InvalidField
from miyaq.protocol import fields as f
from miyaq.protocol.recordspec import MAX_TIME, check_change, check_stone_record, task_from_record
from miyaq.store.log import AppendLog
from miyaq.store.log_format import MAX_FRAME_PAYLOAD
from miyaq.store.task import DEAD, READY, RETRYING, RUNNING, SCHEDULED, Task, count_revival


@dataclasses.dataclass
class Replayed:
    """What a replay rebuilt: records read, live and dead tasks restored,
    tombstones kept, and the dead letters dropped because the log held more
    than ``max_dead`` (the ones that died first) -- for the caller to log
    and journal, so a later restart with a larger ``max_dead`` does not
    bring them back."""

    records: int
    tasks: int
    tombstones: int
    dropped: list[str]


def replay(engine: Engine, log: AppendLog, now: float, refusals: Refusals) -> Replayed:
    """Rebuild the engine's table from the log. Running tasks come back ready
    (their worker is gone; the attempt stays spent), or dead-lettered if
    they may not run again (:meth:`Engine.restore`).

    Order: a task's place is that of its latest record -- the order tasks
    were accepted, died, were retried or revived, or given back (a task
    retried or lost goes to the back of its priority, as on a running
    node). ``created`` is a wall-clock stamp that a clock step reorders;
    the log's order is not. Delayed tasks that are due by now become ready
    after those, in ``eta`` order (the ones that fell due while the node was
    down, as they would have; one that was due and waiting before the stop
    may move behind tasks accepted after its eta). A
    compaction writes the live tasks in acceptance order and the dead ones
    in the order they died: retry positions older than the log's last
    compaction are not kept.

    Tombstones are restored as their records are read, through the
    table's bounds (:meth:`~miyaq.store.table.TaskTable.bury`), as the
    node buried them: the replay holds what the node held, so its memory
    is bounded by ``max_tombstones`` and ``max_result_bytes``, not by the
    log's length. The live and dead tasks are held to the end (the node
    held them too: ``max_tasks``, ``max_dead``)."""
    tasks: dict[str, Task] = {}
    records = 0
    config = _checking_config(engine.config)
    table = engine.table
    too_old = table.tombstone_ttl     # a tombstone older than this is not restored (Restore.restore_tombstone)
    for r in log.replay():
        records += 1
        if not isinstance(r, dict):
            refusals.refuse("log", log.directory, InvalidField("a log record must be a map", field="record"))
            continue
        op = r.get("o")
        task_id = r.get("id")
        if not isinstance(task_id, str):
            if op in _OPS:     # said and counted as any refused record (silently skipped before 2026-12-07)
                refusals.refuse("log", log.directory, InvalidField(f"a log {op} record's id must be a string",
                                                                   field="id"))
            continue            # a record of a later version, without an id: ignored
        try:
            if op == "A":
                accepted = task_from_record(r, config)
                # A copy's extra wait past the task's eta (none in logs before
                # 2026-12-05: their eta was the copy's, wait included). Up to
                # MAX_TIME: a copy that came late waits from now, and a task's
                # eta may be long past (0, moved so by a skewed peer clock).
                accepted.copy_wait = f.number(r, "copy_wait", 0.0, lo=0.0, hi=MAX_TIME)
            elif op == "F":
                check_stone_record(r, config)
                f.boolean(r, AHEAD, False)     # a cancel kept ahead of its copy (since 2026-12-06)
                f.boolean(r, KEPT_AHEAD, False)     # counted apart (a later build of 2026-12-06)
                f.boolean(r, END_AHEAD, False)      # an end heard ahead of its copy (later still)
            else:
                check_change(r)
        except InvalidField as err:
            refusals.refuse("log", log.directory, err)
            continue
        if op == "A":
            table.drop_tombstone(task_id)      # the id used again: its older end is not the task's
            table.purged.forget(task_id)
            tasks.pop(task_id, None)
            tasks[task_id] = accepted
            continue
        if op == "F":
            # Restored as it is read, as the running node buried it: its
            # bounds (max_tombstones, the result ceiling, those counted
            # apart) evict the same tombstones in the same order, so the
            # replay never holds more than the node did (docs/durability.md).
            tasks.pop(task_id, None)
            if r.get("at", now) + too_old <= now:
                table.drop_tombstone(task_id)    # too old: restored it would be dropped at once
            else:
                engine.restore_tombstone(r, now)
            continue
        if op == "P":
            at = r.get("at")        # a purge of a dead letter (since 2026-12-07): remembered for tombstone_ttl
            if isinstance(at, (int, float)) and not isinstance(at, bool) and now - too_old < at <= now \
                    and task_id not in table.tombstones:
                table.purged.mark(task_id, float(at))
        task = tasks.get(task_id)
        if task is None:
            continue
        if op == "S":
            task.state, task.attempt = RUNNING, r.get("attempt", task.attempt)
        elif op == "R":
            task.attempt = r.get("attempt", task.attempt)
            task.error = r.get("error", task.error)
            eta = r.get("eta", 0.0)
            task.state, task.eta = (RETRYING, eta) if eta else (READY, task.eta)
        elif op == "D":
            task.state, task.error = DEAD, r.get("error")
            task.attempt = r.get("attempt", task.attempt)
        elif op == "V":
            task.state, task.attempt = READY, 0
            count_revival(task, r.get("revived"))     # the count it had then (none in logs before 2026-12-05)
        elif op == "P":
            del tasks[task_id]
            continue
        else:
            continue        # a record of a later version: ignored, as before
        tasks[task_id] = tasks.pop(task_id)      # its place is its latest record's
    # Delayed tasks (an eta past their acceptance) that are due now: ready in
    # eta order after the rest -- they became ready at their eta.
    came_due = [t for t in tasks.values() if t.state == SCHEDULED and not t.standby and t.created < t.due <= now]
    due_ids = {t.id for t in came_due}
    dropped: list[str] = []
    for task in [t for t in tasks.values() if t.id not in due_ids] + sorted(came_due, key=lambda t: t.due):
        evicted = engine.restore(task, now)
        if evicted is not None:
            dropped.append(evicted.id)
    return Replayed(records, len(tasks), len(table.tombstones), dropped)


_OPS = frozenset("AFSRDVP")
"""The records this build writes (:mod:`miyaq.persistence.journal`), each with an ``id``."""


def _checking_config(config: NodeConfig) -> NodeConfig:
    """``config`` for checking logged records: any payload the log can hold
    passes, since it was within the limit of the run that accepted it."""
    return dataclasses.replace(config, max_payload=MAX_FRAME_PAYLOAD,
                               max_bytes=max(config.max_bytes, MAX_FRAME_PAYLOAD))
