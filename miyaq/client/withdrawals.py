"""The requests a caller stopped waiting for (its call cancelled or
interrupted), for the client's protocol core (:mod:`.core`).

Such a request is forgotten; if it is a long-poll the node holds (RESULT,
RECEIVE) the node is told to drop it (WITHDRAW) -- it would otherwise hold
one of the connection's ``max_waiters_per_connection`` places until its
timeout, and a RECEIVE would lease the next task to nobody. A task such a
RECEIVE brings anyway (sent before the WITHDRAW arrived) is given back
unstarted. Runs in the driver's one I/O context, as the core does.
"""
from __future__ import annotations

from typing import Any, Callable

from ..protocol import commands as c
from .requests import RequestTable

LONG_POLLS = frozenset({c.RESULT, c.RECEIVE})
"""Requests the node holds until there is something to answer: a caller that
stops waiting for one withdraws it (:meth:`Withdrawals.withdraw`)."""
MAX_WITHDRAWN_KEPT = 1024
"""Withdrawn RECEIVEs remembered, to give back a task one brings anyway."""


class Withdrawals:
    """Withdraws the requests their callers stopped waiting for, and gives
    back what a withdrawn RECEIVE brings. ``send`` is the core's (False:
    the node is not connected)."""

    def __init__(self, requests: RequestTable, send: Callable[[int, bytes, dict[str, Any]], bool]) -> None:
        self.requests = requests
        self._send = send
        # RECEIVEs withdrawn after they were sent: req -> node. A task one brings
        # after all is given back (bounded: the oldest are forgotten).
        self.receives: dict[int, int] = {}

    def withdraw(self, req: int) -> None:
        """The caller of request ``req`` stopped waiting: see the module's docstring."""
        sent = self.requests.abandon(req)
        if sent is None or sent[1] not in LONG_POLLS:
            return
        node, command = sent
        self._send(node, c.WITHDRAW, {"reqs": [req]})
        if command == c.RECEIVE:
            withdrawn = self.receives
            withdrawn[req] = node
            if len(withdrawn) > MAX_WITHDRAWN_KEPT:
                del withdrawn[next(iter(withdrawn))]

    def answered(self, node: int, req: int, body: dict[str, Any], now: float) -> None:
        """The answer to a withdrawn RECEIVE came: a task it brings goes back
        to the node (:meth:`give_back`)."""
        del self.receives[req]
        self.give_back(node, body.get("task"), now)

    def give_back(self, node: int, task: Any, now: float) -> None:
        """``task``, the map a RECEIVE answer of node ``node`` brings, is
        taken by nobody (its RECEIVE withdrawn, or its caller cancelled as the
        answer came): back to the node unstarted (NACK ``returned``: no
        attempt spent), its answer unread. Anything but a task map (None: no
        task came) is passed over."""
        if isinstance(task, dict) and isinstance(task.get("id"), str) and type(task.get("attempt")) is int:
            self.requests.start(node, c.NACK, {"req": self.requests.next_req(), "id": task["id"],
                                               "attempt": task["attempt"], "returned": True}, None, 0.0, now)

    def forget(self, node: int) -> None:
        """Node ``node``'s connection is closed for good: no answer comes from it."""
        if node in self.receives.values():
            self.receives = {req: n for req, n in self.receives.items() if n != node}
