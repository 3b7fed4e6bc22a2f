"""Long-polls: RESULT requests waiting for a task to end, and blocking
RECEIVE requests waiting for a task to be ready. Both are bounded by
``max_waiters``; both are answered at their deadline by :meth:`sweep`.
Deadlines are on the monotonic clock (:func:`miyaq.runtime.monotonic`).
"""
from __future__ import annotations

from typing import Any, Callable

from miyaq.core.consumers import PullConsumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.listener import EngineListener
from miyaq.errors import Busy
from miyaq.store.table import Tombstone
from miyaq.store.task import Task

Answer = Callable[[dict[str, Any]], Any]


def outcome(stone_or_task: Tombstone | Task) -> dict[str, Any]:
    """How RESULT reports a task that ended (or is dead)."""
    if isinstance(stone_or_task, Tombstone):
        body: dict[str, Any] = {"state": stone_or_task.state}
        if stone_or_task.result is not None:
            body["result"] = stone_or_task.result
        if stone_or_task.error is not None:
            body["error"] = stone_or_task.error
        return body
    return {"state": stone_or_task.state, "error": stone_or_task.error}


class Waiters(EngineListener):
    def __init__(self, dispatcher: Dispatcher, max_waiters: int) -> None:
        self.dispatcher = dispatcher
        self.max_waiters = max_waiters
        self.results: dict[str, list[tuple[float, Answer]]] = {}
        self.pulls: list[PullConsumer] = []
        self.count = 0

    def _check_room(self) -> None:
        if self.count >= self.max_waiters:
            raise Busy(f"{self.count} requests are already waiting; try again later")

    # -- RESULT --------------------------------------------------------------------
    def wait_result(self, task_id: str, deadline: float, answer: Answer) -> None:
        self._check_room()
        self.results.setdefault(task_id, []).append((deadline, answer))
        self.count += 1

    def _resolve(self, task_id: str, body: dict[str, Any]) -> None:
        waiting = self.results.pop(task_id, None)
        if waiting:
            self.count -= len(waiting)
            for _, answer in waiting:
                answer(dict(body))

    def task_finished(self, task: Task, stone: Tombstone) -> None:
        if self.results:
            self._resolve(task.id, outcome(stone))

    def task_dead(self, task: Task) -> None:
        if self.results:
            self._resolve(task.id, outcome(task))

    # -- RECEIVE -------------------------------------------------------------------
    def wait_pull(self, consumer: PullConsumer) -> None:
        self._check_room()
        self.pulls.append(consumer)
        self.count += 1
        self.dispatcher.grant(consumer, 0)

    # -- deadlines -----------------------------------------------------------------
    def sweep(self, now: float) -> None:
        """Answer every long-poll whose deadline passed (``now``: monotonic)."""
        if self.results:
            for task_id in list(self.results):
                waiting = self.results[task_id]
                keep = [(d, a) for d, a in waiting if d > now]
                for d, answer in waiting:
                    if d <= now:
                        answer({"state": "running", "timeout": True})
                self.count -= len(waiting) - len(keep)
                if keep:
                    self.results[task_id] = keep
                else:
                    del self.results[task_id]
        if self.pulls:
            keep_pulls = []
            for consumer in self.pulls:
                if consumer.credit <= 0:          # got its task
                    self.count -= 1
                elif consumer.deadline <= now:
                    self.dispatcher.forget(consumer)
                    consumer.answer(None)
                    self.count -= 1
                else:
                    keep_pulls.append(consumer)
            self.pulls = keep_pulls
