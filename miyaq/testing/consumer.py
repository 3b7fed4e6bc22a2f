"""A consumer in the test's hands: tasks are leased to it like to a worker,
and it finishes them when the test says so.

:class:`InProcessWorker` is a :class:`~miyaq.core.consumers.Consumer` given
credit on one node's dispatcher: it records every delivery (id and attempt)
and keeps what it runs in ``running`` like any consumer, without
heartbeats -- a task it never finishes is put back when its lease
(``timeout``) runs out. :meth:`complete` and :meth:`fail` report as a
worker's DONE and FAILED do, through the engine, and let the node send what
that produced (the F or R event to the other holders) at once;
:meth:`complete_at` and :meth:`fail_at` report to another holder, as a
worker whose node was lost does. Each consumer has a principal of its own, recorded with its leases
(and sent to the other holders in the STARTED event) like a worker's.
"""
from __future__ import annotations

import itertools
from typing import Any

from miyaq.core.consumers import Consumer
from miyaq.node.node import Node
from miyaq.runtime import wall
from miyaq.store.task import Task


_serial = itertools.count(1)


class InProcessWorker(Consumer):
    kind = "test"

    def __init__(self, node: Node, queues: list[str], capacity: int) -> None:
        super().__init__(queues)
        self.node = node
        self.principal = f"test-worker:{next(_serial)}"
        self.capacity = capacity
        self.delivered: list[tuple[str, int]] = []     # (task id, attempt), in order
        self.aborted: list[str] = []
        node.core.dispatcher.grant(self, capacity)
        self._wake()

    # -- the Consumer interface ----------------------------------------------------------------
    def deliver(self, tasks: list[Task]) -> bool:
        self.delivered.extend((t.id, t.attempt) for t in tasks)
        return True

    def abort(self, ids: list[str]) -> None:
        self.aborted.extend(ids)

    # -- the test's side -------------------------------------------------------------------------
    def runs(self, task_id: str) -> bool:
        """The task is leased to this consumer now."""
        return task_id in self.running

    def times(self, task_id: str) -> int:
        """How many times the task was delivered here."""
        return sum(1 for i, _ in self.delivered if i == task_id)

    def complete(self, task_id: str, result: bytes | None = b"ok", attempt: int | None = None) -> bool:
        """DONE for the task (of its current attempt unless ``attempt`` is given)."""
        engine = self.node.core.engine
        ok = engine.complete(task_id, self._attempt(task_id, attempt), result, wall())
        self._credit()
        return ok

    def fail(self, task_id: str, error: dict[str, Any] | None = None, retry: bool = True,
             delay: float | None = None, attempt: int | None = None) -> bool:
        """FAILED for the task: retried with backoff (or ``delay``), or dead-lettered."""
        engine = self.node.core.engine
        error = error or {"type": "Injected", "message": "failed on purpose"}
        ok = engine.fail(task_id, self._attempt(task_id, attempt), error, retry, delay, wall())
        self._credit()
        return ok

    def complete_at(self, holder: Node, task_id: str, attempt: int, result: bytes | None = b"ok") -> bool:
        """DONE for ``attempt`` (leased to this consumer) sent to another
        holder's node, as this worker's principal: what a worker does when
        the node that gave it the task was lost."""
        ok = holder.core.engine.complete(task_id, attempt, result, wall(), by=self.principal)
        holder.clockwork.wake(wall())
        return ok

    def fail_at(self, holder: Node, task_id: str, attempt: int, error: dict[str, Any] | None = None,
                retry: bool = True, delay: float | None = None) -> bool:
        """FAILED for ``attempt`` (leased to this consumer) sent to another
        holder's node, as this worker's principal: what a worker does when
        the node that gave it the task was lost."""
        error = error or {"type": "Injected", "message": "failed on purpose"}
        ok = holder.core.engine.fail(task_id, attempt, error, retry, delay, wall(), by=self.principal)
        holder.clockwork.wake(wall())
        return ok

    def stop(self) -> None:
        """Take no more tasks (what it runs stays leased until its lease runs out)."""
        self.node.core.dispatcher.forget(self)

    def _attempt(self, task_id: str, attempt: int | None) -> int:
        if attempt is not None:
            return attempt
        task = self.running.get(task_id)
        if task is None:
            raise KeyError(f"task {task_id} does not run on this consumer; give its attempt")
        return task.attempt

    def _credit(self) -> None:
        self.node.core.dispatcher.grant(self, min(1, self.capacity - self.credit))
        self._wake()

    def _wake(self) -> None:
        self.node.clockwork.wake(wall())
