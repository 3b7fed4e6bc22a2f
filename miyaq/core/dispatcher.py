"""Matches ready tasks with consumers that have credit.

``pump()`` runs after each burst of messages and after timers fire; it hands
out tasks in rounds of at most ``DISPATCH_CHUNK`` per consumer so a burst
spreads over the consumers instead of filling the first one. A consumer with
credit is "hungry"; idle capacity never waits while its queues hold ready
work because every credit grant and every newly ready task marks the
dispatcher pending.

Who gets a task: first every consumer's free execution slots, then the
backlogs. A worker holds more tasks than it runs at once (its prefetch:
``Consumer.free_slots`` tells how many of its room start at once -- for a
worker its READY's ``concurrency`` less the tasks this node leased it and has
not heard the end of); the pump's first passes lease only what starts at
once, and only once every hungry consumer's free slots are taken (or found
nothing to take) do later passes fill backlogs. The free-slot passes take
the consumers with the most free slots first, and between consumers with as
many, the one made first (:attr:`Consumer.order`). So a lone task goes to an
idle worker, not into the backlog (nor onto a busy slot) of the worker that
registered first; tasks that overlap spread over the workers (the one
running fewer takes the next); and a stream of lone tasks on idle workers
keeps going to the same one, whose caches are warm (a build of 2026-12-05
that rotated the workers cost each task a fifth more worker CPU at 500
lone tasks a second). (Only this node's leases count: a worker connected to
several nodes may run tasks another node gave it.)

A consumer whose queues hold nothing ready leaves the pumps: the pump that
finds nothing for it parks it under its queues (``parked_by_lane``, by ready
lane), and a task entering one of those lanes (``task_ready``) makes every
consumer parked on it hungry again. So a pump visits the consumers that may
have work, not every idle worker or RECEIVE of every queue; a ready task
wakes every consumer parked on its queue, and a pump looks in a queue
once more after the last task is taken, not once per woken consumer (a
pump takes tasks and makes none ready: the other idle workers a lone
task woke are parked again without a look). Credit granted to a parked
consumer leaves it parked (nothing of its queues is ready); ``forget`` takes
it out of the index. A consumer held back only by its queue's limits has
ready tasks: it stays hungry, and the limits' refill timer pumps again. One
whose batch is full (``max_batch``, ``DISPATCH_BATCH_BYTES``) with room left
stays hungry and is served on by the next pump. A batch goes out as DISPATCH
messages of at most ``DISPATCH_MESSAGE_BYTES`` of payloads each (a larger
task alone: :func:`~miyaq.core.delivery.message_parts`), so that each
crosses a slow worker link within the worker's connection timeout; a batch
of small tasks is one message. A message that cannot be sent puts back its
tasks and the later messages' (the earlier ones are on their way) and the
consumer is forgotten. Sending what a pump leased is
:class:`~miyaq.core.delivery.LeaseDelivery`'s, the dispatcher's base.

A consumer granted with ``until_idle`` (a webhook lane: one per queue, as
many as queues) is not parked but leaves the hungry ones when a pump finds
none of its queues holding a ready task, and its owner grants it again when
one does (the webhook deliverer, on each ready task of the lane's queue, or
when a node-wide slot frees).

Per-queue rate limits (:mod:`miyaq.core.limits`) are applied here, so they
hold for every kind of consumer. With no limit configured the loop below
takes its original path; with limits, a queue out of tokens or at its
concurrency cap is skipped for this pump, a refill timer pumps again when
its next token is due, and a task of a capped queue ending marks the
dispatcher pending.

Nothing is leased while the :class:`~miyaq.core.gate.Gate` is closed (the
node drains, or reconciles with other holders).

A lone task need not wait for its burst's end: see
:mod:`miyaq.core.lone_dispatch` (:class:`LoneDispatch`, a base).

A worker that declared the task names it runs passes over a task of
another name while another registered worker of the queue runs it, the
task left in its place: see :mod:`miyaq.core.task_names`; behind such
tasks it is blocked until something may give it a task: see
:mod:`miyaq.core.blocked_consumers` (:class:`BlockedConsumers`, a base).

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

from miyaq.constants import DISPATCH_BATCH_BYTES, DISPATCH_CHUNK, STALL
from miyaq.core.blocked_consumers import BlockedConsumers, enter_lanes
from miyaq.core.consumers import Consumer
from miyaq.core.delivery import LeaseDelivery
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.handles import StartBarrier
from miyaq.core.limits import QueueLimits
from miyaq.core.task_names import PASS_OVER, TaskNames, only_passed_over_left
from miyaq.core.listener import EngineListener
from miyaq.core.lone_dispatch import LoneDispatch, most_free_first
from miyaq.runtime import monotonic, wall
from miyaq.store.table import Tombstone
from miyaq.store.task import Task

logger = logging.getLogger(__name__)


class Dispatcher(EngineListener, LoneDispatch, BlockedConsumers, LeaseDelivery):
    """Leases the engine's ready tasks to the consumers with credit (see the
    module's docstring); listens to the engine for tasks that become ready."""

    def __init__(self, engine: Engine, max_batch: int, gate: Gate, limits: QueueLimits) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.gate = gate
        # Consumers with room that may find work -> whether they leave when
        # nothing of their queues is ready (``grant``'s until_idle) instead of
        # being parked. A pump orders them (see the module's docstring).
        self.hungry: dict[Consumer, bool] = {}
        # Consumers with room whose queues held nothing ready when a pump last
        # visited them, and the same by ready lane: a task entering a lane
        # wakes the consumers parked on it.
        self.parked: dict[Consumer, None] = {}
        self.parked_by_lane: dict[str, dict[Consumer, None]] = {}
        # Of the parked ones, those parked behind tasks they have no handler
        # for, by lane: a take from one of their lanes wakes them too.
        self.blocked_by_lane: dict[str, dict[Consumer, None]] = {}
        self.pending = False
        # The housekeeping loop stamps this (monotonic) every 0.1 s; a pump long
        # after the last stamp means the process was frozen (SIGSTOP, swap, a VM
        # pause) and must first hear what other holders did meanwhile.
        self.alive_at = 0.0
        self.limits = limits
        # The task names registered workers declared (the registry's, set by it).
        self.task_names = TaskNames()
        self.announce: Callable[[], None] = _nothing_to_announce
        # The last task that woke parked consumers, and them (``task_ready``);
        # the lone tasks of this burst noted from it (``note_lone``).
        self._woke: tuple[Task, dict[Consumer, None]] | None = None
        self.lone: list[tuple[Task, dict[Consumer, None]]] = []
        # The log, on a node with one (set by the composition root): a
        # DISPATCH of an at-most-once task waits for its start record (send_leased).
        self.start_barrier: StartBarrier | None = None
        gate.on_open(self._reopened)

    def _reopened(self) -> None:
        self.pending = True

    def task_ready(self, task: Task) -> None:
        self.pending = True
        if self.parked_by_lane:
            woken = self.parked_by_lane.pop(task.lane, None)
            if woken:
                self._woke = (task, woken)
                for consumer in woken:
                    self._unpark(consumer)
                    self.hungry[consumer] = False

    # A task of a queue with a concurrency cap stopped running: room for another.
    def task_finished(self, task: Task, stone: Tombstone) -> None:
        if self.limits.active and self.limits.limits_running(task.queue):
            self.queue_limits_changed(task.queue)

    def task_retrying(self, task: Task, reason: str) -> None:
        if self.limits.active and self.limits.limits_running(task.queue):
            self.queue_limits_changed(task.queue)

    def task_dead(self, task: Task) -> None:
        if self.limits.active and self.limits.limits_running(task.queue):
            self.queue_limits_changed(task.queue)

    def _refilled(self) -> None:
        """A rate-limited queue has a token again (runs in the limits' timer)."""
        self.rate_refilled()
        self.pump(wall())

    def grant(self, consumer: Consumer, credit: int, until_idle: bool = False) -> None:
        """``consumer`` may take ``credit`` more; it is offered ready tasks while
        it has room. ``until_idle``: only until a pump finds nothing ready in
        its queues -- the caller must grant it again when a task of its queues
        is ready (see the module's docstring). A parked consumer stays parked
        (nothing of its queues is ready; the next ready task wakes it)."""
        consumer.granted(credit)
        if consumer in self.parked and not until_idle:
            return
        if consumer.room() > 0:
            self._unpark(consumer)
            self.hungry[consumer] = until_idle
            self.pending = True

    def forget(self, consumer: Consumer) -> None:
        self.hungry.pop(consumer, None)
        self._unpark(consumer)
        consumer.dropped()
        # The names it ran may now be no registered worker's: the consumers
        # that passed over them look again -- the blocked ones, and the
        # hungry ones a limit kept from being blocked (no pump was due).
        if self.hungry:
            self.pending = True
        if self.blocked_by_lane:
            self.wake_blocked(consumer.queues)

    def _park(self, consumer: Consumer) -> None:
        """Wait, out of the pumps, for a task to enter one of the consumer's lanes."""
        self.parked[consumer] = None
        enter_lanes(self.parked_by_lane, consumer)

    def _unpark(self, consumer: Consumer) -> None:
        if consumer not in self.parked:
            return
        del self.parked[consumer]
        _leave(self.parked_by_lane, consumer)
        if self.blocked_by_lane:
            _leave(self.blocked_by_lane, consumer)

    def pump(self, now: float) -> int:
        """Lease ready tasks to hungry consumers; returns how many."""
        if self.lone or self._woke is not None:
            self.lone.clear()        # every ready task is this pump's now
            self._woke = None
        if not self.pending or not self.hungry or not self.gate.is_open:
            return 0
        if self.alive_at and monotonic() - self.alive_at > STALL:
            return 0          # just unfrozen: housekeeping decides (see Clockwork._housekeeping)
        self.pending = False
        engine = self.engine
        limits = self.limits if self.limits.active else None
        hungry = self.hungry
        batches: dict[Consumer, list[Task]] = {}
        sizes: dict[Consumer, int] = {}
        # Took tasks, then found no more: parked after the pump (blocked if it
        # passed over tasks for other workers on the way: True).
        served_idle: list[tuple[Consumer, bool]] = []
        total = 0
        # Round-robin passes, DISPATCH_CHUNK tasks each. First only what starts
        # at once (each consumer's free slots); a consumer with none left waits
        # in `backlogs` for the passes that fill backlogs (a worker's prefetch).
        # A consumer that found nothing (more) to take leaves the passes: takes
        # only remove tasks and acquiring a limit only closes lanes, so it
        # would find nothing later. Unless its queues' limits held it back
        # (their ready tasks stay), nothing of its queues is ready: it is
        # parked, or leaves if until_idle.
        turn = list(hungry)
        if len(turn) > 1:
            turn.sort(key=most_free_first)
        backlogs: list[Consumer] | None = []
        max_batch = self.max_batch
        # Queues a take found empty in this pump: a consumer of only those
        # finds nothing there either (a pump takes tasks, it makes none
        # ready) and is not made to look again (without limits).
        drained: set[str] = set()
        # (names, queues) of declaring consumers blocked in this pump since
        # its last take: another of the same finds the same tasks ahead.
        blocked: set[tuple[frozenset[str], tuple[str, ...]]] = set()
        while turn:
            again = []
            for consumer in turn:
                queues = consumer.queues
                batch = batches.get(consumer)     # made when it takes its first task
                if limits is None and drained and drained.issuperset(queues):
                    # What a take finding nothing leads to below (a consumer
                    # visited with a batch came back for more: not full).
                    if consumer.room() <= 0:
                        hungry.pop(consumer, None)
                    elif batch:
                        served_idle.append((consumer, False))
                    elif not hungry.pop(consumer, True):
                        self._park(consumer)
                    continue
                n = min(consumer.room(), DISPATCH_CHUNK, max_batch - len(batch) if batch else max_batch)
                if backlogs is not None and n > 0:
                    free = consumer.free_slots(n)
                    if free <= 0:
                        backlogs.append(consumer)
                        continue
                    n = free
                taken = 0
                size = sizes.get(consumer, 0) if batch else 0
                names = consumer.names
                if blocked and names is not None and (names, tuple(queues)) in blocked:
                    self._block(consumer)
                    continue
                passed: list[Task] | None = None    # tasks it has no handler for, another worker has
                while taken < n and size < DISPATCH_BATCH_BYTES:
                    if limits is None:
                        task = engine.take(queues, now)
                        if task is None:
                            if passed is None:
                                drained.update(queues)
                            break
                    else:
                        open_lanes = limits.open(queues, now)
                        task = engine.take(open_lanes, now) if open_lanes else None
                        if task is None:
                            break
                    if names is not None and task.name not in names and self.task_names.elsewhere(task):
                        if passed is None:
                            passed = []
                        passed.append(task)
                        if len(passed) >= PASS_OVER:
                            break
                        continue
                    if limits is not None:
                        limits.acquire(task.queue)
                    engine.start(task, consumer, now)
                    if batch is None:
                        batch = batches[consumer] = []
                    batch.append(task)
                    size += len(task.body)
                    taken += 1
                if taken:
                    sizes[consumer] = size
                    consumer.took(taken)
                    total += taken
                    if blocked:
                        blocked.clear()       # what lies ahead of a blocked kind may have moved
                    if self.blocked_by_lane:
                        self.wake_blocked(queues)
                if passed is not None:
                    engine.ready.unpop(passed)    # back in their places, for their workers
                if consumer.room() <= 0:
                    hungry.pop(consumer, None)
                elif batch and (len(batch) >= max_batch or size >= DISPATCH_BATCH_BYTES):
                    self.pending = True       # batch full: it stays hungry, the next pump goes on
                elif taken == n:
                    again.append(consumer)    # took its whole chunk: there may be more
                elif passed is not None and len(passed) >= PASS_OVER and names is not None:
                    self._block(consumer)     # behind tasks for other workers: a take from its lanes wakes it
                    blocked.add((names, tuple(queues)))
                elif limits is not None and engine.ready.has_ready(queues) and (
                        passed is None or not only_passed_over_left(engine.ready, limits, queues, now)):
                    pass                      # held back by its queues' limits: stays hungry
                elif batch:
                    served_idle.append((consumer, passed is not None and names is not None))
                elif passed is not None and names is not None:
                    self._block(consumer)     # only tasks for other workers left: their workers going wakes it too
                    blocked.add((names, tuple(queues)))
                elif not hungry.pop(consumer, True):
                    self._park(consumer)      # a task entering one of its lanes wakes it
            turn = again
            if len(turn) > 1 and backlogs is not None:
                turn.sort(key=most_free_first)
            if not turn and backlogs is not None:
                turn, backlogs = backlogs, None
        for consumer, passed_over in served_idle:
            if passed_over:
                self._block(consumer)
            elif not hungry.pop(consumer, True):
                self._park(consumer)
        if total:
            self._announce()
            self.send_leased(batches, now, sizes)
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


def _leave(by_lane: dict[str, dict[Consumer, None]], consumer: Consumer) -> None:
    """Take ``consumer`` out of an index of consumers by lane."""
    for lane in consumer.queues:
        waiting = by_lane.get(lane)
        if waiting is not None:
            waiting.pop(consumer, None)
            if not waiting:
                del by_lane[lane]
