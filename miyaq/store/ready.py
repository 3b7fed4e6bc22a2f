"""Per-queue ready structures: lower priority number first, FIFO within one.

A lane keeps the priority levels in use in a heap and, per level, its
entries in push order: a level that has held one entry at a time keeps it
alone (``singles``), one that has held more keeps a deque (``fifos``).
Push and pop are O(1), plus O(log levels) when a level is added or
dropped. A level that empties is dropped the next time the lane is read
or a level is added; until then a push of its priority fills it again, so
a queue drained as fast as it fills does not add and drop its level for
every task, and only the first level is ever empty. So many distinct priorities (a producer
that uses priority as a deadline, say) cost an entry and a heap slot per
level, not a deque (760 bytes) each, and adding a level costs the same at
any number of levels.

Each push gives the task a new ``seq`` from the node's one counter: it
orders lanes against each other (the task that became ready first wins a
tie of priorities) and marks the entry. Removal is lazy: an entry whose
``seq`` is no longer its task's, or whose task is no longer READY, is
skipped when popped (and dropped by :meth:`Lane.compact`).
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Iterable, Iterator

from miyaq.runtime.heap import untrack

from .task import READY, Collector, Task, out_of_sight

Entry = tuple[int, Task]

_SPENT: Entry = (-1, Task("", "", None, b""))
"""What a level of one entry holds once that entry is popped (never live:
its seq is not its task's): the level is empty, and dropped when next read."""


def _live(entry: Entry) -> bool:
    """Whether ``entry`` still stands for its task: its last push, and the task READY."""
    return entry[0] == entry[1].seq and entry[1].state == READY


class Lane:
    __slots__ = ("name", "levels", "fifos", "singles", "count", "entries", "seq")

    def __init__(self, name: str, seq: Iterator[int] | None = None) -> None:
        self.name = name
        self.seq = seq if seq is not None else itertools.count(1)
        self.levels: list[int] = []    # a heap of the priorities in use: each in fifos or in singles, once
        self.fifos: dict[int, deque[Entry]] = {}   # levels that held two entries or more at once
        self.singles: dict[int, Entry] = {}        # the other levels: their one entry (or _SPENT)
        self.count = 0     # live READY tasks (maintained by the engine)
        self.entries = 0   # entries held, stale ones included

    def push(self, task: Task) -> None:
        task.seq = next(self.seq)
        prio = task.priority
        entry = (task.seq, task)
        if Collector.untracking:
            # A backlog of a million ready tasks, never leased, was a million
            # tasks and entries a full collection walked: out of its sight
            # with the node's other tasks (miyaq.store.task, "Collector").
            out_of_sight(task)
            untrack(entry)
        fifo = self.fifos.get(prio)
        if fifo is not None:
            fifo.append(entry)
        else:
            self._into_level(prio, entry, False)
        self.entries += 1

    def _drop_empty_first(self) -> None:
        """Drop the first level if a pop emptied it, before a new level is
        added (which may go before it): so only the first level is ever empty."""
        prio = self.levels[0]
        fifo = self.fifos.get(prio)
        if fifo is not None:
            if fifo:
                return
            del self.fifos[prio]
        elif self.singles[prio] is _SPENT:
            del self.singles[prio]
        else:
            return
        heapq.heappop(self.levels)

    def head(self) -> Task | None:
        """The task :meth:`pop` would take, after dropping the stale entries
        and the empty levels before it (the live-entry test inline: the hot path)."""
        levels = self.levels
        while levels:
            prio = levels[0]
            fifo = self.fifos.get(prio)
            if fifo is not None:
                while fifo:
                    seq, task = fifo[0]
                    if seq == task.seq and task.state == READY:
                        return task
                    fifo.popleft()
                    self.entries -= 1
                del self.fifos[prio]
            else:
                single = self.singles[prio]
                seq, task = single
                if seq == task.seq and task.state == READY:
                    return task
                if single is not _SPENT:
                    self.entries -= 1
                del self.singles[prio]
            heapq.heappop(levels)
        return None

    def pop(self) -> Task | None:
        """Take the first live entry's task (:meth:`head`, which drops the
        stale entries and empty levels before it), its entry out of its level."""
        task = self.head()
        if task is None:
            return None
        prio = self.levels[0]
        fifo = self.fifos.get(prio)
        if fifo is not None:
            fifo.popleft()
        else:
            self.singles[prio] = _SPENT
        self.entries -= 1
        return task

    def unpop(self, task: Task) -> None:
        """Put back at the front of its level a task :meth:`pop` just took
        (still READY, its ``seq`` unchanged): the lane is as before the pop.
        Several go back in the reverse order of their pops."""
        prio = task.priority
        entry = (task.seq, task)
        if Collector.untracking:
            untrack(entry)
        fifo = self.fifos.get(prio)
        if fifo is not None:
            fifo.appendleft(entry)
        else:
            self._into_level(prio, entry, True)
        self.entries += 1

    def _into_level(self, prio: int, entry: tuple[int, Task], first: bool) -> None:
        """Put ``entry`` in level ``prio``, which has no FIFO yet: as its
        single entry (a new level, or one whose single was spent), or, beside
        the single one there, in a FIFO made for the two -- ``entry`` first
        if ``first`` (:meth:`unpop`), else last (:meth:`push`)."""
        singles = self.singles
        single = singles.get(prio)
        if single is None:
            if self.levels:
                self._drop_empty_first()
            singles[prio] = entry
            heapq.heappush(self.levels, prio)
        elif single is _SPENT:
            singles[prio] = entry
        else:
            del singles[prio]
            fifo = self.fifos[prio] = deque((entry, single) if first else (single, entry))
            if Collector.untracking:
                untrack(fifo)       # holds entries of tasks only: no cycle through it

    def compact(self) -> int:
        """Rebuild the levels without stale entries or empty levels; returns how many entries went."""
        before = self.entries
        fifos: dict[int, deque[Entry]] = {}
        singles = {prio: entry for prio, entry in self.singles.items() if _live(entry)}
        for prio, fifo in self.fifos.items():
            live = deque(e for e in fifo if _live(e))
            if len(live) > 1:
                fifos[prio] = live
            elif live:
                singles[prio] = live[0]
        self.fifos, self.singles = fifos, singles
        self.levels = list(fifos) + list(singles)
        heapq.heapify(self.levels)
        self.entries = sum(len(fifo) for fifo in fifos.values()) + len(singles)
        return before - self.entries

    def queued(self) -> set[str]:
        """Ids of the tasks this lane would hand out (O(n): for checks, not the hot path)."""
        ids = {entry[1].id for entry in self.singles.values() if _live(entry)}
        ids.update(entry[1].id for fifo in self.fifos.values() for entry in fifo if _live(entry))
        return ids


class ReadyQueues:
    """All lanes of a node, created on first use."""

    def __init__(self, seq: Iterator[int] | None = None) -> None:
        self.lanes: dict[str, Lane] = {}
        self.seq = seq if seq is not None else itertools.count(1)   # shared with the engine

    def lane(self, queue: str) -> Lane:
        lane = self.lanes.get(queue)
        if lane is None:
            lane = self.lanes[queue] = Lane(queue, self.seq)
        return lane

    def push(self, task: Task) -> None:
        self.lane(task.lane).push(task)

    def pop(self, queues: Iterable[str]) -> Task | None:
        """The next task across the lanes ``queues``: lowest (priority, seq) wins."""
        best: Task | None = None
        best_lane: Lane | None = None
        for name in queues:
            lane = self.lanes.get(name)
            if lane is None or not lane.count:
                continue
            task = lane.head()
            if task is None:
                continue
            if best is None or (task.priority, task.seq) < (best.priority, best.seq):
                best, best_lane = task, lane
        if best_lane is None:
            return None
        return best_lane.pop()

    def unpop(self, tasks: list[Task]) -> None:
        """Put back, in their lanes' places, tasks :meth:`pop` just took in
        this order (none made ready or popped since): see :meth:`Lane.unpop`."""
        for task in reversed(tasks):
            self.lane(task.lane).unpop(task)

    def peek(self, queues: Iterable[str]) -> Task | None:
        """The task :meth:`pop` would take across the lanes ``queues``, left
        in its lane. The same choice as ``pop``'s, written out again: ``pop``
        runs for every task dispatched, and a shared helper would cost it a
        call each."""
        best: Task | None = None
        for name in queues:
            lane = self.lanes.get(name)
            if lane is None or not lane.count:
                continue
            task = lane.head()
            if task is not None and (best is None or (task.priority, task.seq) < (best.priority, best.seq)):
                best = task
        return best

    def has_ready(self, queues: Iterable[str]) -> bool:
        lanes = self.lanes
        return any((lane := lanes.get(q)) is not None and lane.count > 0 for q in queues)
