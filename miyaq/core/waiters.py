"""Long-polls: RESULT requests waiting for a task to end, and blocking
RECEIVE requests waiting for a task to be ready. Both are answered at their
deadline by :meth:`Waiters.sweep`. Deadlines are on the monotonic clock
(:func:`miyaq.runtime.monotonic`).

Bounded three ways, so nobody can take every slot: ``max_waiters`` in all,
``per_connection`` from one service connection and ``per_key`` from one key
(with keys); past a bound the request is answered ``busy``. Each wait
remembers where it came from (:class:`Origin`). A wait whose connection went
away is freed, not kept to its deadline (up to an hour): every
``WAITER_PROBE_INTERVAL`` seconds the node probes each connection that has
waits (``reachable``: a REPLY without ``req``, which clients ignore; the
service ROUTER is ``ROUTER_MANDATORY``, so a vanished connection fails the
send) and releases the waits of those that are gone (``released``). ZMTP
heartbeats on the service socket make a connection whose host vanished
without closing it go away too. A connection that stops waiting for one of
its long-polls (a cancelled call) says so with WITHDRAW (:meth:`Waiters.withdraw`),
which finds the wait by the connection and the request's ``req``.

Every long-poll is found in constant time, however many are parked: by
``(connection, req)`` (WITHDRAW), by the answer an in-process caller gave
(:meth:`Waiters.drop_result`), by its connection (:meth:`Waiters.release`);
each task's waits and the RECEIVEs are insertion-ordered dicts (answered
oldest first, removed without a scan). Deadlines are kept in a heap, so the
housekeeping tick (every 0.1 s) looks only at the long-polls that are due;
a heap entry of a long-poll that ended otherwise (answered, withdrawn,
released) is passed over when it comes up, and the heap is rebuilt from the
parked ones when such entries outnumber them (``COMPACT_SLACK`` spare), so
it never holds much more than twice what is parked. Before 2026-12-05 one
WITHDRAW of 1,000 reqs scanned, per req, the wait list of the task (10,000
RESULT waits on one task: 605 ms) or every RECEIVE (77 ms), and each tick
walked every RESULT wait (2 ms a tick at 10,000).

When the node stops (:meth:`Waiters.stop`, at the start of its drain and
again when its ``shutdown_grace`` ends) every parked RECEIVE is answered
``shutting_down`` at once, and so is every RESULT wait whose task is not
running: nothing is leased while the node drains, so its outcome cannot
come here. A RESULT wait for a running task is kept through the grace: the
task may end meanwhile (its worker reports), and the wait gets its outcome.
It is answered ``shutting_down`` as soon as its task stops running without
an outcome (retried, given back), and at the end of the grace at the
latest, before the sockets close. A new long-poll is refused the same way
from the drain on. Each long-poll is answered so through the ``refuse`` its
door gave when it parked (an ERROR over ZeroMQ, a 503 over HTTP); before
2026-12-05 nothing was answered at the drain: the HTTP ones got their 503
only when the grace ended, and the ZeroMQ ones never got an answer (their
connections closed under them).
"""
from __future__ import annotations

import heapq
import itertools
import logging
from typing import Any, Callable, Iterator, NamedTuple

from miyaq import constants
from miyaq.core.consumers import NOWHERE, Origin, PullConsumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.listener import EngineListener
from miyaq.core.result_answers import outcome
from miyaq.errors import Busy, MiyaqError, ShuttingDown
from miyaq.store.table import Tombstone
from miyaq.store.tally import Tally
from miyaq.store.task import Task

Answer = Callable[[dict[str, Any] | None], Any]
"""Answers a RESULT wait: with the reply body, or None when this node no
longer holds the task (handed off to other holders): the caller answers
``not_found``, as a new RESULT here would be."""

Refuse = Callable[[MiyaqError], Any]
"""Answers a long-poll with an error instead (``shutting_down`` when the
node stops): an ERROR over ZeroMQ, an error response over HTTP."""

