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
A cancel kept ahead of its task's copy (:mod:`miyaq.core.cancels_ahead`)
is an ``F`` record too, marked ``"kept_ahead": true`` (counted apart from
``max_tombstones``), and ``"ahead": true`` when it has no key and may
take its copy's. Compaction writes the live state as ``A`` records (with
state) and recent tombstones as ``F`` records (the marks kept while the
node counts or remembers them; one made on a peer's word for a task the
node had no trace of marked ``"end_ahead": true``,
:mod:`miyaq.cluster.ends_ahead`). The ``A`` and ``F`` formats are
:mod:`miyaq.store.records`, shared with replication.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterator

from miyaq.core.cancels_ahead import AHEAD, END_AHEAD, KEPT_AHEAD
from miyaq.core.engine import Engine
from miyaq.core.listener import EngineListener
from miyaq.core.refusals import Refusals
from miyaq.persistence.replay import replay
from miyaq.runtime import CRITICAL, Supervisor, monotonic, wall
from miyaq.store.log import AppendLog
from miyaq.store.log_writer import LogWriter
from miyaq.store.records import stone_record, task_record
from miyaq.store.table import Tombstone
from miyaq.store.task import READY, RETRYING, Task, args_lost, revivals

logger = logging.getLogger(__name__)


class Persistence(EngineListener):
    """The durable log as a part of the node: replays it at setup, records
    every change while the node runs, writes what is buffered and closes it
    at stop. The writer greenlet is critical: a disk fault is ridden out by
    the :class:`~miyaq.store.log_writer.LogWriter` (new tasks refused), but a
    writer that dies stops the node rather than acknowledge what it cannot keep.
    """

    name = "persistence"

    def __init__(self, engine: Engine, log: AppendLog, supervisor: Supervisor, refusals: Refusals,
                 node_id: str = "", on_replayed: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.refusals = refusals      # records of the log that fail validation at replay
        self.log = log
        self.supervisor = supervisor
        self.node_id = node_id
        self.on_replayed = on_replayed     # called once the log is open and replayed (its LOCK held)
        # Batches, acknowledgement gating and disk faults (refuse, serve, recover): miyaq/store/log_writer.py
        self.writer = LogWriter(log, self.snapshot, node_id=node_id)
        self._killed = False
        self._at_most_once_started = False    # an at-most-once start buffered since the dispatcher last asked

    # -- lifecycle ----------------------------------------------------------------
    def setup(self) -> None:
        """Rebuild the engine's table from the log; then listen, and refuse new
        tasks while the log cannot be written."""
        started = monotonic()
        replayed = replay(self.engine, self.log, wall(), self.refusals)
        if self.on_replayed is not None:
            self.on_replayed()
        logger.info("node %s replayed %d log records in %.2fs: %d live and dead tasks, %d tombstones "
                    "(log: %d corrupt records, %d bytes truncated)", self.node_id, replayed.records,
                    monotonic() - started, replayed.tasks, replayed.tombstones,
                    self.log.corrupt_records, self.log.truncated_bytes)
        if replayed.dropped:
            logger.warning("node %s: the log held more dead letters than max_dead (%d): dropped the %d "
                           "that died first (%s%s)", self.node_id, self.engine.config.max_dead,
                           len(replayed.dropped), ", ".join(replayed.dropped[:5]),
                           ", ..." if len(replayed.dropped) > 5 else "")
            for task_id in replayed.dropped:     # else a restart with a larger max_dead brings them back
                self._add({"o": "P", "id": task_id})
        self.engine.listeners.append(self)
        self.engine.admission.append(self.admit)   # a disk fault refuses new tasks

    def start(self) -> None:
        self.supervisor.spawn("log-writer", self.writer.run, policy=CRITICAL)

    def stop(self) -> None:
        """Write what is buffered and close the log (every acknowledged task is in it)."""
        self.close()

    def kill(self) -> None:
        """Close the log if :meth:`stop` could not. Never raises."""
        if self._killed:
            return
        self._killed = True
        try:
            self.log.close()
        except Exception:
            logger.exception("closing the log failed")

    # -- recording -----------------------------------------------------------------
    def _add(self, record: dict[str, Any]) -> None:
        self.writer.add(record)

    def task_accepted(self, task: Task) -> None:
        self._add(task_record(task))

    def task_started(self, task: Task) -> None:
        self._add({"o": "S", "id": task.id, "attempt": task.attempt})
        if task.at_most_once:
            self._at_most_once_started = True

    def at_most_once_started(self) -> bool:
        """Whether an at-most-once task started since the last call: the
        dispatcher then sends its DISPATCH once the start is written
        (:meth:`after_written`). Sent before, a node killed before the write
        brought the task back ready, and it ran again."""
        started, self._at_most_once_started = self._at_most_once_started, False
        return started

    def task_retrying(self, task: Task, reason: str) -> None:
        self._add({"o": "R", "id": task.id, "attempt": task.attempt, "error": task.error,
                   "eta": task.eta if task.state == RETRYING else 0.0})

    def copy_retrying(self, task: Task) -> None:
        # Another holder's retry or put-back, or an attempt a resync taught, on
        # a standby copy: as this node's own retry writes it, so a restart keeps
        # the attempt and the error (review38, review39). Eta 0 (not retrying):
        # the copy comes back ready, and asks first like every due copy.
        self._add({"o": "R", "id": task.id, "attempt": task.attempt, "error": task.error,
                   "eta": task.eta if task.state == RETRYING else 0.0})

    def task_ready(self, task: Task) -> None:
        buffer = self.writer.buffer
        if buffer and buffer[-1]["id"] == task.id and buffer[-1]["o"] == "A":
            return   # just accepted: the A record already says so
        if task.attempt == 0 and task.state == READY and task.created == task.due and not task.lease_end:
            return   # never leased, ready since it came: what its A record says
        # (a task given back unstarted is at attempt 0 again, but its log says S:
        # without this R a restart would take it for running -- an at-most-once
        # one for dead)
        self._add({"o": "R", "id": task.id, "attempt": task.attempt, "eta": 0.0})

    def task_dead(self, task: Task) -> None:
        if args_lost(task) is not None:
            # A dead letter that replaced an at-most-once placeholder (its
            # arguments lost with the runner's node): no A record of it
            # before, and the placeholder's F record is: the whole of it.
            self._add(task_record(task))
            return
        self._add({"o": "D", "id": task.id, "attempt": task.attempt, "error": task.error})

    def task_finished(self, task: Task, stone: Tombstone) -> None:
        self._add(stone_record(stone))

    def tombstone_kept(self, stone: Tombstone, takes_key: bool) -> None:
        # a cancel kept ahead of its copy: an F record as any end's, marked
        # so (counted apart), and when it may take its copy's key later
        # (miyaq.core.cancels_ahead)
        record = stone_record(stone)
        record[KEPT_AHEAD] = True
        self._add(_marked(record) if takes_key else record)

    def task_revived(self, task: Task) -> None:
        self._add({"o": "V", "id": task.id, "revived": revivals(task)})

    def task_purged(self, task: Task) -> None:
        # "at" (since 2026-12-07; a replay of an older build ignores it): when,
        # so a replay remembers the purge for tombstone_ttl as the node did
        # (TaskTable.purged). Dead letters evicted or handed off are not marked.
        when = self.engine.table.purged.get(task.id)
        self._add({"o": "P", "id": task.id} if when is None else {"o": "P", "id": task.id, "at": when})

    def dead_evicted(self, task: Task) -> None:
        self._add({"o": "P", "id": task.id})      # else a restart brings it back past max_dead

    def task_forgotten(self, task: Task) -> None:
        self._add({"o": "P", "id": task.id})      # handed off: gone from here as if purged

    # -- gating acknowledgements and refusing on disk faults ----------------------------
    def after_written(self, release: Callable[[], None], refuse: Callable[[str], None] | None = None) -> None:
        """Run ``release`` once every record buffered so far is in the log;
        with ``refuse``, ``refuse(why)`` instead if a write fails first."""
        self.writer.after_written(release, refuse)

    def admit(self) -> None:
        """Refuse a new task (Busy, reason "storage") while the log cannot be written."""
        self.writer.admit()

    def why_not_writable(self) -> str:
        """Why the log cannot be written now, in a few words; "" while it can."""
        return self.writer.why_not_writable()

    # -- the writer ----------------------------------------------------------------------
    def compact(self) -> None:
        self.writer.compact()

    def snapshot(self) -> Iterator[dict[str, Any]]:
        """The records of the state as it is *now* (the ``A`` records of the live
        and dead tasks, then the ``F`` records of the tombstones, those of
        cancels kept ahead of their copy marked ``kept_ahead``, and
        ``ahead`` too when they may take a key, those of ends heard ahead
        of their copy ``end_ahead``), for a
        compaction that yields to other greenlets while it writes them.

        The table is copied when this is called, without yielding
        (:meth:`~miyaq.store.table.TaskTable.snapshot`: O(n), about 0.4 µs a
        task); the records are built from the copy as they are read, so a
        change made meanwhile does not show in them: it is in the records
        buffered after the snapshot's seqno, and replays once. Not a generator
        function: a generator's body would copy at its first read, not here."""
        tasks, stones = self.engine.table.snapshot()
        ahead, kept = self.engine.cancels_ahead.marked()
        table = self.engine.table
        ends = frozenset(table.ends_ahead)
        # Dead letters purged (TaskTable.purged) whose id is not used
        # again: a P record each, with when, after everything else.
        purged = [{"o": "P", "id": i, "at": at} for i, at in table.purged.items()
                  if i not in table.live and i not in table.dead and i not in table.tombstones]
        records: Iterator[dict[str, Any]] = map(stone_record, stones)
        if kept:
            records = (_kept(r, r["id"] in ahead) if r["id"] in kept else r for r in records)
        if ends:
            records = (_end_ahead(r) if r["id"] in ends else r for r in records)
        return itertools.chain(map(task_record, tasks), records, purged)

    def close(self) -> None:
        self.writer.close()

    def stats(self) -> dict[str, Any]:
        """The log's health: status ``storage`` and /metrics."""
        return self.writer.stats()

    @property
    def writable(self) -> bool:
        """False while the log cannot be written (new tasks and copies refused): ``GET /readyz``."""
        return bool(self.writer.writable)


def _kept(record: dict[str, Any], takes_key: bool) -> dict[str, Any]:
    """An ``F`` record marked as a cancel kept ahead of its copy (counted
    apart), and ``takes_key`` (:func:`_marked`) when it may take a key."""
    record[KEPT_AHEAD] = True
    return _marked(record) if takes_key else record


def _end_ahead(record: dict[str, Any]) -> dict[str, Any]:
    """An ``F`` record marked as an end heard ahead of its copy, counted
    apart again by a replay (:mod:`miyaq.cluster.ends_ahead`)."""
    record[END_AHEAD] = True
    return record


def _marked(record: dict[str, Any]) -> dict[str, Any]:
    """An ``F`` record marked as a cancel kept ahead of its copy without a
    key, which may take the copy's key later (:mod:`miyaq.core.cancels_ahead`)."""
    record[AHEAD] = True
    return record
