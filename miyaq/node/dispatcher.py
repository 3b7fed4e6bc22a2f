"""Matches ready tasks with consumers that have credit.

``pump()`` runs after each burst of messages and after timers fire; it hands
out tasks in rounds of at most ``CHUNK`` per consumer so a burst spreads over
idle consumers instead of filling the first one. A consumer with credit is
"hungry"; idle capacity never waits while its queues hold ready work because
every credit grant and every newly ready task marks the dispatcher pending.
"""
from __future__ import annotations

import logging

from ..store.task import Task
from .consumers import Consumer
from .engine import Engine
from .events import EngineListener

logger = logging.getLogger(__name__)

CHUNK = 64


class Dispatcher(EngineListener):
    def __init__(self, engine: Engine, max_batch: int) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.hungry: dict[Consumer, None] = {}
        self.pending = False

    def task_ready(self, task: Task) -> None:
        self.pending = True

    def grant(self, consumer: Consumer, credit: int) -> None:
        consumer.credit += credit
        if consumer.credit > 0:
            self.hungry[consumer] = None
            self.pending = True

    def forget(self, consumer: Consumer) -> None:
        self.hungry.pop(consumer, None)
        consumer.credit = 0

    def pump(self, now: float) -> int:
        """Lease ready tasks to hungry consumers; returns how many."""
        if not self.pending or not self.hungry:
            return 0
        self.pending = False
        engine = self.engine
        batches: dict[Consumer, list[Task]] = {}
        total = 0
        progress = True
        while progress and self.hungry:
            progress = False
            for consumer in list(self.hungry):
                batch = batches.get(consumer)
                if batch is None:
                    batch = batches[consumer] = []
                n = min(consumer.credit, CHUNK, self.max_batch - len(batch))
                queues = consumer.queues
                taken = 0
                while taken < n:
                    task = engine.take(queues, now)
                    if task is None:
                        break
                    engine.start(task, consumer, now)
                    batch.append(task)
                    taken += 1
                consumer.credit -= taken
                total += taken
                if taken:
                    progress = True
                if consumer.credit <= 0 or len(batch) >= self.max_batch:
                    self.hungry.pop(consumer, None)
                    if consumer.credit > 0:
                        self.pending = True   # batch full: continue next pump
        for consumer, batch in batches.items():
            if batch and not consumer.deliver(batch):
                logger.warning("could not deliver %d tasks to %r; putting them back", len(batch), consumer)
                for task in batch:
                    engine.release(task.id, now)
                self.forget(consumer)
        return total
