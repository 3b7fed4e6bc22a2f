"""The task state machine of one node.

The engine owns the task table, the timers and the ready queues, and is the
only code that changes a task's state. It does no I/O: callers pass the
current time, listeners (:mod:`miyaq.core.listener`) observe every change.
Every method runs in the node's event loop; none blocks.

States and transitions are drawn in docs/protocol.md ("Task states").

Who may report: every lease records who it went to (the consumer's
``principal``: a worker's key and id, a pull consumer's key or connection,
``http``, ``webhook``), for the last ``LEASE_HISTORY`` attempts. DONE, FAILED
and TOUCH name who reports (``by``); a report on an attempt that was not
leased to them -- a task never dispatched to them, a *scheduled* task never
dispatched at all -- changes nothing and is counted in ``not_leased``.
``by=None`` is the node's own trusted caller (tests, internal use).
"""
from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from typing import Any, Callable, Iterable

from miyaq.config import NodeConfig
from miyaq.constants import LEASE_HISTORY, MAX_QUEUES, TIMER_BATCH
from miyaq.core.listener import EngineListener
from miyaq.errors import Busy, InvalidField, NotFound, ShuttingDown
from miyaq.protocol.commands import ACCEPTED, DUPLICATE
from miyaq.store.ready import ReadyQueues
from miyaq.store.table import TaskTable, Tombstone
from miyaq.store.task import (
    ALL_STATES, CANCELLED, DEAD, DONE, EXPIRED, READY, RETRYING, RUNNING, SCHEDULED, Task,
)
from miyaq.store.timers import TimerHeap

logger = logging.getLogger(__name__)



def note_lessee(task: Task, attempt: int, principal: str | None) -> None:
    """Remember that ``attempt`` of ``task`` was leased to ``principal`` (the
    last LEASE_HISTORY attempts are kept)."""
    if principal is None:
        return
    lessees = task.lessees
    if lessees is None:
        task.lessees = [(attempt, principal)]
        return
    lessees.append((attempt, principal))
    if len(lessees) > LEASE_HISTORY:
        del lessees[0]


def leased_to(task: Task, attempt: int | None, principal: str) -> bool:
    """Was ``attempt`` of ``task`` (None: its latest lease) leased to ``principal``?"""
    lessees = task.lessees
    if not lessees:
        return False
    if attempt is None:
        return lessees[-1][1] == principal
    return (attempt, principal) in lessees     # no generator: once per DONE


def retry_delay(task: Task, rng: random.Random = random._inst) -> float:  # type: ignore[attr-defined]
    """Exponential backoff with equal jitter: half fixed, half random."""
    base = min(task.backoff_max, task.backoff * (2 ** max(0, task.attempt - 1)))
    return base / 2 + rng.random() * base / 2


