"""Leasing a lone task before its burst's end (:class:`LoneDispatch`, a
base of :class:`~miyaq.core.dispatcher.Dispatcher`, which sets the
attributes it reads).

A lone task need not wait for its burst's end (:meth:`LoneDispatch.dispatch_lone`):
a task of a small SUBMIT (``LONE_SUBMIT_TASKS``, its connection's first of
the burst) that woke consumers parked on its lane is noted, and the service
reader, once the burst has done ``EARLY_ACK_WORK`` tasks of work, has it
leased before it reads on -- to the woken consumer the pump would pick (most
free slots, then the one made first) whose free slot it starts on, and only
if it is that consumer's next task by priority and readiness, so the order
of docs/semantics.md holds. The rest of the burst (another connection's
batches) is dispatched at its end as before, batched; at most
``LONE_TASKS_PER_BURST`` tasks a burst go this way.
"""
from __future__ import annotations

from collections.abc import Callable

from miyaq.constants import DISPATCH_CHUNK, LONE_TASKS_PER_BURST, STALL
from miyaq.core.consumers import Consumer
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import QueueLimits
from miyaq.core.task_names import TaskNames
from miyaq.runtime import monotonic
from miyaq.store.task import READY, Task

__all__ = ["LoneDispatch", "most_free_first"]


class LoneDispatch:
    """The dispatcher's early leases of lone tasks (its base): the
    dispatcher sets the attributes below; :meth:`_announce` and
    ``send_leased`` are its own."""

    engine: Engine
    gate: Gate
    limits: QueueLimits
    task_names: TaskNames
    hungry: dict[Consumer, bool]
    blocked_by_lane: dict[str, dict[Consumer, None]]
    wake_blocked: Callable[[list[str]], None]
    alive_at: float
    _woke: tuple[Task, dict[Consumer, None]] | None
    lone: list[tuple[Task, dict[Consumer, None]]]
    _announce: Callable[[], None]
    send_leased: Callable[..., None]

    def note_lone(self, task: Task) -> None:
        """``task``, just submitted, is of a lone SUBMIT: if it woke consumers
        parked on its lane, :meth:`dispatch_lone` may lease it before the
        burst's end (at most ``LONE_TASKS_PER_BURST`` a burst; the pump
        forgets them)."""
        woke, self._woke = self._woke, None
        if woke is not None and woke[0] is task and len(self.lone) < LONE_TASKS_PER_BURST:
            self.lone.append(woke)

    def dispatch_lone(self, now: float) -> int:
        """Lease and send, each on its own, the lone tasks noted since the
        last pump, where one of the consumers they woke has a free slot and
        nothing of its lanes comes before the task (priority, then the order
        they became ready); returns how many. A task not leased here waits
        for the pump at the burst's end, as every other one does."""
        lone = self.lone
        if not lone:
            return 0
        self.lone = []
        if not self.gate.is_open or (self.alive_at and monotonic() - self.alive_at > STALL):
            return 0
        leased: list[tuple[Consumer, Task]] = []
        for task, woken in lone:
            if task.state != READY or (task.expires and task.expires <= now):
                continue        # taken already, or expired: the pump's to find
            consumer = self._lone_taker(task, woken, now)
            if consumer is None:
                continue
            taken = self.engine.take([task.lane], now)      # its lane's head: the task itself
            if taken is None:
                continue
            task = taken
            if self.limits.active:
                self.limits.acquire(task.queue)
            self.engine.start(task, consumer, now)
            consumer.took(1)
            if self.blocked_by_lane:
                self.wake_blocked([task.lane])
            if consumer.room() <= 0:
                self.hungry.pop(consumer, None)
            leased.append((consumer, task))
        if not leased:
            return 0
        self._announce()
        batches: dict[Consumer, list[Task]] = {}
        for consumer, task in leased:
            batches.setdefault(consumer, []).append(task)
        self.send_leased(batches, now)
        return len(leased)

    def _lone_taker(self, task: Task, woken: dict[Consumer, None], now: float) -> Consumer | None:
        """Of the consumers ``task`` woke, the one a pump's free-slot pass
        would give it: still hungry, a free slot, the most of them (then the
        one made first), ``task`` the next of its lanes (open ones, with
        limits), and not one that declared task names without ``task``'s
        while another worker of its queue runs it (as a pump passes it
        over); None if there is none."""
        hungry = self.hungry
        takers = [c for c in woken if c in hungry and c.room() > 0 and c.free_slots(1) > 0]
        if not takers:
            return None
        if len(takers) > 1:
            takers.sort(key=most_free_first)
        for consumer in takers:
            if consumer.names is not None and task.name not in consumer.names and self.task_names.elsewhere(task):
                continue                  # not its handler, and another worker of the queue has it
            lanes: list[str] = consumer.queues
            if self.limits.active:
                lanes = self.limits.open(lanes, now)
            if task.lane in lanes and self.engine.ready.peek(lanes) is task:
                return consumer
        return None


def most_free_first(consumer: Consumer) -> tuple[int, int]:
    """Sort key of the free-slot passes: most free slots first, then the consumer made first."""
    return (-consumer.free_slots(DISPATCH_CHUNK), consumer.order)
