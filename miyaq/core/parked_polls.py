"""The parked long-polls of a node, bounded and indexed: the bookkeeping
:class:`~miyaq.core.waiters.Waiters` answers them from.

:class:`ParkedPolls` holds each RESULT wait (:class:`ResultWait`) under its
task and each RECEIVE's consumer, and keeps the three bounds, so nobody can
take every slot: ``max_waiters`` in all, ``per_connection`` from one service
connection and ``per_key`` from one key (with keys); past a bound a new
long-poll is refused ``busy`` (:meth:`ParkedPolls._check_room`). Each
long-poll remembers where it came from (:class:`~miyaq.core.consumers.Origin`).

Every long-poll is found in constant time, however many are parked: by
``(connection, req)`` (WITHDRAW), by the answer an in-process caller gave
(``drop_result``), by its connection (``release``); each task's waits and
the RECEIVEs are insertion-ordered dicts (answered oldest first, removed
without a scan). Deadlines are kept in a heap, so housekeeping (woken at
the earliest deadline: ``on_earliest``) looks only at the long-polls that are due; a heap entry of a
long-poll that ended otherwise (answered, withdrawn, released) is passed
over when it comes up, and the heap is rebuilt from the parked ones when
such entries outnumber them (``COMPACT_SLACK`` spare), so it never holds
much more than twice what is parked. Before 2026-12-05 one WITHDRAW of 1,000
reqs scanned, per req, the wait list of the task (10,000 RESULT waits on one
task: 605 ms) or every RECEIVE (77 ms), and each tick walked every RESULT
wait (2 ms a tick at 10,000).

Nothing here answers a long-poll: taking one out (:meth:`ParkedPolls._remove`,
:meth:`ParkedPolls._take_wait`) only forgets it; the caller answers it or
drops it. No I/O; runs in the node's event loop, and ``on_earliest`` must
not block.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable, Iterator

from miyaq.core.consumers import Origin, PullConsumer
from miyaq.errors import Busy, MiyaqError
from miyaq.store.tally import Tally

Answer = Callable[[dict[str, Any] | None], Any]
"""Answers a RESULT wait: with the reply body, or None when this node no
longer holds the task (handed off to other holders): the caller answers
``not_found``, as a new RESULT here would be."""

Refuse = Callable[[MiyaqError], Any]
"""Answers a long-poll with an error instead (``shutting_down`` when the
node stops): an ERROR over ZeroMQ, an error response over HTTP."""

#: Heap entries of ended long-polls allowed beyond the parked ones before the
#: deadline heap is rebuilt (so a few parked long-polls never rebuild it often).
COMPACT_SLACK = 64


class ResultWait:
    """One RESULT wait. Hashed and compared by identity: two waits alike
    (the same caller asking twice) are two waits."""

    __slots__ = ("task_id", "deadline", "answer", "origin", "refuse")

    def __init__(self, task_id: str, deadline: float, answer: Answer, origin: Origin,
                 refuse: Refuse | None) -> None:
        self.task_id = task_id
        self.deadline = deadline
        self.answer = answer
        self.origin = origin
        self.refuse = refuse


Parked = ResultWait | PullConsumer
"""A long-poll: a RESULT wait or a RECEIVE's consumer (each has ``deadline`` and ``origin``)."""


