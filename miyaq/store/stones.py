"""Tombstones: what a table keeps of a finished task (:class:`Tombstone`),
the map of them by id, oldest first, stored as plain tuples
(:class:`Tombstones`: the cycle collector untracks those, docs/performance.md,
"Garbage collection"), and what one counts in bytes (:func:`stone_bytes`).
Used by :class:`~miyaq.store.table.TaskTable`, which bounds them.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from .task import Task
from .task_bytes import error_bytes


def stone_bytes(result: bytes | None, error: Any) -> int:
    """What a tombstone counts in :attr:`TaskTable.result_bytes`: its result's
    bytes and its error's (:func:`error_bytes`)."""
    return (len(result) if result else 0) + (error_bytes(error) if error else 0)


class Tombstone(NamedTuple):
    """What remains of a finished task: enough to answer status and result,
    and to refuse a late message or resubmission of the same id."""

    id: str
    queue: str
    state: str
    result: bytes | None
    error: Any
    finished: float
    key: str | None
    attempt: int

    @classmethod
    def of(cls, task: Task, state: str, result: bytes | None, finished: float) -> "Tombstone":
        return _as_stone((task.id, task.queue, state, result, task.error, finished, task.key, task.attempt))

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"id": self.id, "queue": self.queue, "state": self.state,
                                "finished": self.finished, "attempt": self.attempt}
        if self.key is not None:
            info["key"] = self.key
        if self.error is not None:
            info["error"] = self.error
        return info


def _as_stone(row: tuple[Any, ...]) -> Tombstone:
    """A stored row as a :class:`Tombstone`, made in C (``_make`` and the
    named tuple's ``__new__`` are Python calls: this is on every finish)."""
    return _tuple_new(Tombstone, row)


_tuple_new: Any = tuple.__new__


class Tombstones(Mapping[str, Tombstone]):
    """Tombstones by task id, oldest first, each stored as a plain tuple (the
    collector untracks those: see the module doc) and handed out as a
    :class:`Tombstone`."""

    def __init__(self) -> None:
        self._rows: OrderedDict[str, tuple[Any, ...]] = OrderedDict()

    def __getitem__(self, task_id: str) -> Tombstone:
        return _as_stone(self._rows[task_id])

    def get(self, task_id: str, default: Any = None) -> Any:
        row = self._rows.get(task_id)
        return default if row is None else _as_stone(row)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def put(self, stone: Tombstone) -> None:
        """Keep ``stone`` as the newest (replacing one of the same id)."""
        self.put_row(tuple(stone))    # a plain tuple: the collector untracks it

    def put_row(self, row: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Keep the tombstone ``row`` (a plain tuple of :class:`Tombstone`'s
        fields) as the newest; the row it replaces (same id), if any. One
        lookup of the id: a task's end, on every holder, comes here."""
        rows = self._rows
        old = rows.pop(row[0], None)
        rows[row[0]] = row
        return old

    def pop(self, task_id: str) -> Tombstone | None:
        """Remove and return the tombstone of ``task_id`` (None if there is none)."""
        row = self._rows.pop(task_id, None)
        return None if row is None else _as_stone(row)

    def oldest(self) -> Tombstone | None:
        for row in self._rows.values():
            return _as_stone(row)
        return None

    def newest(self, limit: int) -> Iterator[Tombstone]:
        """The ``limit`` newest, newest first (a tombstone is made only for those)."""
        rows = self._rows
        for task_id in itertools.islice(reversed(rows), limit):
            yield _as_stone(rows[task_id])

    def snapshot(self) -> Iterator[Tombstone]:
        """Every tombstone as it is now, oldest first, read lazily: later changes
        do not show (for a writer that yields to other greenlets as it goes)."""
        return map(_as_stone, list(self._rows.values()))

    def pop_oldest(self) -> Tombstone:
        """Remove and return the oldest (KeyError when there is none)."""
        return _as_stone(self._rows.popitem(last=False)[1])

    def discard_oldest(self) -> None:
        """Remove the oldest, already read with :meth:`oldest` (KeyError when there is none)."""
        self._rows.popitem(last=False)
