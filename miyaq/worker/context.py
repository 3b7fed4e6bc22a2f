"""What a running handler can ask about its own task: ``miyaq.current_task()``."""
from __future__ import annotations

from typing import Any, Callable

import gevent

_current: dict[Any, "TaskContext"] = {}


class TaskContext:
    __slots__ = ("id", "name", "queue", "attempt", "timeout", "_touch")

    def __init__(self, id: str, name: str, queue: str, attempt: int, timeout: float,
                 touch: Callable[[str], None]) -> None:
        self.id = id
        self.name = name
        self.queue = queue
        self.attempt = attempt
        self.timeout = timeout
        self._touch = touch

    @property
    def retries(self) -> int:
        """How many earlier attempts this task had."""
        return self.attempt - 1

    def touch(self) -> None:
        """Extend this task's lease by its timeout (send before it runs out)."""
        self._touch(self.id)


def current_task() -> TaskContext | None:
    """The task the calling handler runs, or None outside a handler."""
    return _current.get(gevent.getcurrent())


def bind(ctx: TaskContext | None) -> None:
    g = gevent.getcurrent()
    if ctx is None:
        _current.pop(g, None)
    else:
        _current[g] = ctx
