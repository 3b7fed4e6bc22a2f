"""How the leases a pump (or a lone task's dispatch, or a RECEIVE answered
at once) made reach their consumers (:class:`LeaseDelivery`, a base of
:class:`~miyaq.core.dispatcher.Dispatcher`): sent at once, or -- when an
at-most-once task started among them -- once the log has its start; each
batch as DISPATCH messages of at most ``DISPATCH_MESSAGE_BYTES`` of
payloads (:func:`message_parts`); what cannot be delivered put back, and
its consumer forgotten. No decision of who gets a task is made here.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from miyaq.constants import DISPATCH_MESSAGE_BYTES
from miyaq.core.consumers import Consumer
from miyaq.core.engine import Engine
from miyaq.core.handles import StartBarrier
from miyaq.runtime import wall
from miyaq.store.task import RUNNING, Task

logger = logging.getLogger("miyaq.core.dispatcher")     # the dispatcher's lines: one logger to follow it

__all__ = ["LeaseDelivery", "message_parts"]


class LeaseDelivery:
    """The dispatcher's sending of its leases (its base). The dispatcher
    sets the attributes below; :meth:`forget` is its own (a consumer that
    could not be delivered to leaves the pumps)."""

    engine: Engine
    pending: bool
    start_barrier: StartBarrier | None
    forget: Callable[[Consumer], None]

    def send_leased(self, batches: dict[Consumer, list[Task]], now: float,
                    sizes: dict[Consumer, int] | None = None) -> None:
        """Send the leases just made (``sizes``: each batch's payload bytes,
        when known; a RECEIVE answered at once leases and sends its task
        here too): at once, or, when an at-most-once task started among
        them, once the log has its start (:attr:`start_barrier`). Sent
        before, a node killed before that write brought the task back ready
        on restart, and it ran a second time (review, 2026-12-06: 128 such
        tasks in one round of kill -9s). The wait is one log write (10 ms at
        most with ``--fsync interval``), paid by the batches of a pump that
        leased an at-most-once task, not by the others."""
        sizes = sizes or {}
        barrier = self.start_barrier
        if barrier is not None and barrier.at_most_once_started():
            barrier.after_written(lambda: self._deliver(batches, sizes, wall(), held=True))
        else:
            self._deliver(batches, sizes, now)

    def _deliver(self, batches: dict[Consumer, list[Task]], sizes: dict[Consumer, int], now: float,
                 held: bool = False) -> None:
        """DISPATCH each batch to its consumer (in parts of at most
        ``DISPATCH_MESSAGE_BYTES``); what cannot be delivered goes back, and
        the consumer is forgotten. ``held``: sent after the log's write, so
        a task no longer leased to the consumer by then (cancelled, or taken
        back with a lost worker and leased again) is not sent, and its
        credit goes back to the consumer."""
        engine = self.engine
        for consumer, batch in batches.items():
            if held:
                still = [task for task in batch if task.state == RUNNING and task.consumer is consumer]
                if len(still) < len(batch):
                    consumer.granted(len(batch) - len(still))
                    self.pending = True
                batch = still
            if not batch:
                continue
            parts = [batch] if sizes.get(consumer, 0) <= DISPATCH_MESSAGE_BYTES else message_parts(batch)
            for sent, part in enumerate(parts):
                if not consumer.deliver(part):
                    unsent = [task for later in parts[sent:] for task in later]
                    logger.warning("could not deliver %d tasks to %r; putting them back", len(unsent), consumer)
                    for task in unsent:
                        engine.release(task.id, now)
                    self.forget(consumer)
                    break


def message_parts(batch: list[Task]) -> list[list[Task]]:
    """``batch`` cut, in order, into the tasks of one DISPATCH message each:
    at most DISPATCH_MESSAGE_BYTES of payloads together, a larger task alone
    (see the constant: a message must cross a slow worker link well within
    the worker's connection timeout)."""
    parts: list[list[Task]] = []
    part: list[Task] = []
    size = 0
    for task in batch:
        n = len(task.body)
        if part and size + n > DISPATCH_MESSAGE_BYTES:
            parts.append(part)
            part, size = [], 0
        part.append(task)
        size += n
    if part:
        parts.append(part)
    return parts
