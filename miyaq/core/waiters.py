"""Long-polls: RESULT requests waiting for a task to end, and blocking
RECEIVE requests waiting for a task to be ready. Both are answered at their
deadline by :meth:`Waiters.sweep`. Deadlines are on the monotonic clock
(:func:`miyaq.runtime.monotonic`). Where they are kept, the three bounds on
them (``max_waiters``, ``per_connection``, ``per_key``: past one a request
is answered ``busy``) and how each is found in constant time:
:mod:`miyaq.core.parked_polls`.

A wait whose connection went away is freed, not kept to its deadline (up to
an hour): every ``WAITER_PROBE_INTERVAL`` seconds the node probes each
connection that has waits (``reachable``: a REPLY without ``req``, which
clients ignore; the service ROUTER is ``ROUTER_MANDATORY``, so a vanished
connection fails the send) and releases the waits of those that are gone
(``released``). ZMTP heartbeats on the service socket make a connection
whose host vanished without closing it go away too. A connection that stops
waiting for one of its long-polls (a cancelled call) says so with WITHDRAW
(:meth:`Waiters.withdraw`), which finds the wait by the connection and the
request's ``req``.

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
import logging
from typing import Any, Callable, NamedTuple

from miyaq import constants
from miyaq.core.consumers import NOWHERE, Origin, PullConsumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.listener import EngineListener
from miyaq.core.parked_polls import Answer, Parked, ParkedPolls, Refuse, ResultWait
from miyaq.core.result_answers import outcome
from miyaq.errors import MiyaqError, ShuttingDown
from miyaq.store.table import Tombstone
from miyaq.store.task import Task

__all__ = ["NOWHERE", "Origin", "Refuse", "Waiters"]

logger = logging.getLogger(__name__)


def _never(task_id: str) -> bool:
    return False


class Waiters(ParkedPolls, EngineListener):
    """The node's long-polls: parks them, answers them (an outcome, a ready
    task, a deadline, the node's stop) and frees those nobody waits for."""

    def __init__(self, dispatcher: Dispatcher, max_waiters: int, per_connection: int | None = None,
                 per_key: int | None = None, reachable: Callable[[bytes], bool] | None = None,
                 live_state: Callable[[str], str | None] | None = None) -> None:
        super().__init__(max_waiters, per_connection, per_key)
        self.dispatcher = dispatcher
        # A RESULT wait that ends without an outcome reports the task's state
        # then (scheduled, ready, running, retrying): None if no longer held.
        self.live_state = live_state or (lambda task_id: None)
        self.reachable = reachable
        self.released = 0          # waits freed because their connection went away
        self.withdrawn = 0         # waits their connection withdrew (WITHDRAW)
        self.probes = 0            # connections probed
        self._next_probe = 0.0
        # The node stops (stop): why new long-polls are refused, and which
        # tasks' RESULT waits are still kept (those whose outcome may yet come).
        self.stopping: str | None = None
        self._keeps: Callable[[str], bool] = _never

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
        wait = ResultWait(task_id, deadline, answer, origin, refuse)
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
            if isinstance(parked, ResultWait):
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
            elif isinstance(parked, ResultWait):
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
        victims: list[tuple[Parked, MiyaqError | None]] = []
        for parked in self._every():
            key = parked.origin.key
            how = revoked.get(key) if key is not None else None     # None: no key, never revoked
            if how is not None and not (how.keep_results and isinstance(parked, ResultWait)):
                victims.append((parked, how.refusal))
        freed = 0
        for parked, refusal in victims:
            freed += self._release([parked], refusal)
        return freed

    def _release(self, victims: list[Parked], refusal: MiyaqError | None = None) -> int:
        freed = 0
        for parked in victims:
            if isinstance(parked, ResultWait):
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
