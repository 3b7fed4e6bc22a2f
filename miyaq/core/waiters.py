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
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from miyaq import constants
from miyaq.core.consumers import NOWHERE, Origin, PullConsumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.listener import EngineListener
from miyaq.errors import Busy
from miyaq.store.table import Tombstone
from miyaq.store.tally import Tally
from miyaq.store.task import Task

Answer = Callable[[dict[str, Any] | None], Any]
"""Answers a RESULT wait: with the reply body, or None when this node no
longer holds the task (handed off to other holders): the caller answers
``not_found``, as a new RESULT here would be."""

__all__ = ["NOWHERE", "Origin", "Waiters", "outcome"]


class _Wait(NamedTuple):
    deadline: float
    answer: Answer
    origin: Origin


def outcome(stone_or_task: Tombstone | Task) -> dict[str, Any]:
    """How RESULT reports a task that ended (or is dead)."""
    if isinstance(stone_or_task, Tombstone):
        body: dict[str, Any] = {"state": stone_or_task.state}
        if stone_or_task.result is not None:
            body["result"] = stone_or_task.result
        if stone_or_task.error is not None:
            body["error"] = stone_or_task.error
        return body
    return {"state": stone_or_task.state, "error": stone_or_task.error}


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
        self.results: dict[str, list[_Wait]] = {}
        self.pulls: list[PullConsumer] = []
        self.count = 0
        self.by_connection: Tally[bytes] = Tally()
        self.by_key: Tally[str] = Tally()
        # (connection, req) -> the task a RESULT waits for, or the RECEIVE's consumer.
        self.by_req: dict[tuple[bytes, Any], str | PullConsumer] = {}
        self.released = 0          # waits freed because their connection went away
        self.withdrawn = 0         # waits their connection withdrew (WITHDRAW)
        self.probes = 0            # connections probed
        self._next_probe = 0.0

    # -- bounds ----------------------------------------------------------------------
    def _check_room(self, origin: Origin) -> None:
        if self.count >= self.max_waiters:
            raise Busy(f"{self.count} requests are already waiting (max_waiters); try again later")
        conn, key, _ = origin
        if conn is not None and self.by_connection[conn] >= self.per_connection:
            raise Busy(f"this connection already has {self.per_connection} long-polls waiting "
                       "(max_waiters_per_connection); try again later")
        if key is not None and self.by_key[key] >= self.per_key:
            raise Busy(f"key {key!r} already has {self.per_key} long-polls waiting (max_waiters_per_key); "
                       "try again later")

    def _add(self, origin: Origin, waits_for: str | PullConsumer) -> None:
        self.count += 1
        if origin.connection is not None:
            self.by_connection[origin.connection] += 1
            if type(origin.req) is int:     # what a WITHDRAW names (a req may be any msgpack value)
                self.by_req[(origin.connection, origin.req)] = waits_for
        if origin.key is not None:
            self.by_key[origin.key] += 1

    def _remove(self, origin: Origin) -> None:
        self.count -= 1
        conn, key, req = origin
        if conn is not None:
            if type(req) is int:
                self.by_req.pop((conn, req), None)
            left = self.by_connection[conn] - 1
            if left > 0:
                self.by_connection[conn] = left
            else:
                del self.by_connection[conn]
        if key is not None:
            left = self.by_key[key] - 1
            if left > 0:
                self.by_key[key] = left
            else:
                del self.by_key[key]

    # -- RESULT --------------------------------------------------------------------
    def wait_result(self, task_id: str, deadline: float, answer: Answer, origin: Origin = NOWHERE) -> None:
        self._check_room(origin)
        self.results.setdefault(task_id, []).append(_Wait(deadline, answer, origin))
        self._add(origin, task_id)

    def _resolve(self, task_id: str, body: dict[str, Any]) -> None:
        waiting = self.results.pop(task_id, None)
        if waiting:
            for wait in waiting:
                self._remove(wait.origin)
                wait.answer(dict(body))

    def task_finished(self, task: Task, stone: Tombstone) -> None:
        if self.results:
            self._resolve(task.id, outcome(stone))

    def task_dead(self, task: Task) -> None:
        if self.results:
            self._resolve(task.id, outcome(task))

    def task_forgotten(self, task: Task) -> None:
        """Handed off: this node will never see the outcome; tell the waits at once."""
        waiting = self.results.pop(task.id, None) if self.results else None
        for wait in waiting or ():
            self._remove(wait.origin)
            wait.answer(None)

    # -- RECEIVE -------------------------------------------------------------------
    def wait_pull(self, consumer: PullConsumer) -> None:
        self._check_room(consumer.origin)
        self.pulls.append(consumer)
        self._add(consumer.origin, consumer)
        self.dispatcher.grant(consumer, 0)

    # -- WITHDRAW --------------------------------------------------------------------
    def withdraw(self, connection: bytes, reqs: list[int]) -> int:
        """Drop the long-polls ``reqs`` of ``connection`` unanswered: its
        caller stopped waiting. A RECEIVE that got its task already is not
        a wait any more (its client gives the task back). A ``req`` that names
        no wait of this connection (answered meanwhile, or never sent) is
        passed over. How many were dropped. Each costs a dictionary lookup:
        a flood of WITHDRAWs scans nothing."""
        dropped = 0
        for req in reqs:
            waits_for = self.by_req.get((connection, req))
            if waits_for is None:
                continue
            if isinstance(waits_for, str):
                dropped += self._drop_result(waits_for, lambda w: w.origin.connection == connection
                                             and w.origin.req == req)
            else:
                dropped += self.drop_pull(waits_for)
        self.withdrawn += dropped
        return dropped

    def drop_result(self, task_id: str, answer: Answer) -> bool:
        """Drop, unanswered, the RESULT wait for ``task_id`` that ``answer``
        would have answered (an in-process caller that stopped waiting: an
        HTTP client that hung up). False if there is none (answered meanwhile)."""
        return self._drop_result(task_id, lambda w: w.answer is answer)

    def _drop_result(self, task_id: str, match: Callable[[_Wait], bool]) -> bool:
        waiting = self.results.get(task_id, [])
        for i, wait in enumerate(waiting):
            if match(wait):
                del waiting[i]
                if not waiting:
                    del self.results[task_id]
                self._remove(wait.origin)
                return True
        return False

    def drop_pull(self, consumer: PullConsumer) -> bool:
        """Drop a RECEIVE wait unanswered. False if it got its task already
        (then it is not a wait any more) or is not waiting here."""
        if consumer.credit <= 0:
            return False
        try:
            self.pulls.remove(consumer)
        except ValueError:
            return False      # answered at its deadline meanwhile
        self.dispatcher.forget(consumer)
        self._remove(consumer.origin)
        return True

    # -- deadlines and departures ---------------------------------------------------------
    def sweep(self, now: float) -> None:
        """Answer every long-poll whose deadline passed (``now``: monotonic);
        every WAITER_PROBE_INTERVAL, free the waits of connections that went away."""
        if self.results:
            for task_id in list(self.results):
                waiting = self.results[task_id]
                keep = [w for w in waiting if w.deadline > now]
                if len(keep) == len(waiting):
                    continue
                state = None
                for wait in waiting:
                    if wait.deadline <= now:
                        self._remove(wait.origin)
                        state = state or self.live_state(task_id)
                        wait.answer({"state": state, "timeout": True} if state is not None else None)
                if keep:
                    self.results[task_id] = keep
                else:
                    del self.results[task_id]
        if self.pulls:
            keep_pulls = []
            for consumer in self.pulls:
                if consumer.credit <= 0:          # got its task
                    self._remove(consumer.origin)
                elif consumer.deadline <= now:
                    self.dispatcher.forget(consumer)
                    consumer.answer(None)
                    self._remove(consumer.origin)
                else:
                    keep_pulls.append(consumer)
            self.pulls = keep_pulls
        if self.by_connection and self.reachable is not None and now >= self._next_probe:
            self._next_probe = now + constants.WAITER_PROBE_INTERVAL
            connections = list(self.by_connection)
            self.probes += len(connections)
            gone = [conn for conn in connections if not self.reachable(conn)]
            for conn in gone:
                self.release(conn)

    def release(self, connection: bytes) -> int:
        """Free every wait of a connection that went away (nothing is answered:
        nobody is there). Returns how many."""
        freed = self._release(lambda origin: origin.connection == connection)
        self.released += freed
        return freed

    def release_key(self, key: str) -> int:
        """Free every wait made with ``key`` (revoked: it may not be sent a
        task or an outcome any more; nothing is answered). Returns how many."""
        return self._release(lambda origin: origin.key == key)

    def _release(self, match: Callable[[Origin], bool]) -> int:
        freed = 0
        for task_id in list(self.results):
            waiting = self.results[task_id]
            keep = [w for w in waiting if not match(w.origin)]
            if len(keep) != len(waiting):
                for wait in waiting:
                    if match(wait.origin):
                        self._remove(wait.origin)
                        freed += 1
                if keep:
                    self.results[task_id] = keep
                else:
                    del self.results[task_id]
        keep_pulls = []
        for consumer in self.pulls:
            if match(consumer.origin) and consumer.credit > 0:
                self.dispatcher.forget(consumer)
                self._remove(consumer.origin)
                freed += 1
            else:
                keep_pulls.append(consumer)
        self.pulls = keep_pulls
        return freed
