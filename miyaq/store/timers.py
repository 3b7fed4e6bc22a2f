"""Task timers: a precise heap for what is due soon, coarse buckets for the rest.

Each task has at most one armed timer, ``task.timer_at`` (None: disarmed).
Arming or cancelling only sets ``timer_at``; entries left behind are stale
and skipped when they surface, so cancelling never searches (O(1)).

* **Near** (due within ``NEAR`` seconds): a heap of ``(when, task.seq, task)``,
  live while ``task.timer_at is when``; O(log n) to arm; timers fire in time
  order, ties in ``seq`` (submit) order. Two entries tie on both only for
  the same task, and then compare equal without comparing the task. A
  stale entry comes back to life when its task is armed again at the very
  same float object (its ``expires``, after a lost lease made it ready
  again): of the timers due at one instant, that task's may then fire in
  its earlier turn -- the order among same-instant timers only (the
  engine's model test found it; no rule depends on that order).
* **Far**: a timer further out goes into a bucket -- a plain list of tasks
  covering ``[start, start + width)``, where ``width`` is a power of two
  about a sixteenth of the delay (so a million timers spread over a day or a
  year make a few dozen buckets) -- O(1) to arm, 8 bytes a timer instead of
  a 64-byte heap entry: delayed tasks are what a node holds most of. A
  bucket comes ``NEAR`` seconds before its start: each task whose timer still
  falls in it is armed again, into the near heap or a finer bucket, so a
  timer moves at most about log2(delay) times before it fires. A task
  armed into a bucket waits: it is taken out of the cycle collector's
  sight (:func:`miyaq.store.task.out_of_sight`, unless it runs: a lease's
  timer), and so is the bucket's list (it holds only tasks, which never
  refer to it: :func:`miyaq.runtime.heap.untrack`), so a full collection
  walks neither a million delayed tasks nor their references. The near
  heap's entries stay tracked: the timers due within ``NEAR``, a few
  seconds' worth.

:meth:`next_due` answers the earliest time armed into the heap or a bucket
(early only when that timer was cancelled: the caller then finds nothing
due and asks again). A bucket is emptied before that time, never after, so
no timer fires late -- unless a bucket holds more than a few calls' worth
(``4 * limit`` a call of :meth:`pop_due`) or the caller comes late: then
the due timers fire over several calls, still in time order (no heap
entry fires while a bucket holds an earlier timer). Times are wall-clock
seconds, like the engine's ``now``.
"""
from __future__ import annotations

import heapq
import time
from typing import Iterator

from miyaq.runtime.heap import untrack

from .task import Task, out_of_sight

