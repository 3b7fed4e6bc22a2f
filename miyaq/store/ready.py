"""Per-queue ready structures: lower priority number first, FIFO within one.

A lane keeps one deque per priority level in use and a sorted list of those
levels, so push and pop are O(1) plus a bisect over the (few) levels. Each
push gives the task a new ``seq`` from the node's one counter: it orders
lanes against each other (the task that became ready first wins a tie of
priorities) and marks the entry. Removal is lazy: an entry whose ``seq`` is
no longer its task's, or whose task is no longer READY, is skipped when
popped.
"""
from __future__ import annotations

import bisect
import itertools
from collections import deque
from typing import Iterable, Iterator

from .task import READY, Task


class Lane:
    __slots__ = ("name", "levels", "by_level", "count", "entries", "seq")

    def __init__(self, name: str, seq: Iterator[int] | None = None) -> None:
        self.name = name
        self.seq = seq if seq is not None else itertools.count(1)
        self.levels: list[int] = []
        self.by_level: dict[int, deque[tuple[int, Task]]] = {}
        self.count = 0     # live READY tasks (maintained by the engine)
        self.entries = 0   # deque entries, stale ones included

    def push(self, task: Task) -> None:
        task.seq = next(self.seq)
        level = self.by_level.get(task.priority)
        if level is None:
            level = self.by_level[task.priority] = deque()
            bisect.insort(self.levels, task.priority)
        level.append((task.seq, task))
        self.entries += 1

    def _clean_head(self) -> tuple[int, Task] | None:
        while self.levels:
            prio = self.levels[0]
            level = self.by_level[prio]
            while level:
                seq, task = level[0]
                if seq == task.seq and task.state == READY:
                    return level[0]
                level.popleft()
                self.entries -= 1
            del self.by_level[prio]
            self.levels.pop(0)
        return None

    def compact(self) -> int:
        """Rebuild the deques without stale entries; returns how many went."""
        before = self.entries
        for prio in list(self.levels):
            live = deque(e for e in self.by_level[prio] if e[0] == e[1].seq and e[1].state == READY)
            if live:
                self.by_level[prio] = live
            else:
                del self.by_level[prio]
                self.levels.remove(prio)
        self.entries = sum(len(d) for d in self.by_level.values())
        return before - self.entries

    def queued(self) -> set[str]:
        """Ids of the tasks this lane would hand out (O(n): for checks, not the hot path)."""
        return {task.id for level in self.by_level.values() for seq, task in level
                if seq == task.seq and task.state == READY}

    def head(self) -> Task | None:
        entry = self._clean_head()
        return entry[1] if entry else None

    def pop(self) -> Task | None:
        entry = self._clean_head()
        if entry is None:
            return None
        self.by_level[self.levels[0]].popleft()
        self.entries -= 1
        return entry[1]


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

    def has_ready(self, queues: Iterable[str]) -> bool:
        lanes = self.lanes
        return any((lane := lanes.get(q)) is not None and lane.count > 0 for q in queues)