__all__ = ["NOWHERE", "Origin", "Refuse", "Waiters"]

logger = logging.getLogger(__name__)

#: Heap entries of ended long-polls allowed beyond the parked ones before the
#: deadline heap is rebuilt (so a few parked long-polls never rebuild it often).
COMPACT_SLACK = 64


class _Wait:
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


def _never(task_id: str) -> bool:
    return False


_Parked = _Wait | PullConsumer
"""A long-poll: a RESULT wait or a RECEIVE's consumer (each has ``deadline`` and ``origin``)."""


class Waiters(EngineListener):
    def __init__(self, dispatcher: Dispatcher, max_waiters: int, per_connection: int | None = None,
                 per_key: int | None = None, reachable: Callable[[bytes], bool] | None = None,
                 live_state: Callable[[str], str | None] | None = None) -> None:
        self.dispatcher = dispatcher
        # A RESULT wait that ends without an outcome reports the task's state
        # then (scheduled, ready, running, retrying): None if no longer held.
        self.live_state = live_state or (lambda task_id: None)
        self.max_waiters = max_waiters
        self.per_connection = per_connection or max_waiters
        self.per_key = per_key or max_waiters
        self.reachable = reachable
        # Insertion-ordered (dicts used as ordered sets): answered oldest first, removed in O(1).
        self.results: dict[str, dict[_Wait, None]] = {}
        # Each parked RECEIVE's consumer -> how to refuse it (None: it is dropped unanswered).
        self.pulls: dict[PullConsumer, Refuse | None] = {}
        self.count = 0
        # connection -> its parked long-polls (their number is its share of per_connection)
        self.by_connection: dict[bytes, dict[_Parked, None]] = {}
        self.by_key: Tally[str] = Tally()
        # (connection, req) -> the RESULT wait or the RECEIVE's consumer (what a WITHDRAW names).
        self.by_req: dict[tuple[bytes, Any], _Parked] = {}
        # id(answer) -> the in-process RESULT wait it answers (drop_result); the wait
        # holds its answer, so the id stays that answer's while the entry is here.
        self.by_answer: dict[int, _Wait] = {}
        # (deadline, sequence, long-poll): a heap; entries of ended long-polls are passed over.
        self.deadlines: list[tuple[float, int, _Parked]] = []
        self._sequence = itertools.count()
        # Told the deadline of every long-poll parked (the node's housekeeping
        # wakes for one due before its next pass); must not block.
        self.on_earliest: Callable[[float], None] | None = None
        self.released = 0          # waits freed because their connection went away
        self.withdrawn = 0         # waits their connection withdrew (WITHDRAW)
        self.probes = 0            # connections probed
        self._next_probe = 0.0
        # The node stops (stop): why new long-polls are refused, and which
        # tasks' RESULT waits are still kept (those whose outcome may yet come).
        self.stopping: str | None = None
        self._keeps: Callable[[str], bool] = _never

    # -- bounds ----------------------------------------------------------------------
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

    def _add(self, parked: _Parked) -> None:
        self.count += 1
        conn, key, req = parked.origin
        if conn is not None:
            self.by_connection.setdefault(conn, {})[parked] = None
            if type(req) is int:     # what a WITHDRAW names (a req may be any msgpack value)
                self.by_req[(conn, req)] = parked
        elif isinstance(parked, _Wait):
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

    def _remove(self, parked: _Parked) -> None:
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
        elif isinstance(parked, _Wait) and self.by_answer.get(id(parked.answer)) is parked:
            del self.by_answer[id(parked.answer)]
        if key is not None:
            left = self.by_key[key] - 1
            if left > 0:
                self.by_key[key] = left
            else:
                del self.by_key[key]
        if len(self.deadlines) > 2 * self.count + COMPACT_SLACK:
            self._compact()

    def _parked(self, parked: _Parked) -> bool:
        """Whether a long-poll is still parked (not answered, withdrawn or released)."""
        if isinstance(parked, _Wait):
            return parked in self.results.get(parked.task_id, ())
        return parked in self.pulls

    def _compact(self) -> None:
        """Drop the heap entries of long-polls that ended (in place: a sweep
        may hold the list). O(parked); run when they outnumber the parked."""
        self.deadlines[:] = [entry for entry in self.deadlines if self._parked(entry[2])]
        heapq.heapify(self.deadlines)

    # -- RESULT --------------------------------------------------------------------
    def wait_result(self, task_id: str, deadline: float, answer: Answer, origin: Origin = NOWHERE,
                    refuse: Refuse | None = None) -> None:
        """Park a RESULT wait, answered through ``answer`` (its outcome, at
        its deadline the task's state, None if handed off) or, when the node
        stops, through ``refuse`` (``shutting_down``; without one the wait is
        then dropped unanswered: an in-process caller that watches the node
        itself). Raises ``Busy`` past a bound, ``ShuttingDown`` while the
        node stops unless the task is running (:meth:`stop`)."""
        if self.stopping is not None and not self._keeps(task_id):
            raise ShuttingDown(self.stopping)
        self._check_room(origin)
        wait = _Wait(task_id, deadline, answer, origin, refuse)
        self.results.setdefault(task_id, {})[wait] = None
        self._add(wait)

    def _resolve(self, task_id: str, body: dict[str, Any]) -> None:
        waiting = self.results.pop(task_id, None)
        if waiting:
            for wait in waiting:
                self._remove(wait)
                wait.answer(dict(body))

    def task_finished(self, task: Task, stone: Tombstone) -> None:
        if self.results:
            self._resolve(task.id, outcome(stone))

    def task_dead(self, task: Task) -> None:
        if self.results:
            self._resolve(task.id, outcome(task))

    def task_ready(self, task: Task) -> None:
        if self.stopping is not None and self.results:
            self._refuse_unkept(task.id)

    def task_retrying(self, task: Task, reason: str) -> None:
        if self.stopping is not None and self.results:
            self._refuse_unkept(task.id)

    def task_forgotten(self, task: Task) -> None:
        """Handed off: this node will never see the outcome; tell the waits at once."""
        waiting = self.results.pop(task.id, None) if self.results else None
        for wait in waiting or ():
            self._remove(wait)
            wait.answer(None)

    def _take_wait(self, wait: _Wait) -> bool:
        """Take a RESULT wait out of its task's waits (False if it is not there)."""
        waiting = self.results.get(wait.task_id)
        if waiting is None or wait not in waiting:
            return False
        del waiting[wait]
        if not waiting:
            del self.results[wait.task_id]
        self._remove(wait)
        return True

    # -- RECEIVE -------------------------------------------------------------------
    def wait_pull(self, consumer: PullConsumer, refuse: Refuse | None = None) -> None:
        """Park a RECEIVE: answered through the consumer (a task, or None at
        its deadline) or, when the node stops, through ``refuse``
        (``shutting_down``; without one it is dropped unanswered). Raises
        ``Busy`` past a bound, ``ShuttingDown`` while the node stops."""
        if self.stopping is not None:
            raise ShuttingDown(self.stopping)
        self._check_room(consumer.origin)
        self.pulls[consumer] = refuse
        self._add(consumer)
        self.dispatcher.grant(consumer, 0)

    def task_started(self, task: Task) -> None:
        """A parked RECEIVE that got its task is not a wait any more: its
        place is freed now (it was at the next tick before 2026-12-05; the
        tick no longer looks at a long-poll before its deadline)."""
        if self.pulls:
            consumer = task.consumer
            if consumer in self.pulls:
                del self.pulls[consumer]
                self._remove(consumer)

    # -- WITHDRAW --------------------------------------------------------------------
    def withdraw(self, connection: bytes, reqs: list[int]) -> int:
        """Drop the long-polls ``reqs`` of ``connection`` unanswered: its
        caller stopped waiting. A RECEIVE that got its task already is not
        a wait any more (its client gives the task back). A ``req`` that names
        no wait of this connection (answered meanwhile, or never sent) is
        passed over. How many were dropped. Each costs a few dictionary
        lookups, however many long-polls are parked: a flood of WITHDRAWs
        scans nothing."""
        dropped = 0
        for req in reqs:
            parked = self.by_req.get((connection, req))
            if parked is None:
                continue
            if isinstance(parked, _Wait):
                dropped += self._take_wait(parked)
            else:
                dropped += self.drop_pull(parked)
        self.withdrawn += dropped
        return dropped

    def drop_result(self, task_id: str, answer: Answer) -> bool:
        """Drop, unanswered, the RESULT wait for ``task_id`` that ``answer``
        would have answered (an in-process caller that stopped waiting: an
        HTTP client that hung up). False if there is none (answered meanwhile).
        Found by ``answer`` in constant time; only an answer given to several
        waits at once makes it look through the task's waits."""
        wait = self.by_answer.get(id(answer))
        if wait is not None and wait.answer is answer and wait.task_id == task_id:
            return self._take_wait(wait)
        for wait in self.results.get(task_id, ()):
            if wait.answer is answer:
                return self._take_wait(wait)
        return False

    def drop_pull(self, consumer: PullConsumer) -> bool:
        """Drop a RECEIVE wait unanswered. False if it got its task already
        (then it is not a wait any more) or is not waiting here."""
        if consumer.credit <= 0 or consumer not in self.pulls:
            return False      # got its task, or answered at its deadline meanwhile
        del self.pulls[consumer]
        self.dispatcher.forget(consumer)
        self._remove(consumer)
        return True

    # -- the node stops ------------------------------------------------------------------
    def stop(self, message: str, keep: Callable[[str], bool] | None = None) -> int:
        """The node stops: answer ``shutting_down`` (``message``) at once to
        every parked RECEIVE and to every RESULT wait whose task ``keep``
        does not name (by id: the running tasks, whose outcome may still
        come); from now on, refuse so every new long-poll but a RESULT wait
        for a task ``keep`` names, and answer a kept wait so as soon as its
        task is ready or retrying again (no outcome came). Called when the
        drain starts (``keep``: the task runs) and when the grace ends
        (no ``keep``: every wait left is answered). How many were answered.
        Looks at every parked long-poll once."""
        self.stopping = message
        self._keeps = keep or _never
        answered = 0
        for task_id in list(self.results):
            answered += self._refuse_unkept(task_id)
        for consumer, refuse in list(self.pulls.items()):
            del self.pulls[consumer]
            self._remove(consumer)
            if consumer.credit > 0:       # (one that got its task left at task_started)
                self.dispatcher.forget(consumer)
                answered += _refuse(refuse, message)
        return answered

    def _refuse_unkept(self, task_id: str) -> int:
        """While the node stops: answer ``shutting_down`` to the RESULT waits
        of ``task_id`` unless the task is one still kept. How many."""
        if self._keeps(task_id):
            return 0
        waiting = self.results.pop(task_id, None)
        answered = 0
        for wait in waiting or ():
            self._remove(wait)
            answered += _refuse(wait.refuse, self.stopping or "")
        return answered

    # -- deadlines and departures ---------------------------------------------------------
    def sweep(self, now: float) -> None:
        """Answer every long-poll whose deadline passed (``now``: monotonic);
        every WAITER_PROBE_INTERVAL, free the waits of connections that went
        away. Looks only at the long-polls due (and at heap entries of
        long-polls that ended otherwise)."""
        heap = self.deadlines
        states: dict[str, str | None] = {}
        while heap and heap[0][0] <= now:
            _, _, parked = heapq.heappop(heap)
            if parked.deadline > now:     # its deadline moved on: due later
                heapq.heappush(heap, (parked.deadline, next(self._sequence), parked))
            elif isinstance(parked, _Wait):
                if self._take_wait(parked):
                    task_id = parked.task_id
                    if task_id not in states:
                        states[task_id] = self.live_state(task_id)
                    state = states[task_id]
                    parked.answer({"state": state, "timeout": True} if state is not None else None)
            elif parked in self.pulls:
                del self.pulls[parked]
                self._remove(parked)
                if parked.credit > 0:       # (one that got its task left at task_started)
                    self.dispatcher.forget(parked)
                    parked.answer(None)
        if self.by_connection and self.reachable is not None and now >= self._next_probe:
            self._next_probe = now + constants.WAITER_PROBE_INTERVAL
            connections = list(self.by_connection)
            self.probes += len(connections)
            gone = [conn for conn in connections if not self.reachable(conn)]
            for conn in gone:
                self.release(conn)

    def release(self, connection: bytes) -> int:
        """Free every wait of a connection that went away (nothing is answered:
        nobody is there). Returns how many. Looks at that connection's waits only."""
        freed = self._release(list(self.by_connection.get(connection, ())))
        self.released += freed
        return freed

    def release_key(self, key: str, refusal: MiyaqError | None = None, keep_results: bool = False) -> int:
        """Free every wait made with ``key`` (revoked: it may not be sent a
        task or an outcome any more; nothing is answered). Returns how many.
        ``refusal``: each freed wait is answered it through its ``refuse``
        instead (an HTTP request, still open: 401 or 403, as a fresh request
        with that token). ``keep_results``: the RESULT waits stay (a token
        whose new role may still ask for results, not receive)."""
        return self.release_keys({key: Revoked(refusal, keep_results)})

    def release_keys(self, revoked: dict[str, "Revoked"]) -> int:
        """:meth:`release_key` for many keys at once: one pass over every
        parked long-poll (a revocation is rare), however many keys -- a
        reload that removed 5,000 tokens holding 10,000 long-polls took 2 s
        of the loop with a pass a key (2026-12-06's review)."""
        victims: list[tuple[_Parked, MiyaqError | None]] = []
        for parked in self._every():
            key = parked.origin.key
            how = revoked.get(key) if key is not None else None     # None: no key, never revoked
            if how is not None and not (how.keep_results and isinstance(parked, _Wait)):
                victims.append((parked, how.refusal))
        freed = 0
        for parked, refusal in victims:
            freed += self._release([parked], refusal)
        return freed

    def _every(self) -> Iterator[_Parked]:
        for waiting in self.results.values():
            yield from waiting
        yield from self.pulls

    def _release(self, victims: list[_Parked], refusal: MiyaqError | None = None) -> int:
        freed = 0
        for parked in victims:
            if isinstance(parked, _Wait):
                if not self._take_wait(parked):
                    continue
                refuse = parked.refuse
            elif parked in self.pulls:
                refuse = self.pulls.pop(parked)
                self._remove(parked)
                if parked.credit <= 0:      # (one that got its task left at task_started)
                    continue
                self.dispatcher.forget(parked)
            else:
                continue
            freed += 1
            if refusal is not None:
                _refuse(refuse, refusal)
        return freed


class Revoked(NamedTuple):
    """How the waits of a revoked key end (:meth:`Waiters.release_keys`):
    answered ``refusal`` (None: unanswered), RESULT waits kept or not."""

    refusal: MiyaqError | None = None
    keep_results: bool = False


def _refuse(refuse: Refuse | None, reason: str | MiyaqError) -> int:
    """Answer a long-poll through its ``refuse`` (nothing without one):
    ``shutting_down`` (``reason``, a message) or the error ``reason``; 1 if
    answered. A failing answer is logged, never raised: the node's stop
    (or a revocation) goes on."""
    if refuse is None:
        return 0
    error = ShuttingDown(reason) if isinstance(reason, str) else reason
    try:
        refuse(error)
    except Exception:
        logger.exception("answering a long-poll %s failed", error.code)
        return 0
    return 1
