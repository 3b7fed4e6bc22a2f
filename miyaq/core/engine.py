"""The task state machine of one node.

The engine owns the task table, the timers and the ready queues, and is the
only code that changes a task's state. It does no I/O: callers pass the
current time, listeners (:mod:`miyaq.core.listener`) observe every change.
Every method runs in the node's event loop; none blocks.

States and transitions are drawn in docs/protocol.md ("Task states").

The engine is eight modules, one job each: :class:`Engine` here (intake,
consuming, control, timers, housekeeping), built on the state and the
state moves of :mod:`miyaq.core.transitions`, on the operations on
replicated copies of :mod:`miyaq.core.replicas`, on the read-only views
of :mod:`miyaq.core.task_views` (INFO, RESULT, LIST, the counts), on
the revival and purge of dead letters of :mod:`miyaq.core.dead_letters`
and on what the log's replay installs at start, :mod:`miyaq.core.restore`;
whether a submit finds room: :mod:`miyaq.core.room`.
Who may report on a task, and the backoff between attempts:
:mod:`miyaq.core.attempts`.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from miyaq.config import NodeConfig
from miyaq.constants import MAX_QUEUES, TIMER_BATCH
from miyaq.core.attempts import forget_lease, leased_to, note_lessee, retry_delay
from miyaq.core.cancels_ahead import CancelsAhead
from miyaq.core.dead_letters import DeadLetters
from miyaq.core.replicas import ReplicaCopies, key_winner
from miyaq.core.restore import Restore
from miyaq.core.room import check_room
from miyaq.core.task_views import TaskViews
from miyaq.errors import InvalidField, NotFound, ShuttingDown
from miyaq.logs import LogLimiter
from miyaq.protocol.commands import ACCEPTED, DUPLICATE
from miyaq.protocol.failurespec import cut_error
from miyaq.protocol.recordspec import MAX_ATTEMPT
from miyaq.store.tally import Tally
from miyaq.store.task import (
    CANCELLED, DEAD, DONE, EXPIRED, READY, RETRYING, RUNNING, SCHEDULED, Task, handler_label,
)

logger = logging.getLogger(__name__)
# A lost worker's leases run out together, and its late reports come
# together: a few lines a minute name examples, the rest are counted.
_log = LogLimiter(logger)

#: Characters of a dead task's error message on its log line (the whole of it is
#: in ``miyaq dead list`` and ``miyaq status ID``).
DEAD_LINE_MESSAGE = 200


class Engine(ReplicaCopies, TaskViews, DeadLetters, Restore):
    """The task state machine: ``Engine(config)``; its state is
    :class:`~miyaq.core.transitions.Transitions`'s, its views
    :class:`~miyaq.core.task_views.TaskViews`'s."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        # Outcome counters of queues pruned while empty (compact_lanes), so
        # the node's totals never go back: outcome -> total.
        self.pruned_outcomes: Tally[str] = Tally()
        # Cancels kept ahead of their copies (a first holder asked before the copy came).
        self.cancels_ahead = CancelsAhead(self)

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
        if task.id in table.live or task.id in table.dead:
            return DUPLICATE, task.id
        if task.id in table.tombstones:
            # Ended as a duplicate of the task that holds its key (its key's
            # first holder took that one first): the resend of a submit that
            # was rejected meanwhile is answered with that task, whose result
            # its client waits for -- not with this id, which never ran.
            stone = table.tombstone(task.id)
            winner = key_winner(task.id, stone.error) if stone is not None else None
            return DUPLICATE, winner or task.id
        if task.key is not None:
            holder = table.holder_of_key(task.key, now, self.config.dedup_window)
            if holder is not None:
                return DUPLICATE, holder
        if not (self.accepting or copy):
            raise ShuttingDown("node is shutting down and accepts no new tasks")
        check_room(table, self.config, task)
        queue = task.queue
        counts = self.counts.get(queue)
        if counts is None:
            if len(self.counts) >= MAX_QUEUES:
                raise InvalidField(f"this node already has {MAX_QUEUES} queues; no new queue {queue!r}",
                                   field="queue")
            counts = self._count(queue)
        task.seq = next(self._seq)
        task.state = SCHEDULED
        counts[SCHEDULED] += 1
        table.add(task)
        self.outcomes[(queue, "submitted")] += 1
        if copy and self.uncounted:
            # Counted here: an end heard before this copy (its ghost since
            # forgotten) must not count it again if the copy comes once more.
            self.uncounted.pop(task.id, None)
        for listener in self.listeners:
            listener.task_accepted(task)
        due = task.due      # a property: read once (every copy and every delayed task is scheduled)
        if due <= now and not task.standby:
            self._make_ready(task, now)
        else:
            self._schedule(task, due, SCHEDULED, now)
        return ACCEPTED, None

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
        """Lease ``task`` (just taken) to ``consumer`` until now + timeout. The
        attempt count goes up by one, and stops at ``MAX_ATTEMPT`` -- only a
        peer's record can bring a count near it (before 2026-12-05 a copy
        sent at the largest count went past it when it ran, and the log's
        records of that run were refused at the next start: the finished
        task came back live)."""
        self._move(task, RUNNING)
        task.attempt = min(task.attempt + 1, MAX_ATTEMPT)
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

    @staticmethod
    def _holds_run(task: Task, by: str | None) -> bool:
        """Whether ``by`` (None: the node's own caller) holds the lease of the
        attempt ``task`` runs now, if it runs here: its consumer. The lease
        history alone cannot say: after a revival attempts count from zero
        again, and the worker that was leased the same number before the task
        died is on record too. Before 2026-12-07 that worker's late FAILED
        ended the run under way (its worker went on running it, and the task
        was retried at once -- a second run -- or dead-lettered); its late
        DONE finished the task without aborting that run."""
        consumer = task.consumer
        return by is None or task.state != RUNNING or consumer is None or consumer.principal == by

    def touch(self, task_id: str, now: float, by: str | None = None) -> bool:
        """Extend a running task's lease (``by``: who asks; it must hold the lease)."""
        task = self.table.live.get(task_id)
        if task is None or task.state != RUNNING or not self._reporter_ok(task, task.attempt, by):
            return False
        if not self._holds_run(task, by):
            self.not_leased += 1
            return False
        task.lease_end = now + task.timeout
        self.timers.arm(task, task.lease_end, now)
        for listener in self.listeners:
            listener.task_touched(task)
        return True

    def release(self, task_id: str, now: float) -> bool:
        """A consumer gives back a task it never started: no attempt is spent
        (the listeners' ``task_given_back``: the other holders of a
        replicated task are told, an ``R`` event, so a standby copy that
        heard the start does not count the attempt as run)."""
        task = self.table.live.get(task_id)
        if task is None or task.state != RUNNING:
            return False
        self._detach(task)
        forget_lease(task, task.attempt)
        task.attempt -= 1
        self._make_ready(task, now)
        for listener in self.listeners:
            listener.task_given_back(task)
        return True

    def give_back(self, task_id: str, attempt: int, by: str, now: float) -> bool:
        """A consumer gives back, unstarted, the attempt it was leased (a
        cancelled receive, a pull consumer that went away before it got the
        task): :meth:`release`, if that attempt is the task's current one and
        was leased to ``by``."""
        task = self.table.live.get(task_id)
        return (task is not None and task.attempt == attempt and leased_to(task, attempt, by)
                and self._holds_run(task, by) and self.release(task_id, now))

    def complete(self, task_id: str, attempt: int, result: bytes | None, now: float,
                 by: str | None = None) -> bool:
        """DONE from a consumer (``by``: who reports; that attempt must have
        been leased to them). A completion of an earlier attempt still
        finishes the task (it did run); a second execution under way is
        aborted and counted as a duplicate -- also one of the same attempt
        number leased to another consumer after a revival (:meth:`_holds_run`).
        Where another holder ran an at-most-once task, its lessee's DONE
        replaces this node's ``started-elsewhere`` placeholder
        (:meth:`~miyaq.core.placeholders.Placeholders.complete_placeholder`:
        the runner's node died)."""
        task = self.table.live.get(task_id) or self.table.dead.get(task_id)
        if task is None:     # an at-most-once task's placeholder takes its lessee's DONE
            return self.complete_placeholder(task_id, attempt, result, now, by)
        if not self._reporter_ok(task, attempt, by):
            return False
        if task.state == RUNNING and (task.attempt != attempt or not self._holds_run(task, by)):
            other = task.consumer
            for listener in self.listeners:
                listener.duplicate_run(task, {"attempt": attempt, "running": task.attempt})
            if other is not None:
                other.abort([task.id])
        elif attempt != task.attempt and task.state != DEAD:
            _log.log(logging.INFO, "late finish", "task %s finished by attempt %d after being re-queued",
                     task_id, attempt)
        self.outcomes[(task.queue, "completed")] += 1
        self._finish(task, DONE, result, now)
        return True

    def fail(self, task_id: str, attempt: int, error: dict[str, Any], retryable: bool,
             delay: float | None, now: float, by: str | None = None) -> bool:
        """FAILED from a consumer (``by``: who reports; it must hold the
        lease): retry with backoff, or dead-letter.

        A *standby* copy of a replicated task takes the FAILED of the attempt
        its runner leased to ``by`` (it heard the STARTED event naming them):
        the worker sends it here when the runner's node was lost, which may
        have taken the report with it. A failure that ends the task
        dead-letters this copy (the D event tells the other holders); a
        retry waits out its backoff here still as a standby, which then asks
        the other holders like any standby before it runs -- a runner that
        is alive and still holds the attempt (only the worker's connection
        to it was lost) answers, and only silence lets the copy run. A
        FAILED that comes after the copy took over an attempt that was the
        task's last (dead-lettered ``Lost``:
        :meth:`~miyaq.core.replicas.ReplicaCopies.take_over`) is ignored, as
        a late FAILED is after a lease lost here; a late DONE finishes the
        dead task (:meth:`complete`), here as on a single node. An
        at-most-once task's ``started-elsewhere`` placeholder takes its
        lessee's FAILED as it takes its DONE: the task is dead-lettered,
        without its arguments, which were lost with the runner's node
        (:meth:`~miyaq.core.placeholders.Placeholders.fail_placeholder`;
        before 2026-12-08 it was refused and the failure lost)."""
        task = self.table.live.get(task_id)
        if task is None:     # an at-most-once task's placeholder takes its lessee's FAILED
            return self.fail_placeholder(task_id, attempt, error, now, by)
        if task.attempt != attempt:
            return False   # stale: that attempt was already given up on
        standby = task.state != RUNNING
        if standby and (by is None or not task.standby or task.state not in (SCHEDULED, RETRYING)):
            return False   # not running here, and not a standby told by the runner's worker
        if not self._reporter_ok(task, attempt, by):
            return False
        if not self._holds_run(task, by):
            self.not_leased += 1       # an earlier lease of this attempt's number (before a revival)
            return False
        self._detach(task)
        self.keep_error(task, cut_error(error))     # every consumer's report: ZeroMQ, HTTP pull, webhooks
        self.outcomes[(task.queue, "failed")] += 1
        self._retry_or_kill(task, retryable, delay, now, "failed", standby)
        return True

    def lose(self, task: Task, reason: str, now: float) -> None:
        """The consumer vanished or the lease ran out: put the task back at
        once (the attempt is spent) or dead-letter it if none are left."""
        self._detach(task)
        self.keep_error(task, {"type": "Lost", "message": reason})
        self.outcomes[(task.queue, "lost")] += 1
        self._retry_or_kill(task, True, 0.0, now, reason)

    def _retry_or_kill(self, task: Task, retryable: bool, delay: float | None, now: float, reason: str,
                       standby: bool = False) -> None:
        """``standby``: the copy waits as a standby (it asks before it runs), never ready at once."""
        if retryable and not task.at_most_once and task.attempt <= task.max_retries:
            wait = retry_delay(task) if delay is None else delay
            self.outcomes[(task.queue, "retried")] += 1
            if wait <= 0 and not standby:
                self._make_ready(task, now)
            else:
                task.eta = now + max(wait, 0.0)
                self._schedule(task, task.eta, RETRYING, now)
            for listener in self.listeners:
                listener.task_retrying(task, reason)
        else:
            self._kill(task)
            # The node that ran out the task's attempts says so (its other holders
            # only apply the outcome): nothing else tells an operator that a task
            # is in the dead-letter queue until someone lists it.
            error = task.error or {}
            _log.log(logging.WARNING, "dead letter", "task %s (%s) in queue %s dead-lettered after %d attempt(s): "
                     "%s: %s (`miyaq dead list`, `miyaq dead retry ID`)", task.id, handler_label(task), task.queue,
                     task.attempt, error.get("type", "?"), str(error.get("message", ""))[:DEAD_LINE_MESSAGE])

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

    # -- time --------------------------------------------------------------------
    def fire_due(self, now: float) -> float | None:
        """Act on every due timer (bounded per call); return the next due time."""
        for task in self.timers.pop_due(now, TIMER_BATCH):
            state = task.state
            if state in (SCHEDULED, RETRYING):
                if task.standby:
                    # Never expired here: the holder running the task decides
                    # (it may have started it, and a ttl never interrupts a
                    # run); a copy that takes over is expired then if it must.
                    # It wakes at its expiry too (Transitions._schedule) and
                    # asks: a copy no holder runs is expired then, not later.
                    for listener in self.listeners:
                        listener.task_due_elsewhere(task)
                elif task.expires and task.expires <= now:
                    self._finish(task, EXPIRED, None, now)
                elif task.due > now and state == SCHEDULED:
                    self.timers.arm(task, task.due, now)   # woke for an expiry that moved
                else:
                    self._make_ready(task, now)
            elif state == READY:
                if task.expires and task.expires <= now:
                    self._finish(task, EXPIRED, None, now)
            elif state == RUNNING:
                attempt, consumer = task.attempt, task.consumer
                if consumer is not None:
                    consumer.lease_expired(task, now)   # it may stop the attempt and report it (a webhook)
                if task.state == RUNNING and task.attempt == attempt:
                    _log.log(logging.INFO, "lease ran out", "lease of task %s ran out (attempt %d)", task.id,
                             task.attempt)
                    self.lose(task, "lease expired", now)
        if len(self.timers) > 4 * (len(self.table.live) + 1024):
            self.timers.compact()
        return self.timers.next_due()

    # -- housekeeping ------------------------------------------------------------
    def compact_lanes(self) -> int:
        """Drop stale entries (cancelled, expired, moved tasks) from lanes
        nobody reads, so they do not hold memory. Returns entries dropped."""
        dropped = 0
        for name, lane in list(self.ready.lanes.items()):
            if lane.count == 0:      # every entry is stale: the lane goes, so lanes stay as few as queues
                dropped += lane.entries
                del self.ready.lanes[name]
            elif lane.entries > 2 * lane.count + 1024:
                dropped += lane.compact()
        if len(self.counts) > 100:
            forgotten = set()
            for queue, counts in list(self.counts.items()):
                if not any(counts.values()):
                    del self.counts[queue]     # empty queue: pruned, so names stay bounded
                    forgotten.add(queue)
            if forgotten:
                # Its outcome counters too: names a producer makes up must not
                # pile up. Their counts stay in the node's totals.
                pruned = self.pruned_outcomes
                for key in [k for k in self.outcomes if k[0] in forgotten]:
                    pruned[key[1]] += self.outcomes.pop(key)
                for queue in forgotten:
                    for listener in self.listeners:
                        listener.queue_forgotten(queue)
        return dropped

    # -- views -------------------------------------------------------------------
    def outcome_totals(self) -> dict[str, int]:
        """Each outcome counted since start, summed over queues -- those
        pruned since included, so no total ever goes down (STATUS ``outcomes``)."""
        totals = dict(self.pruned_outcomes)
        for (_, outcome), n in self.outcomes.items():
            totals[outcome] = totals.get(outcome, 0) + n
        return totals
