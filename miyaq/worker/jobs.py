"""One task on its way through a pool: what the pool runs and what the
watchdog, cancels and touches act on."""
from __future__ import annotations

from typing import Any, Callable

from ..protocol.taskspec import MAX_ID_CHARS
from ..runtime import green, monotonic
from .context import TaskContext
from .execute import Interrupted

#: Sends one TOUCH for a task id (thread-safe where the pool needs it).
Touch = Callable[[str], None]


def well_formed(d: Any) -> bool:
    """A DISPATCH delivery a :class:`Job` can be made of: [id, queue, name,
    body, attempt, timeout(, holders)] with the right types (name None: a
    webhook task, which no handler takes). What a node sends is checked
    here, before a runner touches it."""
    return (isinstance(d, list) and len(d) in (6, 7) and isinstance(d[0], str) and isinstance(d[1], str)
            and (d[2] is None or isinstance(d[2], str)) and isinstance(d[3], bytes)
            and type(d[4]) is int and isinstance(d[5], (int, float)) and not isinstance(d[5], bool))


def reportable(d: Any) -> bool:
    """A malformed delivery that still names a task id and an attempt: its
    node waits for that attempt's outcome, so it is reported failed rather
    than dropped (each unreported one would hold a slot of this worker's at
    that node for good)."""
    return (isinstance(d, list) and len(d) > 4 and isinstance(d[0], str) and 0 < len(d[0]) <= MAX_ID_CHARS
            and type(d[4]) is int and d[4] >= 0)


def current(running: "dict[str, Job]", job: "Job") -> bool:
    """Is ``job`` the attempt of its task that ``running`` holds (not an
    earlier one that was leased again while it ran)?"""
    return running.get(job.task_id) is job


def release(running: "dict[str, Job]", job: "Job") -> bool:
    """Take ``job`` out of ``running`` if it is its task's current attempt;
    False if a later attempt took its place."""
    if running.get(job.task_id) is job:
        del running[job.task_id]
        return True
    return False


class Job:
    """``deadline`` (monotonic) is when the watchdog stops the handler:
    start + timeout, moved on by each touch. ``stop_reason`` is set once,
    by the first of a cancel or a timeout. ``handle`` is the pool's: the
    greenlet, thread ident, asyncio task or child process running it, None
    while nothing does. ``lock`` guards ``handle`` where a native thread
    clears it."""

    __slots__ = ("task_id", "name", "queue", "attempt", "timeout", "body", "fn", "is_async", "node",
                 "deadline", "stop_reason", "handle", "lock", "executor")

    def __init__(self, d: list[Any], fn: Callable[..., Any], is_async: bool,
                 node: str | None = None) -> None:
        self.task_id, self.queue, self.name, self.body, self.attempt, self.timeout = d[:6]
        self.fn = fn
        self.is_async = is_async            # an ``async def`` handler (TaskDef.is_async)
        self.node = node                    # the endpoint of the node that leased it
        self.deadline = monotonic() + self.timeout if self.timeout and self.timeout > 0 else float("inf")
        self.stop_reason: type[Interrupted] | None = None
        self.handle: Any = None
        self.lock = green.native_lock()
        self.executor: Any = None

    def context(self, touch: Touch) -> TaskContext:
        return TaskContext(self.task_id, self.name, self.queue, self.attempt, self.timeout, touch, self.node)

    def touched(self) -> None:
        """A touch: the timeout starts again from now."""
        if self.timeout and self.timeout > 0:
            self.deadline = monotonic() + self.timeout

    #: The handler starts now (a pool that waited for a free child).
    started = touched
