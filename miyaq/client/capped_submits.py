"""The sent submits that fail at their deadline, not at an acknowledgement's
timeout (:class:`CappedSubmits`, one a
:class:`~miyaq.client.submits.SubmitPipeline`).

A sent submit whose deadline comes before its acknowledgement is overdue
(every one, when ``submit_timeout`` is at most ``ack_timeout``) is *capped*:
it fails at its deadline. The capped are a heap by deadline, so
:meth:`CappedSubmits.soonest` reads its head and
:meth:`CappedSubmits.pop_due` pops only those due; one acknowledged (or sent
again, or failed) meanwhile leaves its entry behind, passed over when it
comes to the head, and the heap is rebuilt when such entries outnumber the
unacknowledged submits. Before 2026-12-05 both walked every capped submit:
with ``submit_timeout=4`` and a window of 10,000 an asyncio producer spent
71 µs of CPU a submit instead of 8.

Constraints: an entry is live while its submit is the one unacknowledged
under its id (the pipeline's ``pending[id]`` is it). A submit's deadline
never changes, and one capped once is capped at every later try: one entry
a submit (:attr:`Pending.in_capped <miyaq.client.pending.Pending>`). Like
the pipeline, it touches no socket and no clock, and is called only by
whoever holds the client's core.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Iterator

from .pending import Pending

STALE_SLACK = 64
"""Entries of submits no longer capped the capped heap may hold beyond as
many as the unacknowledged submits before it is rebuilt."""


class CappedSubmits:
    """The capped submits of one pipeline, a heap of (deadline, sequence,
    submit) (the module's docstring). ``pending``: the pipeline's
    unacknowledged submits by id, the same dict for the heap's life (it
    decides which entries are live). Its length counts entries, live or not;
    :attr:`heap` is read-only outside, for a caller's check that there is
    none without a call (the pipeline's, after every submit and message)."""

    def __init__(self, pending: dict[str, Pending]) -> None:
        self._pending = pending
        self.heap: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, p: Pending) -> None:
        """``p`` was sent, and its deadline comes before its acknowledgement
        is overdue: it fails at that deadline unless acknowledged (a submit
        with an entry already keeps that one)."""
        if not p.in_capped:
            p.in_capped = True
            heapq.heappush(self.heap, (p.deadline, next(self._seq), p))

    def soonest(self) -> float | None:
        """The earliest deadline of a live entry (None: there is none):
        amortised O(log n), entries no longer live are dropped from the head."""
        if not self.heap:
            return None
        self.bound()
        heap = self.heap
        pending = self._pending
        while heap and not _live(heap[0][2], pending):
            heapq.heappop(heap)[2].in_capped = False
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> Iterator[Pending]:
        """Pop every entry whose deadline is at most ``now``, earliest first,
        yielding the submits still live: each is to fail now (the caller
        takes it out of ``pending`` before the next is popped)."""
        while self.heap and self.heap[0][0] <= now:
            p = heapq.heappop(self.heap)[2]
            p.in_capped = False
            if _live(p, self._pending):
                yield p               # else acknowledged, sent again or failed meanwhile

    def bound(self) -> None:
        """Rebuild the heap when entries no longer live outnumber the
        unacknowledged submits (O(n), after at least n entries went stale:
        amortised O(1) a submit)."""
        heap, pending = self.heap, self._pending
        if len(heap) <= 2 * len(pending) + STALE_SLACK:
            return
        kept = []
        for entry in heap:
            if _live(entry[2], pending):
                kept.append(entry)
            else:
                entry[2].in_capped = False
        heapq.heapify(kept)
        self.heap = kept

    def clear(self) -> None:
        """Drop every entry (nothing is unacknowledged: none is live)."""
        for entry in self.heap:
            entry[2].in_capped = False
        self.heap.clear()


def _live(p: Pending, pending: dict[str, Pending]) -> bool:
    """Whether ``p``'s entry in the capped heap stands: ``p`` is the
    submit unacknowledged under its id."""
    return pending.get(p.wire["id"]) is p
