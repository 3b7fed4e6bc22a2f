"""Matches ready tasks with consumers that have credit.

``pump()`` runs after each burst of messages and after timers fire; it hands
out tasks in rounds of at most ``DISPATCH_CHUNK`` per consumer so a burst spreads over
idle consumers instead of filling the first one. A consumer with credit is
"hungry"; idle capacity never waits while its queues hold ready work because
every credit grant and every newly ready task marks the dispatcher pending.

A consumer granted with ``until_idle`` (a webhook lane: one per queue, as
many as queues) also leaves the hungry ones when a pump finds none of its
queues holding a ready task, and its owner grants it again when one does
(the webhook deliverer, on each ready task of the lane's queue). So a pump
visits the consumers that may have work, not every idle lane of every
queue ever used. (One held back only by its queue's limits has ready tasks:
it stays, and the limits' refill timer pumps again.)

Per-queue rate limits (:mod:`miyaq.core.limits`) are applied here, so they
hold for every kind of consumer. With no limit configured the loop below
takes its original path; with limits, a queue out of tokens or at its
concurrency cap is skipped for this pump, a refill timer pumps again when
its next token is due, and a task of a capped queue ending marks the
dispatcher pending.

Nothing is leased while the :class:`~miyaq.core.gate.Gate` is closed (the
node drains, or reconciles with other holders).

Between leasing a pump's tasks and sending them, the dispatcher calls
``announce`` (set by the composition root: the role's ``flush``). In a
cluster that publishes the STARTED events of those leases -- who runs each
attempt -- to the tasks' other holders *before* any worker can have the
task. A node killed in between then loses the dispatch, not the news of
it: a worker that finishes the task and, its node gone, reports to another
holder is known there as the attempt's lessee, so that holder takes the
report instead of running the task again.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from miyaq.constants import DISPATCH_BATCH_BYTES, DISPATCH_CHUNK
from miyaq.core.consumers import Consumer
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import QueueLimits
from miyaq.core.listener import EngineListener
from miyaq.constants import STALL
from miyaq.runtime import monotonic, wall
from miyaq.store.table import Tombstone
from miyaq.store.task import Task

logger = logging.getLogger(__name__)



class Dispatcher(EngineListener):
    def __init__(self, engine: Engine, max_batch: int, gate: Gate, limits: QueueLimits) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.gate = gate
        # Consumers with room, in the order they were granted -> whether they
        # leave when nothing of their queues is ready (``grant``'s until_idle).
        self.hungry: dict[Consumer, bool] = {}
        self.pending = False
        # The housekeeping loop stamps this (monotonic) every 0.1 s; a pump long
        # after the last stamp means the process was frozen (SIGSTOP, swap, a VM
        # pause) and must first hear what other holders did meanwhile.
        self.alive_at = 0.0
        self.limits = limits
        self.announce: Callable[[], None] = _nothing_to_announce
        gate.on_open(self._reopened)

    def _reopened(self) -> None:
        self.pending = True

    def task_ready(self, task: Task) -> None:
        self.pending = True

    # A task of a queue with a concurrency cap stopped running: room for another.
    def task_finished(self, task: Task, stone: Tombstone) -> None:
        if self.limits.active and self.limits.limits_running(task.queue):
            self.pending = True

    def task_retrying(self, task: Task, reason: str) -> None:
        if self.limits.active and self.limits.limits_running(task.queue):
            self.pending = True

    def task_dead(self, task: Task) -> None:
        if self.limits.active and self.limits.limits_running(task.queue):
            self.pending = True

    def _refilled(self) -> None:
        """A rate-limited queue has a token again (runs in the limits' timer)."""
        self.pending = True
        self.pump(wall())

    def grant(self, consumer: Consumer, credit: int, until_idle: bool = False) -> None:
        """``consumer`` may take ``credit`` more; it is offered ready tasks while
        it has room. ``until_idle``: only until a pump finds nothing ready in
        its queues -- the caller must grant it again when a task of its queues
        is ready (see the module's docstring)."""
        consumer.granted(credit)
        if consumer.room() > 0:
            self.hungry[consumer] = until_idle
            self.pending = True

    def forget(self, consumer: Consumer) -> None:
        self.hungry.pop(consumer, None)
        consumer.dropped()

    def pump(self, now: float) -> int:
        """Lease ready tasks to hungry consumers; returns how many."""
        if not self.pending or not self.hungry or not self.gate.is_open:
            return 0
        if self.alive_at and monotonic() - self.alive_at > STALL:
            return 0          # just unfrozen: housekeeping decides (see Clockwork._housekeeping)
        self.pending = False
        engine = self.engine
        limits = self.limits if self.limits.active else None
        batches: dict[Consumer, list[Task]] = {}
        sizes: dict[Consumer, int] = {}
        total = 0
        # Round-robin passes, DISPATCH_CHUNK tasks each. A consumer that found
        # nothing to take leaves the passes: takes only remove tasks and
        # acquiring a limit only closes lanes, so it would find nothing later.
        turn = list(self.hungry)
        while turn:
            again = []
            for consumer in turn:
                batch = batches.get(consumer)
                if batch is None:
                    batch = batches[consumer] = []
                n = min(consumer.room(), DISPATCH_CHUNK, self.max_batch - len(batch))
                queues = consumer.queues
                taken = 0
                size = sizes.get(consumer, 0)
                while taken < n and size < DISPATCH_BATCH_BYTES:
                    if limits is None:
                        task = engine.take(queues, now)
                    else:
                        open_lanes = limits.open(queues, now)
                        task = engine.take(open_lanes, now) if open_lanes else None
                        if task is not None:
                            limits.acquire(task.queue)
                    if task is None:
                        break
                    engine.start(task, consumer, now)
                    batch.append(task)
                    size += len(task.body)
                    taken += 1
                sizes[consumer] = size
                consumer.took(taken)
                total += taken
                room = consumer.room()
                if room <= 0 or len(batch) >= self.max_batch or size >= DISPATCH_BATCH_BYTES:
                    self.hungry.pop(consumer, None)
                    if room > 0:
                        self.pending = True   # batch full: continue next pump
                elif taken == n:
                    again.append(consumer)    # took its whole chunk: there may be more
                elif self.hungry.get(consumer) and not engine.ready.has_ready(queues):
                    self.hungry.pop(consumer, None)   # idle: granted again with its queues' next ready task
            turn = again
        if total:
            self._announce()
        for consumer, batch in batches.items():
            if batch and not consumer.deliver(batch):
                logger.warning("could not deliver %d tasks to %r; putting them back", len(batch), consumer)
                for task in batch:
                    engine.release(task.id, now)
                self.forget(consumer)
        if limits is not None and limits.wake_at is not None:
            limits.arm_wake(self._refilled, now)
        return total

    def _announce(self) -> None:
        """Tell the other holders about the leases just made. A failure is
        logged and does not keep the tasks from their workers: what it did
        not send is lost, as an event lost on the way is (a standby copy
        asks the other holders before it runs)."""
        try:
            self.announce()
        except Exception:
            logger.exception("could not announce leases before dispatching them")


def _nothing_to_announce() -> None:
    """A standalone node, or a dispatcher in a unit test: no other holders."""
