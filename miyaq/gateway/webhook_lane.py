"""A webhook queue's lane: :class:`WebhookLane`, the dispatcher's consumer
of one ``@http/<queue>`` lane, which the
:class:`~miyaq.gateway.webhooks.WebhookDeliverer` opens, grants and closes
(how many tasks it may take, when it is offered the dispatcher, when it is
forgotten: :mod:`miyaq.gateway.webhooks`).

The lane holds the books of the deliveries leased to it -- the greenlet of
each, and whether it holds one of the node's slots -- and answers the
dispatcher's consumer calls (``room``, ``deliver``, ``abort``,
``lease_expired``) by asking its deliverer (:class:`LaneDeliverer`: what a
lane uses of it). It counts no credit of its own.

A lane keeps its books per attempt (task id and attempt number), not per
task: an attempt stopped at its lease's end may take a moment to end while
the task's next attempt is already leased to the same lane, and each holds
its own slot until its own greenlet ends.
"""
from __future__ import annotations

from typing import Any, Protocol

from miyaq.core.consumers import Consumer
from miyaq.runtime import LOG, Supervisor, green
from miyaq.store.spec import WEBHOOK_LANE_PREFIX
from miyaq.store.task import Task

__all__ = ["LaneDeliverer", "WebhookLane"]


class LaneDeliverer(Protocol):
    """What a :class:`WebhookLane` uses of its deliverer
    (:class:`~miyaq.gateway.webhooks.WebhookDeliverer`): a protocol, so this
    module need not import the deliverer's (which imports it)."""

    supervisor: Supervisor
    concurrency: int

    def room(self, lane: WebhookLane) -> int: ...
    def run(self, lane: WebhookLane, task: Task) -> None: ...
    def ended(self, lane: WebhookLane, key: tuple[str, int]) -> None: ...
    def lease_ran_out(self, task: Task) -> None: ...


class WebhookLane(Consumer):
    kind = "webhook"
    principal = "webhook"

    def __init__(self, deliverer: LaneDeliverer, queue: str) -> None:
        super().__init__([WEBHOOK_LANE_PREFIX + queue])
        self.queue = queue
        self.deliverer = deliverer
        # The delivery greenlets of the attempts leased to this lane: task id -> attempt -> greenlet.
        self.greenlets: dict[str, dict[int, Any]] = {}
        # Attempts (task id, attempt) leased to this lane whose greenlet has
        # not ended yet: each holds one of the node's slots (True) or, only
        # if the books were ever wrong, waits for one before it connects (False).
        self.slots: dict[tuple[str, int], bool] = {}
        # Attempts whose lease ran out while their greenlet still ran: their
        # outcome is reported (a Timeout) already, and the greenlet -- killed,
        # unless its own request timed out just before the kill reached it --
        # reports nothing more (before 2026-12-07 it counted that timeout
        # again in miyaq_webhook_deliveries_total). Cleared when it ends.
        self.reported: set[tuple[str, int]] = set()
        # The engine forgot the queue while a delivery was in flight: the lane
        # closes when its last one ends (unless a task of the queue is ready again first).
        self.forgotten = False

    def busy(self) -> bool:
        """Whether a delivery of this lane is in flight (leased, its greenlet not ended)."""
        return bool(self.slots or self.greenlets)

    # A lane counts no credit: its slots and the node's say what is free, and
    # the dispatcher asks each time.
    def room(self) -> int:
        return self.deliverer.room(self)

    def granted(self, n: int) -> None:
        pass

    def took(self, n: int) -> None:
        pass

    def dropped(self) -> None:
        pass

    def deliver(self, tasks: list[Task]) -> bool:
        deliverer = self.deliverer
        spawn = deliverer.supervisor.spawn
        for task in tasks:
            key = (task.id, task.attempt)
            g = spawn("webhook delivery", deliverer.run, self, task, policy=LOG)
            self.greenlets.setdefault(task.id, {})[task.attempt] = g
            # A link, not a ``finally``: it also runs for a greenlet killed before it started.
            g.rawlink(lambda _g, key=key: deliverer.ended(self, key))
        return True

    def abort(self, ids: list[str]) -> None:
        """Kill every delivery of these tasks (but the greenlet asking, when it is one)."""
        me = green.current()
        for task_id in ids:
            for g in list(self.greenlets.get(task_id, {}).values()):
                if g is not me:
                    g.kill(block=False)

    def lease_expired(self, task: Task, now: float) -> None:
        """The lease of ``task`` ran out mid-delivery: its request is abandoned
        (the greenlet killed; its slot comes back when it ends) and the
        attempt failed as a Timeout."""
        g = self.greenlets.get(task.id, {}).get(task.attempt)
        if g is not None:
            self.reported.add((task.id, task.attempt))
            g.kill(block=False)
        self.deliverer.lease_ran_out(task)

    def __repr__(self) -> str:
        return f"<WebhookLane {self.queue} in_flight={len(self.slots)}/{self.deliverer.concurrency}>"
