"""Requests and their replies: STATUS, TASK, CANCEL, RESULT, RECEIVE, ACK...

Part of the client's sans-I/O core (:mod:`miyaq.client.core`). Each request
carries a fresh ``req`` number; the node's REPLY or ERROR with the same
``req`` resolves its waiter (replies may come in any order). A request to a
node that is not connected is retried for :data:`CONNECT_WAIT` seconds, then
fails with ``Unavailable`` (the first-contact message while no node was ever
reached); one not answered by its deadline fails with ``Timeout``; one sent
on a connection that then closed fails with ``Unavailable`` at once (the
node answers on the connection a request came on: no answer can come).
Those two, once a node was reached, are :class:`NoAnswer`: a result
long-poll asks again (:func:`miyaq.client.operations.wait_result`).

An ERROR without ``req`` answers a message that has none, a SUBMIT (or a
WITHDRAW). With the code ``forbidden`` it says the node refuses this
client's key -- revoked while connected, or of a role that may not submit
(docs/protocol.md) -- so the client's submits (``on_refused``) and requests
still waiting for that node fail with ``Forbidden`` at once
(:meth:`RequestTable.refused`), as a request of its own would: before
2026-12-05 the ERROR was only logged and ``submit(wait=True)`` waited its
whole ``submit_timeout`` for an acknowledgement that could not come, to
raise ``Timeout``.

Deadlines are kept in a heap beside ``open`` (:attr:`RequestTable.deadlines`),
so the earliest one is read at the head (:meth:`RequestTable.next_due`, which
the asyncio driver asks after every message, submit and request) and a timer
pass touches only the requests that are due (:meth:`RequestTable.check_deadlines`).
An answered or withdrawn request leaves its entry behind, passed over when it
comes to the head; the heap is rebuilt from ``open`` when such entries
outnumber the live ones, so it stays within about twice the open requests.
Before 2026-12-05 both walked every open request: with 10,000 result
long-polls open an asyncio client spent about 250 µs of CPU per message,
and 10% of a core doing nothing.
"""
from __future__ import annotations

import heapq
import itertools
import logging
from typing import Any, Callable

from ..errors import Forbidden, MiyaqError, Timeout, Unavailable, from_wire
from ..logs import LogLimiter
from ..protocol import commands as c
from .first_contact import no_connection
from .nodes import Nodes
from .resolver import Resolver, Send, Waiter

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a node's errors for no request may repeat: a few lines a minute

CONNECT_WAIT = 1.5
"""Seconds a request waits for a connection to its node."""
CONNECT_RETRY = 0.01
"""Seconds between two tries of a request whose node is not connected."""
STALE_SLACK = 64
"""Entries of answered requests the deadline heap may hold beyond as many as
the open requests before it is rebuilt (a small table is never rebuilt)."""


class NoAnswer(Unavailable):
    """The client's own ``Unavailable`` for a request no node will answer:
    its connection closed, or its node was not connected for
    :data:`CONNECT_WAIT` -- after a node was reached (before, it is the
    first-contact error). Never a node's answer (``from_wire`` makes
    ``Unavailable``): a node that answers ``unavailable`` is not asked again
    in a loop."""


#: Requests whose answer waits for the node's log (docs/durability.md): a
#: timeout of one does not mean the change was not made.
_STORED_ANSWERS = {c.CANCEL: "cancel", c.ACK: "ack", c.NACK: "nack", c.DEAD: "dead-letter retry or purge"}


def _unanswered(command: bytes) -> Timeout:
    """The error of a request the node did not answer in time. A CANCEL,
    ACK, NACK or DEAD is answered once the node's log has its change: the
    change may be made, its answer held by a slow or failing disk -- said,
    since asking again then finds it done (``False``)."""
    what = _STORED_ANSWERS.get(command)
    if what is None:
        return Timeout("the node did not answer in time")
    return Timeout(f"the node did not answer the {what} in time; it may have been made all the same (the answer "
                   "waits until the node's log has it: a slow or failing disk), so asking again may find it done")


