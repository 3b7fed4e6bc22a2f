"""The task table: live tasks by id, dedup keys, tombstones and dead letters.

Everything here is bounded. Live tasks are capped by the engine (BUSY beyond
``max_tasks``, or ``max_bytes`` of payloads); tombstones (finished tasks with
their outcome and result) by count, by age and, at twice
``max_result_bytes`` of results and error text, by bytes (the engine
answers BUSY from ``max_result_bytes`` on); dead letters by count (the
oldest is dropped, and counted, when the cap is reached).

The table keeps two sums as it changes: :attr:`TaskTable.payload_bytes`
(the payloads of live and dead tasks) and :attr:`TaskTable.result_bytes`
(what its tombstones keep of their outcome: :func:`stone_bytes`, the
result's bytes plus the error's text). Before 2026-12-05 only results
counted: a tombstone made from a peer's ``F`` event or a handoff's
outcome kept the peer's error text (up to 16 strings of 16,384
characters) outside every byte bound -- 1,000 such events held 251 MiB
while ``result_bytes`` said 0.

Tombstones are kept as plain tuples (:class:`Tombstones`), not objects: a
busy node remembers up to ``max_tombstones`` (200,000 by default) of them,
and CPython's cycle collector stops tracking a tuple of strings, numbers and
bytes, where it walks every instance of a class at each full collection
with the hub stopped (80-90 ms for 200,000 of them, against 17-26 ms as
tuples: docs/performance.md, "Garbage collection").

Tasks are out of the collector's sight too once they wait or a lease of
them ends (miyaq.store.task says when, why that is safe, and when a task
is back in sight: while it has a consumer); the dead letters from
:meth:`TaskTable.kill` on. The table's dict of live tasks is a
:class:`LiveTasks`, frozen with a node's start-up heap.
"""
from __future__ import annotations

import gc
import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from operator import attrgetter
from typing import Any, NamedTuple

from .task import EXTRA_FIELDS, Collector, Extra, Task, out_of_sight


def error_bytes(error: Any) -> int:
    """The bytes of a task's error (a map of names to scalars,
    :func:`miyaq.protocol.failurespec.check_error`): its names and string
    values as UTF-8, 8 bytes per other value. 0 for None. What a tombstone
    counts in ``result_bytes``, and what ``ERROR_BYTES`` bounds where an
    error enters (:func:`miyaq.protocol.failurespec.cut_error`)."""
    if not error:
        return 0
    if not isinstance(error, dict):
        return _text_bytes(error) if isinstance(error, str) else 8
    size = 0
    for name, value in error.items():
        size += _text_bytes(name) if isinstance(name, str) else 8
        size += _text_bytes(value) if isinstance(value, str) else 8
    return size


def _text_bytes(text: str) -> int:
    # ASCII (the usual error text) is told in O(1); anything else is measured as UTF-8.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def stone_bytes(result: bytes | None, error: Any) -> int:
    """What a tombstone counts in :attr:`TaskTable.result_bytes`: its result's
    bytes and its error's (:func:`error_bytes`)."""
    return (len(result) if result else 0) + (error_bytes(error) if error else 0)


UNTRACK_FROM = 50_000
"""Live tasks from which a node takes tasks out of the cycle collector's
sight (:meth:`TaskTable.mind_the_collector`): a full collection walked
100,000 tracked tasks in 27-32 ms (2026-12-06), so about 15 ms at this many."""


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

_TASK_COPY = attrgetter("id", "spec", "body", "eta", "created", "state", "attempt",
                        *(f"extra.{name}" for name in EXTRA_FIELDS))
"""A task's state as one tuple, read in C: every field its ``A`` record holds
(the :class:`~miyaq.store.task.Spec` is never changed once made, so a
reference is a copy; the :class:`~miyaq.store.task.Extra` is changed in
place, so its fields are copied)."""


def _task_from_copy(row: tuple[Any, ...]) -> Task:
    """A detached task (in no table, never leased) holding a :data:`_TASK_COPY` row."""
    task = Task.of(row[0], row[1], row[2], row[3], row[4])
    task.state, task.attempt = row[5], row[6]
    extra = task.extra = Extra()
    for name, value in zip(EXTRA_FIELDS, row[7:]):
        setattr(extra, name, value)
    return task


