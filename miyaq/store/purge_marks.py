"""The ids of the dead letters purged on a node, with when: :class:`PurgeMarks`.

A purge (``miyaq dead purge``, or another holder's ``P`` event) marks each
id it drops, so a stale dead copy of one -- a SYNC answer served before its
source heard of the purge, a handoff, a late REPLICATE -- is not stored
again (docs/cluster.md, "Purged dead letters stay purged"). Bounded as the
tombstones are: at most ``max_tombstones`` ids (the oldest forgotten first:
its id is then as unknown as before 2026-12-07), each for ``tombstone_ttl``
(:meth:`PurgeMarks.sweep`). Times are wall-clock seconds, as the log's
``P`` record carries them.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator


class PurgeMarks:
    """Purged dead letters' ids and when, oldest first; at most :attr:`limit` of them.

    One greenlet only (the node's hub), as the rest of the table."""

    __slots__ = ("_marks", "limit")

    def __init__(self, limit: int) -> None:
        self._marks: OrderedDict[str, float] = OrderedDict()
        #: Marks kept at most (the table's ``max_tombstones``, at least 1).
        self.limit = max(limit, 1)

    def __len__(self) -> int:
        return len(self._marks)

    def __bool__(self) -> bool:
        return bool(self._marks)

    def mark(self, task_id: str, when: float) -> None:
        """Remember that the dead letter ``task_id`` was purged at ``when``
        (wall clock), as the newest mark; past :attr:`limit` the oldest go."""
        marks = self._marks
        marks.pop(task_id, None)
        marks[task_id] = when
        while len(marks) > self.limit:
            marks.popitem(last=False)

    def was(self, task_id: str) -> bool:
        """Whether ``task_id`` is a dead letter purged here (:meth:`mark`)."""
        return task_id in self._marks if self._marks else False

    def get(self, task_id: str) -> float | None:
        """When ``task_id`` was purged, if it is marked."""
        return self._marks.get(task_id) if self._marks else None

    def forget(self, task_id: str) -> None:
        """``task_id`` is no purged dead letter any more (its id used again)."""
        if self._marks:
            self._marks.pop(task_id, None)

    def newest(self, n: int) -> list[str]:
        """The ids of the ``n`` newest marks, newest first (a SYNC answer's: miyaq.cluster.sync)."""
        return list(itertools.islice(reversed(self._marks), n))

    def items(self) -> Iterator[tuple[str, float]]:
        """Every mark (id, when), oldest first."""
        return iter(self._marks.items())

    def sweep(self, cutoff: float, limit: int) -> int:
        """Forget the marks made at ``cutoff`` or before (oldest first, at
        most ``limit`` of them); how many."""
        marks = self._marks
        n = 0
        while marks and n < limit and next(iter(marks.values())) <= cutoff:
            marks.popitem(last=False)
            n += 1
        return n