class RequestTable:
    def __init__(self, nodes: Nodes, send: Send, resolver: Resolver,
                 on_refused: Callable[[int, MiyaqError], int] = lambda node, error: 0) -> None:
        """``on_refused(node, error)``: node ``node`` refuses the client's key
        (:meth:`refused`); fail the submits still waiting for its
        acknowledgement with ``error``, and say how many."""
        self.nodes = nodes
        self._send = send
        self._resolver = resolver
        self._on_refused = on_refused
        self._req = itertools.count(1)
        self.open: dict[int, tuple[Waiter, float, int, bytes]] = {}   # req -> (waiter, deadline, node, command)
        # (deadline, req) of every open request, a heap; an entry whose req is no
        # longer in `open` (answered, withdrawn, failed) is passed over at the head.
        # A req is never reused, so an entry whose req is open is that request's.
        self.deadlines: list[tuple[float, int]] = []
        # Waiting for a connection: (node, command, body, since).
        self.unsent: list[tuple[int, bytes, dict[str, Any], float]] = []

    def next_req(self) -> int:
        return next(self._req)

    def start(self, node: int, command: bytes, body: dict[str, Any], waiter: Waiter | None,
              deadline: float, now: float) -> None:
        """Send ``body`` (which carries its ``req``); ``waiter`` None: the
        reply is the core's own (discovery) and is not tracked here."""
        if waiter is not None:
            self.open[body["req"]] = (waiter, deadline, node, command)
            heapq.heappush(self.deadlines, (deadline, body["req"]))
            self._bound()
        if not self._send(node, command, body) and waiter is not None:
            self.unsent.append((node, command, body, now))   # not connected (yet)

    def abandon(self, req: int) -> tuple[int, bytes] | None:
        """Forget request ``req``: its caller stopped waiting. Its node and
        command if it was sent (the node may hold it: a long-poll to
        withdraw), else None (not sent yet, or answered already)."""
        entry = self.open.pop(req, None)
        if entry is None:
            return None
        if any(body["req"] == req for _, _, body, _ in self.unsent):
            self.unsent = [u for u in self.unsent if u[2]["req"] != req]
            return None
        return entry[2], entry[3]

    def retry_unsent(self, now: float) -> None:
        unsent, self.unsent = self.unsent, []
        for node, command, body, since in unsent:
            if body["req"] not in self.open or self._send(node, command, body):
                continue
            if now - since > CONNECT_WAIT:
                waiter = self.open.pop(body["req"])[0]
                self._resolver.fail(waiter, self._no_connection(node))
            else:
                self.unsent.append((node, command, body, since))

    def check_deadlines(self, now: float) -> None:
        """Fail the requests whose deadline passed: only those are looked at
        (they are at the head of the heap)."""
        while self.deadlines and self.deadlines[0][0] <= now:
            req = heapq.heappop(self.deadlines)[1]
            entry = self.open.pop(req, None)
            if entry is None:
                continue            # answered or withdrawn meanwhile
            waiter = entry[0]
            unsent = [node for node, _, body, _ in self.unsent if body["req"] == req]
            if unsent:
                self._resolver.fail(waiter, self._no_connection(unsent[0]))
            else:
                self._resolver.fail(waiter, _unanswered(entry[3]))

    def _no_connection(self, node: int) -> Unavailable:
        error = no_connection(self.nodes, node)
        return NoAnswer(error.message) if self.nodes.reached else error

    def next_due(self, now: float) -> float | None:
        """When :meth:`check_deadlines` (or a retry of an unsent request) is
        next due; None: nothing is open. Amortised O(log n): entries of
        requests no longer open are dropped from the head."""
        if self.unsent:
            return now + CONNECT_RETRY
        open_, deadlines = self.open, self.deadlines
        if not open_:
            deadlines.clear()
            return None
        self._bound()
        while deadlines[0][1] not in open_:
            heapq.heappop(deadlines)
        return deadlines[0][0]

    def _bound(self) -> None:
        """Rebuild the heap from ``open`` when entries of requests no longer
        open outnumber the open ones (O(n), after at least n of them left:
        amortised O(1) a request)."""
        if len(self.deadlines) > 2 * len(self.open) + STALE_SLACK:
            self.deadlines = [(entry[1], req) for req, entry in self.open.items()]
            heapq.heapify(self.deadlines)

    def node_lost(self, node: int) -> int:
        """The connection to ``node`` closed: the requests sent on it fail
        now with ``Unavailable`` (a node answers on the connection the
        request came on, so no answer can come; an operation that may ask
        another node does so at once). Those still waiting for a connection
        stay. How many failed."""
        waiting = {body["req"] for _, _, body, _ in self.unsent}
        lost = [req for req, entry in self.open.items() if entry[2] == node and req not in waiting]
        if lost:
            error = NoAnswer(f"the connection to {self.nodes.endpoints[node]} closed before it answered")
            for req in lost:
                self._resolver.fail(self.open.pop(req)[0], error)
        return len(lost)

    def on_reply(self, node: int, command: bytes, body: dict[str, Any]) -> None:
        req = body.get("req")
        entry = self.open.pop(req, None) if type(req) is int else None
        if entry is None:
            if command == c.ERROR and body.get("req") is None:
                if body.get("code") == Forbidden.code:
                    self.refused(node, body)
                else:
                    _log.warning("error", "node %s: %s", self.nodes.endpoints[node], body.get("message"))
            return
        if command == c.REPLY:
            self._resolver.set(entry[0], body)
        else:
            self._resolver.fail(entry[0], from_wire(body))

    def refused(self, node: int, body: dict[str, Any]) -> None:
        """Node ``node`` answered a message without ``req`` (a SUBMIT) with
        ERROR ``forbidden`` (``body``): it refuses this client's key, and says
        so to no request in particular. Every submit it has not acknowledged
        and every request sent to it fail now with that ``Forbidden`` (a
        submit sent just before the key was revoked may have been stored all
        the same, its acknowledgement still on the way -- as after a
        ``Timeout``). Logged, a few lines a minute."""
        error = from_wire(body)
        if not isinstance(error, Forbidden):      # the code said forbidden: never anything else
            error = Forbidden(error.message)
        waiting = {b["req"] for _, _, b, _ in self.unsent}
        sent = [req for req, entry in self.open.items() if entry[2] == node and req not in waiting]
        for req in sent:
            self._resolver.fail(self.open.pop(req)[0], error)
        submits = self._on_refused(node, error)
        _log.warning("forbidden", "node %s refuses this client's key: %s (%d submit(s) and %d request(s) failed "
                     "with Forbidden)", self.nodes.endpoints[node], error.message, submits, len(sent))

    def fail_all(self, error: Any) -> None:
        for waiter, _, _, _ in self.open.values():
            self._resolver.fail(waiter, error)
        self.open.clear()
        self.deadlines.clear()
        self.unsent.clear()