class TableSnapshot(NamedTuple):
    """The table's tasks and tombstones as they were when it was taken
    (:meth:`TaskTable.snapshot`), read lazily: later changes to the table do not show."""

    tasks: Iterator[Task]            # copies of the live tasks, then of the dead ones
    tombstones: Iterator[Tombstone]  # oldest first


TASK_BYTES = 400
"""About what a live task costs beyond its payload (362 bytes a delayed task measured, 2026-12-06)."""
STONE_BYTES = 200
"""About what a tombstone costs beyond its result (a tuple of a few strings and numbers)."""


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


class LiveTasks(dict[str, Task]):
    """Live tasks by id: a plain dict in all but its type, which CPython
    tracks from the moment it is made. A plain dict is untracked while it
    holds no container and tracked from its first task on: in a node started
    empty that is after the start-up freeze (:mod:`miyaq.runtime.heap`), so
    a full collection walked its million entries every time (30-35 ms with
    the tasks themselves untracked). Tracked from the start, the table made
    during start-up is frozen with the rest of it, and walked never."""

    __slots__ = ()


class TaskTable:
    def __init__(self, max_tombstones: int, tombstone_ttl: float, max_dead: int,
                 max_result_bytes: int | None = None) -> None:
        self.live: dict[str, Task] = LiveTasks()         # frozen with the start-up heap (LiveTasks)
        self.keys: dict[str, str] = {}                      # key -> task id (live or tombstone)
        self.tombstones = Tombstones()
        self.dead: OrderedDict[str, Task] = OrderedDict()
        self.max_tombstones = max_tombstones
        self.tombstone_ttl = tombstone_ttl
        self.max_dead = max_dead
        # Past this many bytes of results, the oldest tombstones are forgotten.
        self.result_ceiling = 2 * max_result_bytes if max_result_bytes is not None else None
        self.dead_dropped = 0
        self.results_dropped = 0      # tombstones forgotten early for the result ceiling
        self.payload_bytes = 0        # payloads of the live and dead tasks
        self.result_bytes = 0         # results and error text the tombstones keep (stone_bytes)

    # -- live -------------------------------------------------------------
    def add(self, task: Task) -> None:
        self.live[task.id] = task
        self.payload_bytes += len(task.body)
        if task.key is not None:
            self.keys[task.key] = task.id

    def remove(self, task: Task) -> None:
        """Take a live or dead task out of the table (no tombstone)."""
        if self.live.pop(task.id, None) is not None or self.dead.pop(task.id, None) is not None:
            self.payload_bytes -= len(task.body)

    def get(self, task_id: str) -> Task | None:
        return self.live.get(task_id)

    def snapshot(self) -> TableSnapshot:
        """Every live and dead task and every tombstone as they are now, for a
        writer that yields to other greenlets as it goes (log compaction).

        Taken at once, without yielding: a tuple of each task's fields, read in
        C (about 0.4 µs a task, against about 4 µs to build and encode its
        record; the cycle collector paused meanwhile), and a list of the
        tombstones' rows (already immutable). The
        task copies are made as the iterator is read; they are detached (no
        lease, no timer, in no table) and hold what an ``A`` record holds."""
        collecting = gc.isenabled()
        gc.disable()    # else it walks the heap every few thousand tuples: 4-5 times the copy's time
        try:
            rows = list(map(_TASK_COPY, itertools.chain(self.live.values(), self.dead.values())))
            stones = self.tombstones.snapshot()
        finally:
            if collecting:
                gc.enable()
        return TableSnapshot(map(_task_from_copy, rows), stones)

    # -- tombstones -------------------------------------------------------
    def bury(self, task: Task, state: str, result: bytes | None, now: float) -> Tombstone:
        """Replace a live or dead task (or nothing: a ghost) by its tombstone."""
        self.remove(task)
        error = task.error
        row = (task.id, task.queue, state, result, error, now, task.key, task.attempt)
        old = self.tombstones.put_row(row)
        if old is not None:
            self.result_bytes -= stone_bytes(old[3], old[4])     # its result and error
        if result or error:
            self.result_bytes += stone_bytes(result, error)
        while len(self.tombstones) > self.max_tombstones:
            self._drop_oldest()
        ceiling = self.result_ceiling
        if ceiling is not None and self.result_bytes > ceiling:
            while self.result_bytes > ceiling and len(self.tombstones) > 1:
                self._drop_oldest()
                self.results_dropped += 1
        return _as_stone(row)

    def _drop_oldest(self) -> None:
        self._forget(self.tombstones.pop_oldest())

    def tombstone(self, task_id: str) -> Tombstone | None:
        return self.tombstones.get(task_id)

    def approximate_bytes(self) -> int:
        """About how much memory the store holds: its payloads and results,
        and a few hundred bytes for each task, dead letter and tombstone
        (:data:`TASK_BYTES`, :data:`STONE_BYTES`). For
        :class:`miyaq.runtime.heap.AllocatorTrim`, which only compares it
        with itself."""
        return (self.payload_bytes + self.result_bytes + TASK_BYTES * (len(self.live) + len(self.dead))
                + STONE_BYTES * len(self.tombstones))

    def mind_the_collector(self) -> bool:
        """Take tasks out of the cycle collector's sight while this table
        holds ``UNTRACK_FROM`` live tasks or more, not once it holds fewer
        than half of that (:class:`miyaq.store.task.Collector`); whether it
        does now. Called by the node's housekeeping."""
        live = len(self.live)
        if live >= UNTRACK_FROM:
            Collector.untracking = True
        elif live < UNTRACK_FROM // 2:
            Collector.untracking = False
        return Collector.untracking

    def sweep(self, now: float, limit: int = 10_000) -> int:
        """Drop tombstones older than the ttl (oldest first). Returns how many."""
        cutoff = now - self.tombstone_ttl
        dropped = 0
        while dropped < limit:
            stone = self.tombstones.oldest()
            if stone is None or stone.finished > cutoff:
                break
            self.tombstones.discard_oldest()
            self._forget(stone)
            dropped += 1
        return dropped

    def _forget(self, stone: Tombstone) -> None:
        self.result_bytes -= stone_bytes(stone.result, stone.error)
        if stone.key is not None and self.keys.get(stone.key) == stone.id:
            del self.keys[stone.key]

    # -- dedup keys -------------------------------------------------------
    def key_finished(self, key: str, task_id: str) -> None:
        """A tombstone made without its task passing through this table (a
        restored one, another holder's finish of a copy never seen here)
        holds ``key`` -- unless a live or dead task holds it: a task that
        ended never takes a key from one that has not."""
        holder = self.keys.get(key)
        if holder is None or (holder not in self.live and holder not in self.dead):
            self.keys[key] = task_id

    def release_key(self, key: str, task_id: str) -> None:
        """``task_id`` no longer holds ``key`` (if it did)."""
        if self.keys.get(key) == task_id:
            del self.keys[key]

    def holder_of_key(self, key: str, now: float, window: float) -> str | None:
        """The id holding ``key``: a live or dead task, or one finished less
        than ``window`` seconds ago."""
        task_id = self.keys.get(key)
        if task_id is None:
            return None
        if task_id in self.live or task_id in self.dead:
            return task_id
        stone = self.tombstones.get(task_id)
        if stone is not None and stone.finished + window > now:
            return task_id
        del self.keys[key]
        return None

    # -- dead letters -----------------------------------------------------
    def kill(self, task: Task) -> Task | None:
        """Move a task to the dead-letter queue, out of the cycle collector's
        sight (it waits: miyaq.store.task); returns a task evicted to make room."""
        self.live.pop(task.id, None)
        out_of_sight(task)
        self.dead[task.id] = task
        if len(self.dead) > self.max_dead:
            evicted = self.dead.popitem(last=False)[1]
            self.payload_bytes -= len(evicted.body)
            self.dead_dropped += 1
            if evicted.key is not None and self.keys.get(evicted.key) == evicted.id:
                del self.keys[evicted.key]
            return evicted
        return None

    def purge(self, task_id: str) -> Task | None:
        """Drop a dead letter for good; returns it (None if there was none)."""
        task = self.dead.pop(task_id, None)
        if task is not None:
            self.payload_bytes -= len(task.body)
            if task.key is not None and self.keys.get(task.key) == task.id:
                del self.keys[task.key]
        return task

    def revive(self, task_id: str) -> Task | None:
        task = self.dead.pop(task_id, None)
        if task is not None:
            self.live[task.id] = task
        return task

    def iter_dead(self, queue: str | None = None) -> Iterator[Task]:
        for task in self.dead.values():
            if queue is None or task.queue == queue:
                yield task
