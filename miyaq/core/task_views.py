"""What the node tells about its tasks: the engine's read-only views.

:class:`TaskViews` answers INFO, RESULT and LIST, the dead-letter listing and
the per-queue counts from the engine's state (:mod:`miyaq.core.transitions`);
:class:`~miyaq.core.engine.Engine` inherits it. Nothing here changes a task
or a count. A listing is bounded by its ``limit`` and walks only what can
match (:meth:`TaskViews.listed`), so a view never holds the node's event
loop for a walk of the whole table. No I/O; none blocks.

A running task's header gains when its current attempt was leased
(``started``, unix time) and how long ago (``running_seconds``), read from
:class:`RunStarts` -- the starts the node's metrics keep already, in start
order, for ``miyaq_oldest_running_task_seconds``
(:class:`miyaq.gateway.task_timings.TaskTimings`) -- so a task costs no
memory and no CPU more for it; only a view that shows a running task looks
one up. A node without them (no HTTP port: no metrics) shows neither.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol

from miyaq.core.transitions import Transitions
from miyaq.errors import NotFound
from miyaq.runtime import wall
from miyaq.store.table import Tombstone
from miyaq.store.task import DEAD, LIVE_STATES, RUNNING, Task

LISTED_STATES = LIVE_STATES + (DEAD,)
"""The states a task listing can find (finished tasks are tombstones, never listed)."""


class RunStarts(Protocol):
    """Where the starts of running attempts are kept (the node's metrics
    hand theirs in, :class:`miyaq.gateway.task_timings.TaskTimings`)."""

    def start_of(self, task_id: str, attempt: int) -> float | None:
        """When ``attempt`` of ``task_id`` was leased (wall clock), or None
        when that attempt's start is not kept."""


class TaskViews(Transitions):
    """The engine's read-only views (a base of :class:`~miyaq.core.engine.Engine`)."""

    #: The starts of running attempts, set by the node's metrics while they
    #: run (None: not kept, so no view shows a start).
    run_starts: RunStarts | None = None

    # -- one task ---------------------------------------------------------------
    def info(self, task_id: str) -> dict[str, Any]:
        """A live or dead task's header, else its tombstone's; ``NotFound``
        if the node knows no such task (never heard of, or forgotten). A
        running task's has ``started`` and ``running_seconds`` when its
        attempt's start is kept (:meth:`task_header`)."""
        task = self.table.live.get(task_id) or self.table.dead.get(task_id)
        if task is not None:
            return self.task_header(task)
        stone = self.table.tombstone(task_id)
        if stone is None:
            raise NotFound(f"no task {task_id}")
        return stone.info()

    def task_header(self, task: Task, now: float | None = None) -> dict[str, Any]:
        """``task.header()``; a running task's with, when its current
        attempt's start is kept, ``started`` (the wall-clock time that
        attempt was leased: a worker's prefetched task counts from when it
        was sent) and ``running_seconds`` (since then, to the millisecond).
        Not the first attempt's start, nor the time the handler was called;
        a standby copy in a cluster (its task runs on another holder, this
        copy waits, ``scheduled``) knows no start. ``now``: the wall clock,
        read once by a listing for all its tasks (read here if None)."""
        info = task.header()
        starts = self.run_starts
        if starts is not None and task.state == RUNNING:
            started = starts.start_of(task.id, task.attempt)
            if started is not None:
                info["started"] = started
                info["running_seconds"] = round(max(0.0, (wall() if now is None else now) - started), 3)
        return info

    def live_state(self, task_id: str) -> str | None:
        """The state of a live task held here (scheduled, ready, running,
        retrying), or None."""
        task = self.table.live.get(task_id)
        return task.state if task is not None else None

    def result(self, task_id: str) -> Tombstone | None:
        """The tombstone of a finished task, or None while it is live/dead."""
        return self.table.tombstone(task_id)

    # -- listings ---------------------------------------------------------------
    def dead_list(self, queue: str | None, limit: int) -> list[dict[str, Any]]:
        """The headers of up to ``limit`` dead tasks of ``queue`` (None: all)."""
        return [task.header() for task in self.dead_listed(queue, limit)]

    def dead_listed(self, queue: str | None, limit: int) -> list[Task]:
        """The tasks :meth:`dead_list` shows (the gateway bounds its answer with them first)."""
        return [task for task, _ in zip(self.table.iter_dead(queue), range(limit))]

    def list_tasks(self, queue: str | None, state: str | None, limit: int) -> list[dict[str, Any]]:
        """The headers of :meth:`listed`."""
        return self.headers(self.listed(queue, state, limit))

    def headers(self, tasks: list[Task]) -> list[dict[str, Any]]:
        """Each task's :meth:`task_header`, the wall clock read once for them all
        (10,000 running tasks read it 10,000 times before)."""
        now = wall()
        return [self.task_header(task, now) for task in tasks]

    def listed(self, queue: str | None, state: str | None, limit: int) -> list[Task]:
        """Up to ``limit`` live tasks, then dead ones, of ``queue`` in ``state``
        (None: any). Walks only what can match, and no further than the last
        match: the counts per queue and state say how many there are (none:
        no walk at all, as for a finished state, which is never listed), a
        dead state is looked for among the dead only and a live one among the
        live. So a listing that matches little does not walk the whole table
        while the node's other work waits."""
        wanted = min(limit, self.matching(queue, state))
        out: list[Task] = []
        if wanted <= 0:
            return out
        sources: list[Iterable[Task]] = []
        if state != DEAD:
            sources.append(self.table.live.values())
        if state is None or state == DEAD:
            sources.append(self.table.dead.values())
        for source in sources:
            for task in source:
                if (queue is None or task.queue == queue) and (state is None or task.state == state):
                    out.append(task)
                    if len(out) >= wanted:
                        return out
        return out

    def matching(self, queue: str | None, state: str | None) -> int:
        """Live and dead tasks of ``queue`` in ``state`` (None: any), by the counts."""
        if state is not None and state not in LISTED_STATES:
            return 0
        states = LISTED_STATES if state is None else (state,)
        if queue is not None:
            counts = self.counts.get(queue)
            return 0 if counts is None else sum(counts[s] for s in states)
        return sum(c[s] for c in self.counts.values() for s in states)

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """Each queue's live and dead tasks by state (STATUS ``queues``)."""
        return {q: {s: c[s] for s in LISTED_STATES}
                for q, c in self.counts.items()}