NEAR = 2.0            # seconds: timers due sooner go straight into the heap
MIN_WIDTH_LOG2 = 1    # the finest bucket is 2 s wide


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Task]] = []
        self._buckets: dict[tuple[float, int], list[Task]] = {}   # (start, log2 width) -> tasks
        self._starts: list[tuple[float, int]] = []                # heap of the buckets' keys
        self._mins: dict[tuple[float, int], float] = {}           # earliest time armed into each bucket
        self._min_heap: list[tuple[float, tuple[float, int]]] = []  # (that time, bucket), lazily cleaned
        self._far = 0                                             # entries in buckets, stale ones too
        self.now = time.time()      # the latest time a caller gave (only sizes buckets)
        self._last: tuple[float, float, tuple[float, int], list[Task]] | None = None  # last bucket armed

    def arm(self, task: Task, when: float, now: float | None = None) -> None:
        """Arm ``task``'s one timer for ``when`` (replacing any). ``now`` only
        chooses between heap and bucket: a stale one costs a move, never a
        late timer (a bucket never starts after its timers)."""
        task.timer_at = when
        if now is not None:
            self.now = now
        last = self._last
        if last is not None and last[0] <= when < last[1]:
            # The bucket of the previous far timer (leases: now + the same timeout).
            key, bucket = last[2], last[3]
        else:
            found = self._bucket_of(when)
            if found is None:
                heapq.heappush(self._heap, (when, task.seq, task))
                return
            key = found
            existing = self._buckets.get(key)
            if existing is None:
                bucket = self._buckets[key] = []
                untrack(bucket)
                heapq.heappush(self._starts, key)
            else:
                bucket = existing
            self._last = (key[0], key[0] + (1 << key[1]), key, bucket)
        bucket.append(task)
        out_of_sight(task)
        self._far += 1
        if when < self._mins.get(key, when + 1.0):
            self._mins[key] = when
            heapq.heappush(self._min_heap, (when, key))

    def _bucket_of(self, when: float) -> tuple[float, int] | None:
        """The bucket (start, log2 width) for a timer at ``when``, or None for
        the heap: it is due soon, or its bucket would be emptied at once."""
        delay = when - self.now
        if delay < NEAR:
            return None
        shift = max(MIN_WIDTH_LOG2, int(delay).bit_length() - 4)
        width = float(1 << shift)
        start = when // width * width
        if start - NEAR <= self.now:
            return None
        return (start, shift)

    @staticmethod
    def cancel(task: Task) -> None:
        task.timer_at = None

    def _bring_near(self, now: float, limit: int) -> None:
        """Re-arm the tasks of buckets that start within NEAR of ``now``
        (about ``limit`` tasks a call; the rest stay for the next one).

        A bucket's tasks are taken from the end of its list, so a call costs
        what it moves, not what the bucket holds (before 2026-12-05, each call
        copied the rest of the list: a burst of n timers in one bucket cost
        O(n**2 / limit)). A bucket partly moved keeps its recorded earliest
        time (``_mins``) until it is empty: :meth:`pop_due` fires nothing
        from the heap at or after it meanwhile."""
        starts = self._starts
        moved = 0
        if starts and starts[0][0] - NEAR <= now:
            self._last = None       # buckets are about to change
        while starts and starts[0][0] - NEAR <= now and moved < limit:
            key = starts[0]
            start, shift = key
            end = start + (1 << shift)
            tasks = self._buckets[key]
            count = min(len(tasks), limit - moved)
            take = tasks[len(tasks) - count:]
            del tasks[len(tasks) - count:]
            if not tasks:
                heapq.heappop(starts)
                del self._buckets[key]
                del self._mins[key]
            self._far -= count
            moved += count
            seen: set[int] = set()     # a task armed twice into this bucket moves once (per call)
            for task in take:
                when = task.timer_at
                if when is not None and start <= when < end and id(task) not in seen:
                    seen.add(id(task))
                    self.arm(task, when, now)

    def _held_min(self) -> float | None:
        """The earliest time armed into a bucket that still holds tasks (a
        lower bound of what the buckets hold: it stays while the task that
        set it is cancelled, moved or taken out of a bucket still moving)."""
        mins, min_heap = self._mins, self._min_heap
        while min_heap and mins.get(min_heap[0][1]) != min_heap[0][0]:
            heapq.heappop(min_heap)
        return min_heap[0][0] if min_heap else None

    def next_due(self) -> float | None:
        """When the earliest timer fires, or None. Exact unless the earliest
        timer armed into a bucket was cancelled or moved since: then early
        (the caller finds nothing due and asks again)."""
        heap = self._heap
        while heap and heap[0][2].timer_at is not heap[0][0]:
            heapq.heappop(heap)
        due = heap[0][0] if heap else None
        far = self._held_min()
        if far is not None:
            due = far if due is None else min(due, far)
        return due

    def pop_due(self, now: float, limit: int) -> Iterator[Task]:
        """Yield up to ``limit`` tasks whose timer is due, disarming each, in
        time order (ties in ``seq`` order) across calls.

        The heap is in time order, the buckets are not (a bucket's list is in
        arming order): so no heap entry fires at or after the earliest time a
        bucket still holds (:meth:`_held_min`); that bucket is due or nearly,
        and it is moved, ``4 * limit`` tasks a call, until it is empty.
        Before 2026-12-05, a loop that ran late with a bucket of more than
        ``4 * limit`` timers fired the moved part before the rest: tasks
        became ready up to a bucket's width out of eta order. A call that
        only moves fires nothing, and :meth:`next_due` is then at or before
        ``now``: the caller calls again (after letting others run)."""
        self.now = now
        self._bring_near(now, 4 * limit)
        held = self._held_min()
        heap = self._heap
        n = 0
        while heap and n < limit:
            when, _, task = heap[0]
            if task.timer_at is not when:
                heapq.heappop(heap)
                continue
            if when > now or (held is not None and when >= held):
                return
            heapq.heappop(heap)
            task.timer_at = None
            n += 1
            yield task

    def __len__(self) -> int:
        """Entries held, stale ones included (see :meth:`compact`)."""
        return len(self._heap) + self._far

    def armed(self) -> dict[str, float]:
        """Task id -> when its live timer fires: an entry of the heap or a
        bucket that is still the task's (O(n): for checks, not the hot path)."""
        out = {task.id: when for when, _, task in self._heap if task.timer_at is when}
        for (start, shift), tasks in self._buckets.items():
            end = start + (1 << shift)
            for task in tasks:
                when = task.timer_at
                if when is not None and start <= when < end:
                    out[task.id] = when
        return out

    def compact(self) -> None:
        """Drop stale entries and emptied buckets (called when many are held)."""
        self._heap = [e for e in self._heap if e[2].timer_at is e[0]]
        heapq.heapify(self._heap)
        buckets: dict[tuple[float, int], list[Task]] = {}
        mins: dict[tuple[float, int], float] = {}
        for key, tasks in self._buckets.items():
            start, end = key[0], key[0] + (1 << key[1])
            seen: set[int] = set()
            live = []
            for task in tasks:
                when = task.timer_at
                if when is not None and start <= when < end and id(task) not in seen:
                    seen.add(id(task))
                    live.append(task)
                    if when < mins.get(key, end):
                        mins[key] = when
            if live:
                untrack(live)
                buckets[key] = live
        self._buckets, self._mins = buckets, mins
        self._last = None
        self._starts = list(buckets)
        heapq.heapify(self._starts)
        self._min_heap = [(when, key) for key, when in mins.items()]
        heapq.heapify(self._min_heap)
        self._far = sum(len(tasks) for tasks in buckets.values())
