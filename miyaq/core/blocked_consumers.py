"""Consumers parked behind tasks for other workers (:class:`BlockedConsumers`,
a base of :class:`~miyaq.core.dispatcher.Dispatcher`, which sets the
attributes it reads).

A worker that declared the task names it runs passes over a task of another
name while a registered worker of the queue runs it
(:mod:`miyaq.core.task_names`). Behind :data:`~miyaq.core.task_names.PASS_OVER`
such tasks, or with only such tasks left in its lanes, it is *blocked*:
parked out of the pumps, as a consumer with nothing to take is, and indexed
by lane (``blocked_by_lane``). What may give it a task wakes it -- it is
made hungry and looks again at the next pump:

- a task entering one of its lanes (as any parked consumer: the
  dispatcher's ``task_ready``);
- a task taken from one of its lanes (the tasks ahead of it move);
- a worker of one of its lanes going or saying it is stopping (the names
  it ran may now be no registered worker's: the task goes out to whoever
  is there, as a name no worker runs does);
- the pause or the limits of one of its queues changing
  (:meth:`BlockedConsumers.queue_limits_changed`): a pause lifted or set,
  a limit set, loosened or removed, a task of a capped queue ending, the
  node's share of the limits changing, or a rate-limited queue's token
  coming (:meth:`BlockedConsumers.rate_refilled`) -- its other lanes held
  back by a limit while it passed over tasks in one, it may now take from
  them; and a lane paused no longer puts its tasks ahead of it (the
  tasks it passed over there may have been what blocked it).

Waking costs a look of at most ``PASS_OVER`` tasks per blocked consumer;
nothing here runs while no consumer is blocked.
"""
from __future__ import annotations

from collections.abc import Callable

from miyaq.core.consumers import Consumer
from miyaq.core.limits import QueueLimits
from miyaq.store.spec import WEBHOOK_LANE_PREFIX

__all__ = ["BlockedConsumers", "enter_lanes"]


class BlockedConsumers:
    """The dispatcher's blocked consumers (its base): the dispatcher sets
    the attributes below; ``_park`` and ``_unpark`` are its own."""

    hungry: dict[Consumer, bool]
    blocked_by_lane: dict[str, dict[Consumer, None]]
    pending: bool
    limits: QueueLimits
    _park: Callable[[Consumer], None]
    _unpark: Callable[[Consumer], None]

    def _block(self, consumer: Consumer) -> None:
        """Park ``consumer``, which passed over tasks it has no handler for
        and found nothing else: see the module's docstring for what wakes it."""
        self.hungry.pop(consumer, None)
        self._park(consumer)
        enter_lanes(self.blocked_by_lane, consumer)

    def wake_blocked(self, lanes: list[str]) -> None:
        """Tasks were taken from ``lanes``, a worker of them went, or they
        reopened: the consumers blocked on them look again at the next pump."""
        by_lane = self.blocked_by_lane
        for lane in lanes:
            waiting = by_lane.get(lane)
            if waiting:
                for consumer in list(waiting):
                    self._unpark(consumer)
                    self.hungry[consumer] = False
                self.pending = True

    def queue_limits_changed(self, queue: str | None = None) -> None:
        """``queue`` was paused or resumed, its limits set or removed, or a
        task of its concurrency cap ended -- or, for None, the node's share
        of every limit changed: the next pump looks again, the consumers
        blocked on its lanes (on any lane, for None) with it."""
        self.pending = True
        if self.blocked_by_lane:
            lanes = list(self.blocked_by_lane) if queue is None else [queue, WEBHOOK_LANE_PREFIX + queue]
            self.wake_blocked(lanes)

    def rate_refilled(self) -> None:
        """A rate-limited queue has a token again (which one the limits'
        timer does not say): the next pump looks again, with the consumers
        blocked on a lane of a queue with a rate."""
        self.pending = True
        if self.blocked_by_lane:
            limits, queue_of = self.limits.limits, self.limits.queue_of
            rated = [lane for lane in self.blocked_by_lane
                     if (limit := limits.get(queue_of(lane))) is not None and limit.rate is not None]
            if rated:
                self.wake_blocked(rated)


def enter_lanes(by_lane: dict[str, dict[Consumer, None]], consumer: Consumer) -> None:
    """Put ``consumer`` in an index of consumers by lane, under each of its lanes."""
    for lane in consumer.queues:
        waiting = by_lane.get(lane)
        if waiting is None:
            waiting = by_lane[lane] = {}
        waiting[consumer] = None