class ParkedPolls:
    """The parked long-polls and their bounds (the base of
    :class:`~miyaq.core.waiters.Waiters`)."""

    def __init__(self, max_waiters: int, per_connection: int | None = None, per_key: int | None = None) -> None:
        self.max_waiters = max_waiters
        self.per_connection = per_connection or max_waiters
        self.per_key = per_key or max_waiters
        # Insertion-ordered (dicts used as ordered sets): answered oldest first, removed in O(1).
        self.results: dict[str, dict[ResultWait, None]] = {}
        # Each parked RECEIVE's consumer -> how to refuse it (None: it is dropped unanswered).
        self.pulls: dict[PullConsumer, Refuse | None] = {}
        self.count = 0
        # connection -> its parked long-polls (their number is its share of per_connection)
        self.by_connection: dict[bytes, dict[Parked, None]] = {}
        self.by_key: Tally[str] = Tally()
        # (connection, req) -> the RESULT wait or the RECEIVE's consumer (what a WITHDRAW names).
        self.by_req: dict[tuple[bytes, Any], Parked] = {}
        # id(answer) -> the in-process RESULT wait it answers (drop_result); the wait
        # holds its answer, so the id stays that answer's while the entry is here.
        self.by_answer: dict[int, ResultWait] = {}
        # (deadline, sequence, long-poll): a heap; entries of ended long-polls are passed over.
        self.deadlines: list[tuple[float, int, Parked]] = []
        self._sequence = itertools.count()
        # Told the deadline of every long-poll parked (the node's housekeeping
        # wakes for one due before its next pass); must not block.
        self.on_earliest: Callable[[float], None] | None = None

    def _check_room(self, origin: Origin) -> None:
        if self.count >= self.max_waiters:
            raise Busy(f"{self.count} requests are already waiting (max_waiters); try again later")
        conn, key, _ = origin
        if conn is not None and len(self.by_connection.get(conn, ())) >= self.per_connection:
            raise Busy(f"this connection already has {self.per_connection} long-polls waiting "
                       "(max_waiters_per_connection); try again later")
        if key is not None and self.by_key[key] >= self.per_key:
            raise Busy(f"key {key!r} already has {self.per_key} long-polls waiting (max_waiters_per_key); "
                       "try again later")

    def _add(self, parked: Parked) -> None:
        self.count += 1
        conn, key, req = parked.origin
        if conn is not None:
            self.by_connection.setdefault(conn, {})[parked] = None
            if type(req) is int:     # what a WITHDRAW names (a req may be any msgpack value)
                self.by_req[(conn, req)] = parked
        elif isinstance(parked, ResultWait):
            self.by_answer.setdefault(id(parked.answer), parked)
        if key is not None:
            self.by_key[key] += 1
        heapq.heappush(self.deadlines, (parked.deadline, next(self._sequence), parked))
        if self.on_earliest is not None:
            self.on_earliest(parked.deadline)

    def next_deadline(self) -> float | None:
        """The earliest deadline of the heap (monotonic; it may be a long-poll
        that ended otherwise: a sweep then finds nothing due), or None."""
        return self.deadlines[0][0] if self.deadlines else None

    def _remove(self, parked: Parked) -> None:
        """Forget the bookkeeping of a long-poll already taken out of
        ``results``/``pulls`` (its heap entry stays, passed over when due)."""
        self.count -= 1
        conn, key, req = parked.origin
        if conn is not None:
            if type(req) is int and self.by_req.get((conn, req)) is parked:
                del self.by_req[(conn, req)]
            mine = self.by_connection.get(conn)
            if mine is not None:
                mine.pop(parked, None)
                if not mine:
                    del self.by_connection[conn]
        elif isinstance(parked, ResultWait) and self.by_answer.get(id(parked.answer)) is parked:
            del self.by_answer[id(parked.answer)]
        if key is not None:
            left = self.by_key[key] - 1
            if left > 0:
                self.by_key[key] = left
            else:
                del self.by_key[key]
        if len(self.deadlines) > 2 * self.count + COMPACT_SLACK:
            self._compact()

    def _parked(self, parked: Parked) -> bool:
        """Whether a long-poll is still parked (not answered, withdrawn or released)."""
        if isinstance(parked, ResultWait):
            return parked in self.results.get(parked.task_id, ())
        return parked in self.pulls

    def _compact(self) -> None:
        """Drop the heap entries of long-polls that ended (in place: a sweep
        may hold the list). O(parked); run when they outnumber the parked."""
        self.deadlines[:] = [entry for entry in self.deadlines if self._parked(entry[2])]
        heapq.heapify(self.deadlines)

    def _take_wait(self, wait: ResultWait) -> bool:
        """Take a RESULT wait out of its task's waits (False if it is not there)."""
        waiting = self.results.get(wait.task_id)
        if waiting is None or wait not in waiting:
            return False
        del waiting[wait]
        if not waiting:
            del self.results[wait.task_id]
        self._remove(wait)
        return True

    def _every(self) -> Iterator[Parked]:
        for waiting in self.results.values():
            yield from waiting
        yield from self.pulls
