"""A timer heap with lazy cancellation: O(log n) to arm, O(1) to cancel.

Each task has at most one armed timer. Re-arming or cancelling bumps the
task's ``timer_gen``; stale heap entries are skipped when they surface, so
cancelling never searches the heap. Entries are ``(when, seq, gen, task)``.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Iterator

from .task import Task


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Task]] = []
        self._seq = itertools.count()

    def arm(self, task: Task, when: float) -> None:
        task.timer_gen += 1
        heapq.heappush(self._heap, (when, next(self._seq), task.timer_gen, task))

    @staticmethod
    def cancel(task: Task) -> None:
        task.timer_gen += 1

    def next_due(self) -> float | None:
        """When the earliest live timer fires, or None."""
        heap = self._heap
        while heap and heap[0][2] != heap[0][3].timer_gen:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float, limit: int) -> Iterator[Task]:
        """Yield up to ``limit`` tasks whose timer is due, disarming each."""
        heap = self._heap
        n = 0
        while heap and n < limit:
            when, _, gen, task = heap[0]
            if gen != task.timer_gen:
                heapq.heappop(heap)
                continue
            if when > now:
                return
            heapq.heappop(heap)
            task.timer_gen += 1
            n += 1
            yield task

    def __len__(self) -> int:
        return len(self._heap)

    def compact(self) -> None:
        """Drop stale entries (called when the heap holds many of them)."""
        self._heap = [e for e in self._heap if e[2] == e[3].timer_gen]
        heapq.heapify(self._heap)