class Engine:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.table = TaskTable(config.max_tombstones, max(config.result_ttl, config.dedup_window),
                               config.max_dead, config.max_result_bytes)
        self.timers = TimerHeap()
        self._seq = itertools.count(1)           # submit order; the ready lanes draw from it too
        self.ready = ReadyQueues(self._seq)
        self.listeners: list[EngineListener] = []
        self.accepting = True
        self.admission: list[Callable[[], None]] = []    # each may raise to refuse a new task (a full disk)
        self.counts: dict[str, Counter[str]] = {}        # queue -> state -> live count
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (queue, outcome) -> total
        self.not_leased = 0      # reports ignored: the task was not leased to whoever reported

    # -- helpers ---------------------------------------------------------------
    def _count(self, queue: str) -> Counter[str]:
        counts = self.counts.get(queue)
        if counts is None:
            counts = self.counts[queue] = Counter({s: 0 for s in ALL_STATES})
        return counts

    def _move(self, task: Task, state: str) -> None:
        counts = self._count(task.queue)
        old = task.state
        counts[old] -= 1
        counts[state] += 1
        if old == READY:
            self.ready.lane(task.lane).count -= 1
        elif state == READY:
            self.ready.lane(task.lane).count += 1
        task.state = state

    @staticmethod
    def _detach(task: Task) -> None:
        """Take the task off its consumer's lease list (if it has one)."""
        if task.consumer is not None:
            task.consumer.running.pop(task.id, None)
            task.consumer = None

    def _make_ready(self, task: Task, now: float) -> None:
        self._move(task, READY)
        self.ready.push(task)
        if task.expires:
            self.timers.arm(task, task.expires, now)
        else:
            self.timers.cancel(task)
        for listener in self.listeners:
            listener.task_ready(task)

    def _schedule(self, task: Task, when: float, state: str, now: float | None = None) -> None:
        self._move(task, state)
        self.timers.arm(task, min(when, task.expires) if task.expires else when, now)

    def _finish(self, task: Task, state: str, result: bytes | None, now: float) -> Tombstone:
        self.timers.cancel(task)
        self._detach(task)
        counts = self._count(task.queue)
        counts[task.state] -= 1
        if task.state == READY:
            self.ready.lane(task.lane).count -= 1
        task.state = state
        self.outcomes[(task.queue, state)] += 1
        stone = self.table.bury(task, state, result, now)
        for listener in self.listeners:
            listener.task_finished(task, stone)
        return stone

    def _kill(self, task: Task) -> None:
        self.timers.cancel(task)
        self._detach(task)
        self._move(task, DEAD)
        self.outcomes[(task.queue, DEAD)] += 1
        evicted = self.table.kill(task)
        if evicted is not None:
            self._count(evicted.queue)[DEAD] -= 1
            logger.warning("dead-letter queue full (%d): dropped oldest task %s", self.config.max_dead, evicted.id)
        for listener in self.listeners:
            listener.task_dead(task)

    # -- intake ------------------------------------------------------------------
    def submit(self, task: Task, now: float, copy: bool = False) -> tuple[str, Any]:
        """Store a new task. Idempotent: a known id or a key inside its dedup
        window answers DUPLICATE with the existing task's id. ``copy``: another
        holder's copy of a replicated task, stored while the node drains for
        shutdown too (ShuttingDown refuses only new work): it is a holder until
        its exit takes it out of the ring, and a holder that refused would fail
        every submit it holds until then."""
        table = self.table
        for admit in self.admission:   # before DUPLICATE: that answer too promises the task is stored
            admit()
        if task.id in table.live or task.id in table.dead or task.id in table.tombstones:
            return DUPLICATE, task.id
        if task.key is not None:
            holder = table.holder_of_key(task.key, now, self.config.dedup_window)
            if holder is not None:
                return DUPLICATE, holder
        if not (self.accepting or copy):
            raise ShuttingDown("node is shutting down and accepts no new tasks")
        if len(table.live) >= self.config.max_tasks:
            raise Busy(f"node holds {len(table.live)} tasks, its limit")
        if table.payload_bytes + len(task.body) > self.config.max_bytes:
            raise Busy(f"node holds {table.payload_bytes} bytes of task payloads; max_bytes is "
                       f"{self.config.max_bytes}", reason="bytes")
        if table.result_bytes >= self.config.max_result_bytes:
            raise Busy(f"node keeps {table.result_bytes} bytes of results; max_result_bytes is "
                       f"{self.config.max_result_bytes} (freed as result_ttl passes)", reason="results")
        if task.queue not in self.counts and len(self.counts) >= MAX_QUEUES:
            raise InvalidField(f"this node already has {MAX_QUEUES} queues; no new queue {task.queue!r}",
                               field="queue")
        task.seq = next(self._seq)
        task.state = SCHEDULED
        self._count(task.queue)[SCHEDULED] += 1
        table.add(task)
        self.outcomes[(task.queue, "submitted")] += 1
        for listener in self.listeners:
            listener.task_accepted(task)
        if task.eta <= now and not task.standby:
            self._make_ready(task, now)
        else:
            self._schedule(task, task.eta, SCHEDULED, now)
        return ACCEPTED, None

    def restore(self, task: Task, now: float) -> None:
        """Install a task rebuilt from the log, in the state it was logged in.
        A task that was running comes back ready: its worker is gone."""
        state = task.state
        if state == RUNNING and task.at_most_once:
            # It may have run: at most once means it must not run again.
            state = DEAD
            task.error = {"type": "Lost", "message": "the node restarted while this at-most-once task ran"}
        task.seq = next(self._seq)
        task.state = SCHEDULED
        self._count(task.queue)[SCHEDULED] += 1
        self.table.add(task)
        if state == DEAD:
            self._move(task, DEAD)
            self.table.kill(task)
        elif state == RETRYING:
            self._schedule(task, task.eta, RETRYING, now)
        elif state == SCHEDULED and (task.eta > now or task.standby):
            self._schedule(task, task.eta, SCHEDULED, now)
        else:
            self._make_ready(task, now)

    def restore_tombstone(self, record: dict[str, Any], now: float) -> bool:
        """Install a finished task's tombstone unless it is already too old."""
        finished = record.get("at", now)
        if finished + self.table.tombstone_ttl <= now:
            return False
        task = Task(record["id"], record.get("queue", "default"), None, b"", key=record.get("key"))
        task.attempt = record.get("attempt", 0)
        task.error = record.get("error")
        stone = self.table.bury(task, record.get("state", DONE), record.get("result"), finished)
        if task.key is not None:
            self.table.keys[task.key] = task.id
        return stone is not None

    # -- replicas (cluster) -----------------------------------------------------
    def defer(self, task: Task, when: float, state: str | None = None) -> None:
        """(Re-)arm a standby copy's timer; it stays waiting until ``when``."""
        if task.state == RUNNING or task.state not in (SCHEDULED, READY, RETRYING):
            return
        target = state or (SCHEDULED if task.state == READY else task.state)
        self._schedule(task, when, target)

    def take_over(self, task: Task, now: float) -> None:
        """A standby copy found no earlier holder running it: run it here."""
        task.standby = False
        if task.state in (SCHEDULED, RETRYING):
            self._make_ready(task, now)

    def finish_copy(self, task_id: str, state: str, result: bytes | None, error: dict[str, Any] | None,
                    now: float, key: str | None = None) -> Task | None:
        """Another holder finished the task: finish this copy the same way.
        An unknown id still gets a tombstone, so a late copy cannot come back."""
        task = self.table.live.get(task_id) or self.table.dead.get(task_id)
        if task is None:
            if self.table.tombstone(task_id) is None:
                ghost = Task(task_id, "default", None, b"", key=key)
                ghost.error = error
                self.table.bury(ghost, state, result, now)
                if key is not None:
                    self.table.keys[key] = task_id
            return None
        consumer = task.consumer
        if error is not None:
            task.error = error
        self._finish(task, state, result, now)   # dead tasks too: bury() takes them off the dead list
        if consumer is not None:
            consumer.abort([task.id])
        return task

    def kill_copy(self, task: Task, error: dict[str, Any] | None) -> None:
        if task.state == DEAD:
            return
        task.error = error
        self._kill(task)

    def forget(self, task: Task) -> None:
        """Drop a copy this node no longer holds (handed off): no tombstone."""
        self.timers.cancel(task)
        counts = self._count(task.queue)
        counts[task.state] -= 1
        if task.state == READY:
            self.ready.lane(task.lane).count -= 1
        self._detach(task)
        task.state = "moved"
        self.table.remove(task)
        if task.key is not None and self.table.keys.get(task.key) == task.id:
            del self.table.keys[task.key]
        for listener in self.listeners:
            listener.task_forgotten(task)

    # -- consuming ---------------------------------------------------------------
    def take(self, queues: Iterable[str], now: float) -> Task | None:
        """The next ready task for these queues, or None. Expired ones are
        expired on the way."""
        while True:
            task = self.ready.pop(queues)
            if task is None:
                return None
            if task.expires and task.expires <= now:
                self._finish(task, EXPIRED, None, now)
                continue
            return task

    def start(self, task: Task, consumer: Any, now: float) -> None:
        """Lease ``task`` (just taken) to ``consumer`` until now + timeout."""
        self._move(task, RUNNING)
        task.attempt += 1
        note_lessee(task, task.attempt, consumer.principal)
        task.consumer = consumer
        task.lease_end = now + task.timeout
        consumer.running[task.id] = task
        self.timers.arm(task, task.lease_end, now)
        self.outcomes[(task.queue, "started")] += 1
        for listener in self.listeners:
            listener.task_started(task)

    def _reporter_ok(self, task: Task, attempt: int | None, by: str | None) -> bool:
        if by is None or leased_to(task, attempt, by):
            return True
        self.not_leased += 1
        return False

    def touch(self, task_id: str, now: float, by: str | None = None) -> bool:
        """Extend a running task's lease (``by``: who asks; it must hold the lease)."""
        task = self.table.live.get(task_id)
        if task is None or task.state != RUNNING or not self._reporter_ok(task, task.attempt, by):
            return False
        task.lease_end = now + task.timeout
        self.timers.arm(task, task.lease_end, now)
        for listener in self.listeners:
            listener.task_touched(task)
        return True

    def release(self, task_id: str, now: float) -> bool:
        """A consumer gives back a task it never started: no attempt is spent."""
        task = self.table.live.get(task_id)
        if task is None or task.state != RUNNING:
            return False
        self._detach(task)
        task.attempt -= 1
        self._make_ready(task, now)
        return True

    def complete(self, task_id: str, attempt: int, result: bytes | None, now: float,
                 by: str | None = None) -> bool:
        """DONE from a consumer (``by``: who reports; that attempt must have
        been leased to them). A completion of an earlier attempt still
        finishes the task (it did run); a second execution under way is
        aborted and counted as a duplicate."""
        task = self.table.live.get(task_id) or self.table.dead.get(task_id)
        if task is None or not self._reporter_ok(task, attempt, by):
            return False
        if task.state == RUNNING and task.attempt != attempt:
            other = task.consumer
            for listener in self.listeners:
                listener.duplicate_run(task, {"attempt": attempt, "running": task.attempt})
            if other is not None:
                other.abort([task.id])
        elif attempt != task.attempt and task.state != DEAD:
            logger.info("task %s finished by attempt %d after being re-queued", task_id, attempt)
        self.outcomes[(task.queue, "completed")] += 1
        self._finish(task, DONE, result, now)
        return True

    def fail(self, task_id: str, attempt: int, error: dict[str, Any], retryable: bool,
             delay: float | None, now: float, by: str | None = None) -> bool:
        """FAILED from a consumer (``by``: who reports; it must hold the
        lease): retry with backoff, or dead-letter."""
        task = self.table.live.get(task_id)
        if task is None or task.state != RUNNING or task.attempt != attempt:
            return False   # stale: that attempt was already given up on
        if not self._reporter_ok(task, attempt, by):
            return False
        self._detach(task)
        task.error = error
        self.outcomes[(task.queue, "failed")] += 1
        self._retry_or_kill(task, retryable, delay, now, "failed")
        return True

    def lose(self, task: Task, reason: str, now: float) -> None:
        """The consumer vanished or the lease ran out: put the task back at
        once (the attempt is spent) or dead-letter it if none are left."""
        self._detach(task)
        task.error = {"type": "Lost", "message": reason}
        self.outcomes[(task.queue, "lost")] += 1
        self._retry_or_kill(task, True, 0.0, now, reason)

    def _retry_or_kill(self, task: Task, retryable: bool, delay: float | None, now: float, reason: str) -> None:
        if retryable and not task.at_most_once and task.attempt <= task.max_retries:
            wait = retry_delay(task) if delay is None else delay
            self.outcomes[(task.queue, "retried")] += 1
            if wait <= 0:
                self._make_ready(task, now)
            else:
                task.eta = now + wait
                self._schedule(task, task.eta, RETRYING, now)
            for listener in self.listeners:
                listener.task_retrying(task, reason)
        else:
            self._kill(task)

    # -- control -----------------------------------------------------------------
    def cancel(self, task_id: str, now: float) -> tuple[bool, str]:
        """Cancel a live or dead task. A running one's consumer is told to
        abort (best effort); its later DONE finds a tombstone and is ignored."""
        task = self.table.live.get(task_id) or self.table.dead.get(task_id)
        if task is None:
            stone = self.table.tombstone(task_id)
            if stone is None:
                raise NotFound(f"no task {task_id}")
            return False, stone.state
        previous = task.state
        consumer = task.consumer
        self._finish(task, CANCELLED, None, now)
        if previous == RUNNING and consumer is not None:
            consumer.abort([task.id])
        return True, previous

    def info(self, task_id: str) -> dict[str, Any]:
        task = self.table.live.get(task_id) or self.table.dead.get(task_id)
        if task is not None:
            return task.header()
        stone = self.table.tombstone(task_id)
        if stone is None:
            raise NotFound(f"no task {task_id}")
        return stone.info()

    def live_state(self, task_id: str) -> str | None:
        """The state of a live task held here (scheduled, ready, running,
        retrying), or None."""
        task = self.table.live.get(task_id)
        return task.state if task is not None else None

    def result(self, task_id: str) -> Tombstone | None:
        """The tombstone of a finished task, or None while it is live/dead."""
        return self.table.tombstone(task_id)

    # -- time --------------------------------------------------------------------
    def fire_due(self, now: float) -> float | None:
        """Act on every due timer (bounded per call); return the next due time."""
        for task in self.timers.pop_due(now, TIMER_BATCH):
            state = task.state
            if state in (SCHEDULED, RETRYING):
                if task.expires and task.expires <= now:
                    self._finish(task, EXPIRED, None, now)
                elif task.standby:
                    for listener in self.listeners:
                        listener.task_due_elsewhere(task)
                elif task.eta > now and state == SCHEDULED:
                    self.timers.arm(task, task.eta, now)   # woke for an expiry that moved
                else:
                    self._make_ready(task, now)
            elif state == READY:
                if task.expires and task.expires <= now:
                    self._finish(task, EXPIRED, None, now)
            elif state == RUNNING:
                logger.info("lease of task %s ran out (attempt %d)", task.id, task.attempt)
                self.lose(task, "lease expired", now)
        if len(self.timers) > 4 * (len(self.table.live) + 1024):
            self.timers.compact()
        return self.timers.next_due()

    # -- dead letters ------------------------------------------------------------
    def dead_list(self, queue: str | None, limit: int) -> list[dict[str, Any]]:
        return [task.header() for task, _ in zip(self.table.iter_dead(queue), range(limit))]

    def dead_retry(self, ids: Iterable[str], now: float) -> list[str]:
        revived = []
        for task_id in ids:
            task = self.table.revive(task_id)
            if task is None:
                continue
            task.attempt = 0
            self._make_ready(task, now)
            for listener in self.listeners:
                listener.task_revived(task)
            revived.append(task_id)
        return revived

    def revive_copy(self, task_id: str, when: float) -> Task | None:
        """Another holder revived a dead task: this copy comes back as a
        standby waiting until ``when`` (only the reviving holder runs it)."""
        task = self.table.revive(task_id)
        if task is None:
            return None
        task.attempt = 0
        task.standby = True
        self._move(task, SCHEDULED)
        self.timers.arm(task, when)
        return task

    def dead_purge(self, queue: str | None, ids: Iterable[str] | None = None) -> int:
        victims = list(ids) if ids is not None else [t.id for t in self.table.iter_dead(queue)]
        n = 0
        for task_id in victims:
            task = self.table.purge(task_id)
            if task is None:
                continue
            self._count(task.queue)[DEAD] -= 1
            for listener in self.listeners:
                listener.task_purged(task)
            n += 1
        return n

    def compact_lanes(self) -> int:
        """Drop stale entries (cancelled, expired, moved tasks) from lanes
        nobody reads, so they do not hold memory. Returns entries dropped."""
        dropped = 0
        for name, lane in list(self.ready.lanes.items()):
            if lane.entries > 2 * lane.count + 1024:
                dropped += lane.compact()
            if lane.count == 0 and lane.entries == 0:
                del self.ready.lanes[name]
        if len(self.counts) > 100:
            forgotten = set()
            for queue, counts in list(self.counts.items()):
                if not any(counts.values()):
                    del self.counts[queue]     # empty queue: pruned, so names stay bounded
                    forgotten.add(queue)
            if forgotten:
                # Its outcome counters too: names a producer makes up must not pile up.
                for key in [k for k in self.outcomes if k[0] in forgotten]:
                    del self.outcomes[key]
                for queue in forgotten:
                    for listener in self.listeners:
                        listener.queue_forgotten(queue)
        return dropped

    # -- views -------------------------------------------------------------------
    def list_tasks(self, queue: str | None, state: str | None, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        sources: list[Iterable[Task]] = [self.table.live.values(), self.table.dead.values()]
        for source in sources:
            for task in source:
                if (queue is None or task.queue == queue) and (state is None or task.state == state):
                    out.append(task.header())
                    if len(out) >= limit:
                        return out
        return out

    def queue_counts(self) -> dict[str, dict[str, int]]:
        return {q: {s: c[s] for s in (SCHEDULED, READY, RUNNING, RETRYING, DEAD)}
                for q, c in self.counts.items()}
