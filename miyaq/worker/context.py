"""What a running handler can ask about its own task: ``miyaq.current_task()``.

The task is held in a context variable, so it follows the handler wherever
the pool runs it: a greenlet, a thread, an asyncio task or a child process
each has its own context.
"""
from __future__ import annotations

import contextvars
from typing import Any, Callable

from ..client import wire as _wire

_current: contextvars.ContextVar["TaskContext | None"] = contextvars.ContextVar("miyaq_task", default=None)


class TaskContext:
    """The running task, as :func:`current_task` returns it to its handler
    (exported as ``miyaq.TaskContext`` so a helper can be annotated with it):
    ``id``, ``name``, ``queue``, ``attempt`` (1 for the first start),
    ``retries``, ``timeout`` (the lease, s), ``node``, and :meth:`touch`.
    The worker makes it; user code only reads it."""

    __slots__ = ("id", "name", "queue", "attempt", "timeout", "node", "_touch")

    def __init__(self, id: str, name: str, queue: str, attempt: int, timeout: float,
                 touch: Callable[[str], None], node: str | None = None) -> None:
        self.id = id
        self.name = name
        self.queue = queue
        self.attempt = attempt
        self.timeout = timeout
        #: The endpoint of the node that leased the task to this worker.
        self.node = node
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
    return _current.get()


def bind(ctx: TaskContext) -> Any:
    """Make ``ctx`` the current task of this greenlet, thread or asyncio task;
    returns the token :func:`unbind` takes."""
    return _current.set(ctx)


def unbind(token: Any) -> None:
    """Undo the :func:`bind` that returned ``token`` (same greenlet, thread or task)."""
    _current.reset(token)


def _in_handler() -> bool:
    return _current.get() is not None


# A result wait's Timeout says, in a handler, that the wait holds its slot.
_wire.in_handler = _in_handler
