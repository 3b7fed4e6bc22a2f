"""The task table: live tasks by id, dedup keys, tombstones and dead letters.

Everything here is bounded. Live tasks are capped by the engine (BUSY beyond
``max_tasks``, or ``max_bytes`` of payloads); tombstones (finished tasks with
their outcome and result) by count, by age and, at twice
``max_result_bytes`` of results and error text, by bytes (the engine
answers BUSY from ``max_result_bytes`` on); dead letters by count (the
oldest is dropped, and counted, when the cap is reached). The tombstones
of cancels kept ahead of their copy (:mod:`miyaq.core.cancels_ahead`) are
counted apart (:attr:`TaskTable.ahead`, at most :attr:`TaskTable.max_ahead`),
so they never push a finished task's out: ``max_tombstones`` bounds the
others. So are those made on a peer's word for a task this node has no
trace of -- another holder's end ahead of its copy, a handed-off or
resynced outcome (:mod:`miyaq.cluster.ends_ahead`; :attr:`TaskTable.ends_ahead`,
at most :attr:`TaskTable.max_ends_ahead`). Before 2026-12-06 both shared
that bound, and a peer's CANCELs, ``F`` events or outcomes of ids nobody
had pushed every finished task's tombstone out (its result, its dedup key).

The table keeps two sums as it changes: :attr:`TaskTable.payload_bytes`
(the payloads of live and dead tasks, with their webhook headers and URLs,
their keys and their errors: :func:`~miyaq.store.task_bytes.held_bytes`; an error
changes through :meth:`TaskTable.set_error`) and :attr:`TaskTable.result_bytes`
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

import itertools
from collections import OrderedDict
from collections.abc import Iterator
from operator import attrgetter
from typing import Any, NamedTuple

from miyaq.runtime.heap import collector_paused

from .stones import Tombstone, Tombstones, _as_stone, error_bytes, stone_bytes
from .task import EXTRA_FIELDS, Collector, Extra, Task, out_of_sight
from .purge_marks import PurgeMarks
from .task_bytes import held_bytes

__all__ = ["TaskTable", "Tombstone", "Tombstones", "error_bytes", "stone_bytes", "LiveTasks", "TableSnapshot"]


MAX_AHEAD = 20_000
"""Tombstones of cancels kept ahead of their copy a table keeps at most
(fewer when ``max_tombstones`` is lower: as many), beside ``max_tombstones``
others: :attr:`TaskTable.max_ahead`."""

UNTRACK_FROM = 50_000
"""Live tasks from which a node takes tasks out of the cycle collector's
sight (:meth:`TaskTable.mind_the_collector`): a full collection walked
100,000 tracked tasks in 27-32 ms (2026-12-06), so about 15 ms at this many."""


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
        #: Ids of the tombstones of cancels kept ahead of their copy
        #: (:meth:`hold_ahead`), oldest first: not counted in ``max_tombstones``.
        self.ahead: dict[str, None] = {}
        # As many as max_tombstones when made, up to MAX_AHEAD; the caller refuses more (miyaq.core.cancels_ahead).
        self.max_ahead = min(max_tombstones, MAX_AHEAD)
        #: Ids of the tombstones made on a peer's word for a task this node
        #: had no trace of (:meth:`hold_end_ahead`), oldest first: not
        #: counted in ``max_tombstones`` either.
        self.ends_ahead: dict[str, None] = {}
        # As many as max_tombstones when made; the caller refuses more (miyaq.cluster.ends_ahead).
        self.max_ends_ahead = max_tombstones
        #: Ends ahead refused because the table held ``max_ends_ahead`` of
        #: them (counted by the caller: STATUS ``tombstones_apart``).
        self.ends_ahead_refused = 0
        #: The dead letters purged here, with when: a stale dead copy of one
        #: (a SYNC answer, a handoff, a late REPLICATE) is not stored again.
        #: At most ``max_tombstones``, each for ``tombstone_ttl`` (:meth:`sweep`).
        self.purged = PurgeMarks(max_tombstones)
        self.max_tombstones = max_tombstones     # sets _stone_cap too
        self.tombstone_ttl = tombstone_ttl
        self.max_dead = max_dead
        # Past this many bytes of results, the oldest tombstones are forgotten.
        self.result_ceiling = 2 * max_result_bytes if max_result_bytes is not None else None
        self.dead_dropped = 0
        self.results_dropped = 0      # tombstones forgotten early for the result ceiling
        self.payload_bytes = 0        # payloads (and webhook headers) of the live and dead tasks: held_bytes
        self.result_bytes = 0         # results and error text the tombstones keep (stone_bytes)

    @property
    def max_tombstones(self) -> int:
        """Tombstones kept at most, the oldest dropped first, besides those
        of cancels kept ahead (:attr:`ahead`) and of ends heard ahead
        (:attr:`ends_ahead`)."""
        return self._max_tombstones

    @max_tombstones.setter
    def max_tombstones(self, value: int) -> None:
        self._max_tombstones = value
        self.purged.limit = max(value, 1)
        self._stone_cap = value + len(self.ahead) + len(self.ends_ahead)   # what bury compares with: one read

    # -- live -------------------------------------------------------------
    def add(self, task: Task) -> None:
        self.live[task.id] = task
        self.payload_bytes += held_bytes(task)
        if task.key is not None:
            self.keys[task.key] = task.id
        self.purged.forget(task.id)     # the id used again: no purged dead letter any more

    def remove(self, task: Task) -> None:
        """Take a live or dead task out of the table (no tombstone)."""
        if self.live.pop(task.id, None) is not None or self.dead.pop(task.id, None) is not None:
            self.payload_bytes -= held_bytes(task)

    def get(self, task_id: str) -> Task | None:
        return self.live.get(task_id)

    def holds(self, task: Task) -> bool:
        """Is ``task`` this table's live or dead task (counted in ``payload_bytes``)?"""
        return self.live.get(task.id) is task or self.dead.get(task.id) is task

    def set_error(self, task: Task, error: dict[str, Any] | None) -> None:
        """Give ``task`` its last failure, counting the change in
        ``payload_bytes`` when the table holds it (:func:`held_bytes` counts
        a held task's error). Every change of a held task's error goes
        through here: :func:`held_bytes` must say as the task leaves what it
        said as it came in."""
        if self.holds(task):
            self.payload_bytes += error_bytes(error) - error_bytes(task.error)
        task.error = error

    def snapshot(self) -> TableSnapshot:
        """Every live and dead task and every tombstone as they are now, for a
        writer that yields to other greenlets as it goes (log compaction).

        Taken at once, without yielding: a tuple of each task's fields, read in
        C (about 0.4 µs a task, against about 4 µs to build and encode its
        record; the cycle collector paused meanwhile), and a list of the
        tombstones' rows (already immutable). The
        task copies are made as the iterator is read; they are detached (no
        lease, no timer, in no table) and hold what an ``A`` record holds."""
        with collector_paused():    # else it walks the heap every few thousand tuples: 4-5 times the copy's time
            rows = list(map(_TASK_COPY, itertools.chain(self.live.values(), self.dead.values())))
            stones = self.tombstones.snapshot()
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
        while len(self.tombstones) > self._stone_cap:
            self._drop_oldest()
        ceiling = self.result_ceiling
        if ceiling is not None and self.result_bytes > ceiling:
            while self.result_bytes > ceiling and len(self.tombstones) > 1:
                self._drop_oldest()
                self.results_dropped += 1
        return _as_stone(row)

    def _drop_oldest(self) -> None:
        self._forget(self.tombstones.pop_oldest())

    def hold_ahead(self, task_id: str) -> None:
        """Count the tombstone of ``task_id``, about to be made (:meth:`bury`:
        call this first, else bury makes room by dropping another) or just
        rebuilt, among the cancels kept ahead of their copy, apart from
        ``max_tombstones``. The caller keeps them within :attr:`max_ahead`;
        one leaves the count with its tombstone (age, or pushed out as the
        oldest of all by the others), never replaced by a task's end here
        (its copy is not stored while it lives)."""
        if task_id not in self.ahead:
            self.ahead[task_id] = None
            self._stone_cap += 1

    def release_ahead(self, task_id: str) -> None:
        """``task_id`` no longer counts among the cancels kept ahead (if it did)."""
        if self.ahead.pop(task_id, 0) is None:
            self._stone_cap -= 1

    def hold_end_ahead(self, task_id: str) -> None:
        """Count the tombstone of ``task_id``, about to be made (:meth:`bury`:
        call this first) or just rebuilt, among those made on a peer's word
        for a task this node had no trace of, apart from ``max_tombstones``.
        The caller keeps them within :attr:`max_ends_ahead`; one leaves the
        count with its tombstone (age, or pushed out as the oldest of all
        by the others), or when the task's copy comes (:meth:`release_end_ahead`:
        the tombstone is then a finished task's that this node holds)."""
        if task_id not in self.ends_ahead:
            self.ends_ahead[task_id] = None
            self._stone_cap += 1

    def release_end_ahead(self, task_id: str) -> None:
        """``task_id`` no longer counts among the ends ahead (if it did)."""
        if self.ends_ahead.pop(task_id, 0) is None:
            self._stone_cap -= 1

    def tombstone(self, task_id: str) -> Tombstone | None:
        return self.tombstones.get(task_id)

    def drop_tombstone(self, task_id: str) -> bool:
        """Forget the tombstone of ``task_id`` (its result, its key, its
        place among those counted apart); whether there was one. For a
        replay whose log says the id was used again (an ``A`` record) or
        purged after it ended."""
        stone = self.tombstones.pop(task_id)
        if stone is None:
            return False
        self._forget(stone)
        return True

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
        """Drop tombstones older than the ttl (oldest first), and the marks of
        dead letters purged longer ago than that (:attr:`purged`, up to
        ``limit`` of them too). Returns how many tombstones."""
        cutoff = now - self.tombstone_ttl
        self.purged.sweep(cutoff, limit)
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
        if self.ahead:      # (no lookup while none is kept)
            self.release_ahead(stone.id)
        if self.ends_ahead:
            self.release_end_ahead(stone.id)

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
            self.payload_bytes -= held_bytes(evicted)
            self.dead_dropped += 1
            if evicted.key is not None and self.keys.get(evicted.key) == evicted.id:
                del self.keys[evicted.key]
            return evicted
        return None

    def purge(self, task_id: str) -> Task | None:
        """Drop a dead letter for good; returns it (None if there was none)."""
        task = self.dead.pop(task_id, None)
        if task is not None:
            self.payload_bytes -= held_bytes(task)
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
