"""Durability: every task state change goes to the append-only log
(:mod:`miyaq.store.log`), and a restarted node rebuilds its table from it.

The listener buffers records; one writer greenlet appends them in batches
(``append_many``: one write, and with ``fsync=always`` one fsync, per batch —
group commit). A SUBMITTED acknowledgement is released only after the batch
holding the task's record was written (``always``: and fsynced), so an
acknowledged task survives kill -9 in every mode and power loss with
``always``; with ``interval`` at most ``fsync_interval_ms`` of acknowledged
tasks can be lost to a power loss (docs/durability.md). The writer itself
(batches, gating, disk faults: refuse new tasks, serve, recover) is
:class:`~miyaq.store.log_writer.LogWriter`.

Records are small maps, ``{"o": op, ...}``:
``A`` accepted (the whole task), ``S`` started, ``R`` back to waiting
(retry/lost/released: eta, attempt, error), ``D`` dead, ``F`` finished
(done/cancelled/expired, with the result), ``V`` revived, ``P`` purged.
Compaction writes the live state as ``A`` records (with state) and recent
tombstones as ``F`` records.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from ..store.log import AppendLog
from ..store.log_writer import LogWriter
from ..store.table import Tombstone
from ..store.task import DEAD, READY, RETRYING, RUNNING, SCHEDULED, Task
from .engine import Engine
from .events import EngineListener

logger = logging.getLogger(__name__)

TASK_FIELDS = ("id", "queue", "name", "url", "method", "body", "priority", "eta", "created", "expires",
               "max_retries", "backoff", "backoff_max", "timeout", "key", "replicas", "at_most_once",
               "meta", "rank", "holders")


def task_record(task: Task) -> dict[str, Any]:
    record: dict[str, Any] = {"o": "A"}
    for name in TASK_FIELDS:
        value = getattr(task, name)
        if value is not None and value != () and value is not False:
            record[name] = list(value) if name == "holders" else value
    if task.state != SCHEDULED or task.attempt:
        record["state"] = task.state
        record["attempt"] = task.attempt
        if task.error is not None:
            record["error"] = task.error
    return record


def stone_record(stone: Tombstone) -> dict[str, Any]:
    record: dict[str, Any] = {"o": "F", "id": stone.id, "state": stone.state, "at": stone.finished,
                              "queue": stone.queue, "attempt": stone.attempt}
    if stone.result is not None:
        record["result"] = stone.result
    if stone.error is not None:
        record["error"] = stone.error
    if stone.key is not None:
        record["key"] = stone.key
    return record


def task_from_record(r: dict[str, Any]) -> Task:
    task = Task(r["id"], r["queue"], r.get("name"), r.get("body", b""), url=r.get("url"),
                method=r.get("method", "POST"), priority=r.get("priority", 0), eta=r.get("eta", 0.0),
                created=r.get("created", 0.0), expires=r.get("expires", 0.0),
                max_retries=r.get("max_retries", 3), backoff=r.get("backoff", 1.0),
                backoff_max=r.get("backoff_max", 300.0), timeout=r.get("timeout", 300.0),
                key=r.get("key"), replicas=r.get("replicas", 1), at_most_once=r.get("at_most_once", False),
                meta=r.get("meta"))
    task.rank = r.get("rank", 0)
    task.holders = tuple(r.get("holders", ()))
    task.state = r.get("state", SCHEDULED)
    task.attempt = r.get("attempt", 0)
    task.error = r.get("error")
    return task


class Persistence(EngineListener):
    def __init__(self, engine: Engine, log: AppendLog, spawn: Callable[..., Any]) -> None:
        self.engine = engine
        self.log = log
        # Batches, acknowledgement gating and disk faults (refuse, serve, recover): miyaq/store/log_writer.py
        self.writer = LogWriter(log, self.snapshot)
        self._spawn = spawn

    # -- recording -----------------------------------------------------------------
    def _add(self, record: dict[str, Any]) -> None:
        self.writer.add(record)

    def task_accepted(self, task: Task) -> None:
        self._add(task_record(task))

    def task_started(self, task: Task) -> None:
        self._add({"o": "S", "id": task.id, "attempt": task.attempt})

    def task_retrying(self, task: Task, reason: str) -> None:
        self._add({"o": "R", "id": task.id, "attempt": task.attempt, "error": task.error,
                   "eta": task.eta if task.state == RETRYING else 0.0})

    def task_ready(self, task: Task) -> None:
        buffer = self.writer.buffer
        if buffer and buffer[-1]["id"] == task.id and buffer[-1]["o"] == "A":
            return   # just accepted: the A record already says so
        if task.attempt == 0 and task.state == READY and task.created == task.eta:
            return
        self._add({"o": "R", "id": task.id, "attempt": task.attempt, "eta": 0.0})

    def task_dead(self, task: Task) -> None:
        self._add({"o": "D", "id": task.id, "attempt": task.attempt, "error": task.error})

    def task_finished(self, task: Task, stone: Tombstone) -> None:
        self._add(stone_record(stone))

    def task_revived(self, task: Task) -> None:
        self._add({"o": "V", "id": task.id})

    def task_purged(self, task: Task) -> None:
        self._add({"o": "P", "id": task.id})

    def task_forgotten(self, task: Task) -> None:
        self._add({"o": "P", "id": task.id})      # handed off: gone from here as if purged

    # -- gating acknowledgements and refusing on disk faults ----------------------------
    def after_written(self, release: Callable[[], None]) -> None:
        """Run ``release`` once every record buffered so far is in the log."""
        self.writer.after_written(release)

    def admit(self) -> None:
        """Refuse a new task (Busy, reason "storage") while the log cannot be written."""
        self.writer.admit()

    # -- the writer ----------------------------------------------------------------------
    def start(self) -> None:
        self._spawn(self.writer.run)

    def compact(self) -> None:
        self.writer.compact()

    def snapshot(self) -> Iterator[dict[str, Any]]:
        table = self.engine.table
        for task in list(table.live.values()) + list(table.dead.values()):
            yield task_record(task)
        for stone in list(table.tombstones.values()):
            yield stone_record(stone)

    def close(self) -> None:
        self.writer.close()


def replay(engine: Engine, log: AppendLog, now: float) -> dict[str, int]:
    """Rebuild the engine's table from the log. Running tasks come back ready
    (their worker is gone; the attempt stays spent). Returns counts."""
    tasks: dict[str, Task] = {}
    stones: dict[str, dict[str, Any]] = {}
    records = 0
    for r in log.replay():
        records += 1
        op = r.get("o")
        task_id = r.get("id")
        if not isinstance(task_id, str):
            continue
        if op == "A":
            stones.pop(task_id, None)
            tasks[task_id] = task_from_record(r)
            continue
        if op == "F":
            tasks.pop(task_id, None)
            stones[task_id] = r
            continue
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
        elif op == "P":
            del tasks[task_id]
            stones.pop(task_id, None)
    for task in sorted(tasks.values(), key=lambda t: t.created):
        engine.restore(task, now)
    kept = 0
    for r in stones.values():
        if engine.restore_tombstone(r, now):
            kept += 1
    return {"records": records, "tasks": len(tasks), "tombstones": kept}
