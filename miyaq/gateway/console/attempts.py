"""Each task's failed attempts, for the console's task page.

A task record keeps only its last error; :class:`AttemptLog`, an engine
listener, remembers every failed or lost attempt this node saw: attempt
number, when, and the error (type, message, the first lines of a
traceback, a webhook's status). Only failures are recorded, so tasks that
succeed at once cost nothing.

Bounded: at most ``MAX_TASKS`` tasks (least recently failed dropped first),
``MAX_PER_TASK`` attempts each (the first and the latest kept), every text
cut to ``MAX_TEXT`` characters. The log is per node and in memory only: a
restart, or a failure seen by another holder, is not in it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ...core.listener import EngineListener
from ...store.task import Task

MAX_TASKS = 2000
MAX_PER_TASK = 10
MAX_TEXT = 2000
KEPT_FIELDS = ("type", "message", "traceback", "status", "retry_after")


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + " [...]"
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return _cut(repr(value))


class AttemptLog(EngineListener):
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.tasks: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def _record(self, task: Task, outcome: str) -> None:
        error = task.error if isinstance(task.error, dict) else {}
        entry: dict[str, Any] = {"attempt": task.attempt, "at": self.clock(), "outcome": outcome}
        entry.update({k: _cut(error[k]) for k in KEPT_FIELDS if k in error})
        attempts = self.tasks.pop(task.id, None) or []
        attempts.append(entry)
        if len(attempts) > MAX_PER_TASK:
            del attempts[1]           # keep the first failure and the latest ones
        self.tasks[task.id] = attempts
        while len(self.tasks) > MAX_TASKS:
            self.tasks.popitem(last=False)

    def task_retrying(self, task: Task, reason: str) -> None:
        self._record(task, "retrying")

    def task_dead(self, task: Task) -> None:
        self._record(task, "dead")

    def of(self, task_id: str) -> list[dict[str, Any]]:
        """The failed attempts of ``task_id`` this node saw, oldest first."""
        return list(self.tasks.get(task_id, ()))
