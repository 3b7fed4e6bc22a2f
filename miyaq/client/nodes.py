"""The nodes a client knows: their endpoints, which one to use next (a new
submit's first holder on the ring when known: :mod:`.placement`), ring
discovery, and what first contact found (whether any node was reached, why
a handshake failed: what :mod:`.first_contact` says when none was).

Part of the client's sans-I/O core (:mod:`miyaq.client.core`): no sockets,
no clocks -- the caller passes ``now``. A node is named by its index in
:attr:`Nodes.endpoints`, and the index of a node stays its own for as long
as the client uses that node: the down and up sets, the limits, the
placement, the aliases, the submits and requests in flight and the driver's
connections are all kept by index.

Nodes move: an endpoint learned from the ring whose node left it is
retired, and its index taken by a later one (:mod:`.learned_nodes`, the
base of :class:`Nodes`: how the list follows the ring's RING replies). A
retired index is never picked, ordered, placed or found by its endpoint.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

from .learned_nodes import LearnedNodes
from .placement import Placement
from .sizes import Limits, limits_from

DISCOVERY_INTERVAL = 10.0
"""Seconds between two RING requests once the ring is known."""
FIRST_DISCOVERY_GAP = 0.25
"""Soon after start the ring may still be forming: ask again after this, doubling."""

def _not_known(endpoint: str) -> str | None:
    """No reason known why ``endpoint`` does not answer (no probe)."""
    return None


class Nodes(LearnedNodes):
    """Endpoints, round-robin choice, discovery schedule and what first
    contact found.

    ``source`` says where the endpoints came from (``"given"``, or e.g.
    ``"MIYAQ_CONNECT"``), for messages. ``secure`` (CURVE keys in use) changes
    the first-contact message (:mod:`.first_contact`): a handshake refused
    looks like silence.
    """

    def __init__(self, endpoints: list[str], *, source: str = "given", secure: bool = False,
                 discover: bool = True) -> None:
        self.endpoints = list(endpoints)
        self.source = source
        self.secure = secure
        self.discover = discover
        self.reached = False          # True once any node took a message from us
        # Nodes whose connection closed and is not up again (replaced whole by the
        # I/O context, read by callers' threads: a frozenset, never changed in place).
        self.down: frozenset[int] = frozenset()
        # Nodes whose connection completed its handshake and has not closed since
        # (the same rules). A connection not up yet takes no message (ZMQ_IMMEDIATE):
        # a submit meant for it goes to another node.
        self.up: frozenset[int] = frozenset()
        # Ring endpoints of nodes reached over a unix socket -> that socket's index.
        self.aliases: dict[str, int] = {}
        # Ring endpoints the transport refused to dial (not an endpoint libzmq
        # accepts): not tried again, so a bad RING reply is logged once.
        self.refused: set[str] = set()
        # Why the last handshake with a node failed, for nodes not up since
        # (``handshake_failed``; replaced whole, read by callers' threads).
        self.failures: dict[int, str] = {}
        self.placement: Placement | None = None    # from the last RING reply (None: round-robin)
        # Each node's limits, from its RING replies (None: it answered without
        # any, a node of before 2026-12-04); a node not asked yet is taken to have
        # the limits last learned of any (the nodes of a cluster share them).
        self.limits: dict[int, Limits | None] = {}
        self._last_limits: Limits | None = None
        # The endpoints the user gave: indexes below this are never retired.
        self.given = len(self.endpoints)
        # Indexes of learned endpoints retired (their node left the ring), free for
        # the next endpoint learned (replaced whole, read by callers' threads).
        self.retired: frozenset[int] = frozenset()
        # Learned index -> when a RING reply last named it (:data:`DEPARTED_GRACE`).
        self._named: dict[int, float] = {}
        # Retired index -> when (the caller's clock): reused REUSE_AFTER later.
        self._retired_at: dict[int, float] = {}
        # The index the endpoint being dialled takes (set by from_ring before it
        # hands the endpoint to ``dial``: the driver's connect opens it there).
        self.next_slot = len(self.endpoints)
        self._rr = itertools.count()
        self._ask_rr = itertools.count()
        self._next_discovery = 0.0
        self._discovery_gap = FIRST_DISCOVERY_GAP
        #: Why an endpoint does not answer, for the first-contact message
        #: (:func:`~miyaq.client.first_contact.unreachable`): a phrase of
        #: :func:`miyaq.protocol.reach.explain` the driver's probe found
        #: (:class:`miyaq.client.dialling.ReachProbes`), None when not known.
        #: Called only where a call fails for want of any node.
        self.explain: Callable[[str], str | None] = _not_known

    def __len__(self) -> int:
        return len(self.endpoints)

    def index(self, node: str | int | None) -> int:
        """The index of ``node``: an index, an endpoint this client knows
        (given, or found in the ring), or None: the first. Any other is an
        error in the caller -- TypeError, or ValueError naming the endpoints
        known -- never another node asked in its place (its answer would be
        taken for the one named)."""
        if node is None:
            return 0
        if isinstance(node, bool) or not isinstance(node, (int, str)):
            raise TypeError(f"node must be an endpoint (str), an index (int) or None, "
                            f"not {type(node).__name__}")
        if isinstance(node, int):
            if 0 <= node < len(self.endpoints):
                return node
        else:
            found = self._find(node)
            if found >= 0:
                return found
        in_use = self.in_use()
        known = ", ".join(in_use[:5]) + (" ..." if len(in_use) > 5 else "")
        raise ValueError(f"node {node!r} is not one this client knows (it knows {known})")

    def knows(self, endpoint: str) -> bool:
        """Whether ``endpoint`` is one this client uses (given, or learned
        and not retired; or a ring endpoint aliased to one)."""
        return self._find(endpoint) >= 0

    def _find(self, endpoint: str) -> int:
        retired = self.retired
        for i, known in enumerate(self.endpoints):
            if known == endpoint and i not in retired:
                return i
        return self.aliases.get(endpoint, -1)

    def in_use(self) -> list[str]:
        """The endpoints the client uses, by index (retired ones left out)."""
        retired = self.retired
        return [e for i, e in enumerate(self.endpoints) if i not in retired]

    def order(self, first: str | int | None) -> list[int]:
        """Every node, ``first`` first: where to ask for a task one node may
        not hold. Nodes whose connection closed and is not up again come
        last (a request to one waits for its connection first)."""
        start = self.index(first)
        retired = self.retired
        order = [start] + [i for i in range(len(self.endpoints)) if i != start and i not in retired]
        down = self.down
        if down:
            order = [i for i in order if i not in down] + [i for i in order if i in down]
        return order

    def handshake_failed(self, node: int, failure: str) -> None:
        """The last handshake with ``node`` failed for ``failure``
        (:func:`~miyaq.runtime.connections.handshake_failure`): the
        first-contact error says so until a connection to it is up. A
        vague reason (the node closed the connection) does not replace a
        specific one seen before: which of the two a retry sees is a race
        of the greetings."""
        from ..runtime.connections import SPECIFIC_FAILURES     # loaded with the client's I/O
        known = self.failures.get(node)
        if known == failure or (known in SPECIFIC_FAILURES and failure not in SPECIFIC_FAILURES):
            return
        self.failures = {**self.failures, node: failure}

    def mark(self, node: int, connected: bool) -> None:
        """What the connection to ``node`` did last: closed, or up (again)."""
        if connected:
            if node in self.failures:
                self.failures = {k: v for k, v in self.failures.items() if k != node}
            if node in self.down:
                self.down = self.down - {node}
            if node not in self.up:
                self.up = self.up | {node}
        else:
            if node not in self.down:
                self.down = self.down | {node}
            if node in self.up:
                self.up = self.up - {node}

    def pick(self, avoid: int = -1) -> int:
        """The next node round-robin, not ``avoid`` when there is another;
        never a retired index."""
        n = len(self.endpoints)
        retired = self.retired
        i = self._unretired(next(self._rr) % n, retired)
        if n - len(retired) > 1 and i == avoid:
            i = self._unretired((i + 1) % n, retired)
        return i

    def _unretired(self, i: int, retired: frozenset[int]) -> int:
        """``i``, or the first index after it (wrapping) that is not retired
        (the given ones never are)."""
        n = len(self.endpoints)
        while i in retired:
            i = (i + 1) % n
        return i

    def pick_to_ask(self) -> int:
        """The node the next discovery RING goes to, round-robin among the
        nodes whose connection is up; when none is, among those whose
        connection is not down; else any (never a retired index). A node
        whose connection closed cannot answer: asked in its turn, as
        before 2026-12-05, a client whose learned nodes had all moved spent
        most of its discoveries on dead endpoints."""
        retired = self.retired
        candidates = sorted(self.up - retired)
        if not candidates:
            down = self.down
            candidates = [i for i in range(len(self.endpoints)) if i not in down and i not in retired]
        if not candidates:
            return self.pick()
        return candidates[next(self._ask_rr) % len(candidates)]

    def home(self, wire: dict[str, Any]) -> int:
        """The node a new submit goes to: its task's first holder on the ring
        (routing key ``key``, else ``id``) when the client has a connection
        to it that is not down, else the next round-robin (:meth:`pick`), not
        that first holder."""
        placement = self.placement
        node = -1
        if placement is not None:
            key = wire.get("key")
            node = placement.home(key if isinstance(key, str) else wire["id"])
            if node >= 0 and node not in self.down:
                return node
        return self.pick(node)

    def learn_limits(self, node: int, value: Any) -> None:
        """Node ``node`` answered a RING whose ``limits`` field is ``value``
        (see :func:`limits_from`; None: an answer without any, or an error)."""
        limits = limits_from(value)
        if limits is not None:
            self.limits[node] = self._last_limits = limits
        elif self.limits.get(node) is None:     # an error answer keeps limits heard before
            self.limits[node] = None

    def limits_known(self, node: int) -> bool:
        """Whether the client has heard what node ``node`` takes: it answered
        a RING (with limits or without), or another node said its limits."""
        return node in self.limits or self._last_limits is not None

    def limits_for(self, node: int) -> Limits | None:
        """What node ``node`` takes in a SUBMIT, as far as the client knows
        (None: nothing learned, or a node that says none)."""
        return self.limits.get(node, self._last_limits)

    def discovery_due(self, now: float) -> bool:
        """True when a RING request should go out now (and schedules the next)."""
        if not self.discover or now < self._next_discovery:
            return False
        self._discovery_gap = min(DISCOVERY_INTERVAL, self._discovery_gap * 2)
        self._next_discovery = now + self._discovery_gap
        return True
