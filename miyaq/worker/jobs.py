"""One task on its way through a worker: waiting in the backlog, then
what the pool runs and what the watchdog, cancels and touches act on."""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..protocol.taskspec import MAX_ID_CHARS
from ..runtime import monotonic
from .context import TaskContext
from .execute import Interrupted

if TYPE_CHECKING:
    from .link import NodeLink

#: Sends one TOUCH for a task id (thread-safe where the pool needs it).
Touch = Callable[[str], None]

BACKLOG_TOUCH_SHARE = 0.25
"""A task that waited in the backlog more than this share of its timeout is
touched as it starts: its node's lease, counted from when the node sent it,
starts again then (docs/protocol.md, 7.3)."""


class Backlog:
    """Deliveries waiting for a runner, oldest first, found by task id too.

    An abort (:meth:`drop`) marks its entry and leaves it in place: the
    runner that pops it skips it. So a cancel costs the same in a backlog of
    ten or of a million, and the order of the rest is kept; before
    (2026-12-05) each one searched the backlog from its start and deleted
    from its middle, 2 ms a cancel at 60,000 and quadratic for a whole
    backlog. ``len()`` counts the deliveries still waiting. The index keeps
    one entry per task id, the latest: a task delivered again while an
    earlier delivery of it waits (a buggy node) has only the latest found
    by :meth:`drop`.

    Each entry is a list ``[link, delivery, received]`` (when the worker got
    it, monotonic), its delivery None once aborted: a list rather than an
    object of its own, as every task passes through here."""

    __slots__ = ("_entries", "_by_id", "_live")

    def __init__(self) -> None:
        self._entries: deque[list[Any]] = deque()
        self._by_id: dict[str, list[Any]] = {}
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def __bool__(self) -> bool:
        return self._live > 0

    def links(self) -> "Iterator[NodeLink]":
        """The node of each delivery still waiting, oldest first."""
        return (entry[0] for entry in self._entries if entry[1] is not None)

    def append(self, link: "NodeLink", d: list[Any], received: float) -> None:
        entry = [link, d, received]
        self._entries.append(entry)
        self._by_id[d[0]] = entry
        self._live += 1

    def popleft(self) -> "tuple[NodeLink, list[Any], float] | None":
        """The oldest delivery still waiting, taken out: its link, itself and
        when it was received; None if none waits."""
        entries = self._entries
        while entries:
            entry = entries.popleft()
            link, d, received = entry
            if d is None:
                continue        # aborted meanwhile
            if self._by_id.get(d[0]) is entry:
                del self._by_id[d[0]]
            self._live -= 1
            return link, d, received
        return None

    def drop_link(self, link: "NodeLink") -> list[str]:
        """Take out every delivery ``link``'s node sent that still waits (it
        no longer leases them here): their task ids, oldest first. Walks the
        whole backlog: for a rare event (a RECONNECT), not per task."""
        ids: list[str] = []
        for entry in self._entries:
            d = entry[1]
            if d is None or entry[0] is not link:
                continue
            ids.append(d[0])
            entry[1] = None
            if self._by_id.get(d[0]) is entry:
                del self._by_id[d[0]]
        self._live -= len(ids)
        if not self._live:
            self._entries.clear()
        return ids

    def drop(self, task_id: str) -> "tuple[NodeLink, list[Any]] | None":
        """Take the delivery of ``task_id`` out (it was cancelled): its link
        and delivery, or None if none of it waits."""
        entry = self._by_id.pop(task_id, None)
        if entry is None or entry[1] is None:
            return None
        d, entry[1] = entry[1], None
        self._live -= 1
        if not self._live:
            self._entries.clear()       # nothing but aborted entries left
        return entry[0], d


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


def returnable_ids(deliveries: list[Any]) -> list[str]:
    """The ids of ``deliveries`` a RETURN may name: each a str of 1-64
    characters (a node refuses a whole RETURN for one it would not take);
    a delivery naming none is left out, and its lease runs out at its node."""
    return [d[0] for d in deliveries
            if isinstance(d, list) and d and isinstance(d[0], str) and 0 < len(d[0]) <= MAX_ID_CHARS]


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
    ``received`` (when the worker got the delivery; now if not given) +
    timeout -- the node's lease runs from when it sent the task --, moved on
    by each touch. A task that starts after ``touch_after`` waited long in
    the backlog (:data:`BACKLOG_TOUCH_SHARE` of its timeout) and is touched
    as it starts. ``stop_reason`` is set once, by the first of a cancel or a
    timeout. ``handle`` is the pool's: the
    greenlet, thread ident, asyncio task or child process running it, None
    while nothing does. ``lock`` guards ``handle`` where a native thread
    clears it: made by the threads pool, the one pool that needs it (None
    elsewhere: a lock made and dropped for every task cost the other pools
    an allocation each)."""

    __slots__ = ("task_id", "name", "queue", "attempt", "timeout", "body", "fn", "is_async", "node",
                 "deadline", "touch_after", "stop_reason", "handle", "lock", "executor")

    def __init__(self, d: list[Any], fn: Callable[..., Any], is_async: bool,
                 node: str | None = None, received: float | None = None) -> None:
        self.task_id, self.queue, self.name, self.body, self.attempt, self.timeout = d[:6]
        self.fn = fn
        self.is_async = is_async            # an ``async def`` handler (TaskDef.is_async)
        self.node = node                    # the endpoint of the node that leased it
        start = monotonic() if received is None else received
        timeout = self.timeout
        if timeout and timeout > 0:
            self.deadline = start + timeout
            # Started later than this, it waited long: touched as it starts.
            self.touch_after = start + BACKLOG_TOUCH_SHARE * timeout
        else:
            self.deadline = self.touch_after = float("inf")
        self.stop_reason: type[Interrupted] | None = None
        self.handle: Any = None
        self.lock: Any = None
        self.executor: Any = None

    def context(self, touch: Touch) -> TaskContext:
        return TaskContext(self.task_id, self.name, self.queue, self.attempt, self.timeout, touch, self.node)

    def touched(self) -> None:
        """A touch: the timeout starts again from now (and so does the wait
        after which a task not started yet is touched again)."""
        if self.timeout and self.timeout > 0:
            now = monotonic()
            self.deadline = now + self.timeout
            self.touch_after = now + BACKLOG_TOUCH_SHARE * self.timeout
