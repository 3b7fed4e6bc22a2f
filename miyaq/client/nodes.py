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

Nodes move: a member restarted in a new container, or replaced in a rolling
upgrade, comes back at another address. An endpoint learned from a RING
reply (never one the user gave) that no RING reply has named for
:data:`DEPARTED_GRACE` seconds, and on which nothing is in flight, is
*retired* (:meth:`Nodes.from_ring`): the driver closes its connection and
its index joins :attr:`Nodes.retired`. The list is never shifted -- every
index other parts hold stays right -- and an endpoint learned
:data:`REUSE_AFTER` seconds or more later takes the lowest retired index
(:attr:`Nodes.next_slot`; the driver dials it there) before the list grows.
:data:`MAX_NODES` bounds the endpoints in use, so a new member is learned
once departed ones are retired. A retired index keeps its old endpoint in :attr:`Nodes.endpoints` (for the messages of a
request that raced the retirement) until it is reused, but is never picked,
ordered, placed or found by its endpoint.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

from .. import constants
from ..protocol.commands import MAX_ENDPOINT_CHARS
from .placement import Placement, placement_from_ring
from .sizes import Limits, limits_from

DISCOVERY_INTERVAL = 10.0
"""Seconds between two RING requests once the ring is known."""
FIRST_DISCOVERY_GAP = 0.25
"""Soon after start the ring may still be forming: ask again after this, doubling."""
MAX_NODES = 256
"""Most node endpoints a client uses at once (given and learned; retired
ones do not count)."""
REUSE_AFTER = 5.0
"""Seconds a retired index stays unused. A caller that named the node (an
endpoint turned into its index in the caller's thread) and whose request
reaches the core only after the retirement finds the index retired -- and
fails ``Unavailable`` -- rather than taken by another node, whose answer
would be read as the one named (before 2026-12-05 an index could be reused
by the same RING reply that retired it: a review found 4 of 1,000
``status(node=...)`` calls answered by another node)."""
DEPARTED_GRACE = constants.DEPARTED_GRACE
"""Seconds an endpoint learned from the ring may go unnamed by every RING
reply before the client retires it (once nothing is in flight on it): the
grace the cluster keeps a departed member for (60 s). A member away for
less -- a restart at the same address -- keeps its connection."""


def _not_known(endpoint: str) -> str | None:
    """No reason known why ``endpoint`` does not answer (no probe)."""
    return None


class Nodes:
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

    def _free_slot(self, now: float) -> int:
        """The lowest index retired at least :data:`REUSE_AFTER` seconds
        before ``now``, else the next one."""
        ready = [i for i in self.retired if now - self._retired_at.get(i, 0.0) >= REUSE_AFTER]
        return min(ready) if ready else len(self.endpoints)

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

    def from_ring(self, body: dict[str, Any], via: str | None = None,
                  dial: Callable[[str], bool | None] = lambda endpoint: True, *, now: float | None = None,
                  release: Callable[[list[int]], Iterable[int]] = lambda departed: ()) -> list[str]:
        """The new service endpoints a RING reply names, and the placement it
        describes. Each new endpoint is handed to ``dial`` (the driver
        connects it at index :attr:`next_slot`) and added only if that
        returned True: an endpoint the transport refuses (a buggy or hostile
        node's reply; the transport logs it) is remembered in
        :attr:`refused` and never offered again (one it could not dial now,
        ``dial`` returning None, is offered again by the next reply), and the
        indexes of endpoints and connections stay aligned. ``via``: the
        endpoint the reply came from; when it is a unix socket (``ipc://``),
        the answering member (``node``) is already reached there and its TCP
        endpoint is not dialled as well.

        ``now`` (the caller's clock): when the reply came. Every learned
        node it names is marked seen then; the learned nodes no reply has
        named for :data:`DEPARTED_GRACE` seconds are handed to ``release``
        (before any new endpoint is dialled), which closes the connections of
        those with nothing in flight and returns their indexes: they are
        retired (:attr:`retired`), and a new endpoint takes one only
        :data:`REUSE_AFTER` seconds later. Without ``now``, nothing is
        retired."""
        members = body.get("members")
        services: list[str] = []
        if isinstance(members, dict):
            for node_id, info in members.items():
                service = info.get("service") if isinstance(info, dict) else None
                if not isinstance(service, str) or len(service) > MAX_ENDPOINT_CHARS:
                    continue
                if via is not None and via.startswith("ipc://") and node_id == body.get("node"):
                    self._alias(service, self.index(via))
                services.append(service)
        if now is not None:
            self._retire_departed(services, now, release)
        index_of = self._indexes_in_use()
        new: list[str] = []
        for service in services:
            if service in self.aliases or service in self.refused or service in index_of:
                continue
            # A reply without ``now`` retires nothing, and may reuse any retired index.
            slot = self.next_slot = self._free_slot(now if now is not None else float("inf"))
            if slot >= MAX_NODES:
                continue        # known ones may still be aliased above; no new one
            dialled = dial(service)
            if dialled is None:
                continue        # not now (no file descriptor left): the next RING reply offers it again
            if not dialled:
                if len(self.refused) < MAX_NODES:
                    self.refused.add(service)
                continue
            if slot < len(self.endpoints):
                self.endpoints[slot] = service
                self.retired = self.retired - {slot}
                del self._retired_at[slot]
            else:
                self.endpoints.append(service)
            if now is not None:
                self._named[slot] = now
            index_of[service] = slot
            new.append(service)
        index_of.update(self.aliases)
        self.placement = placement_from_ring(body, index_of, self.placement)
        return new

    def _indexes_in_use(self) -> dict[str, int]:
        """Endpoint -> index of every endpoint in use (retired ones left out)."""
        retired = self.retired
        return {endpoint: i for i, endpoint in enumerate(self.endpoints) if i not in retired}

    def _alias(self, service: str, node: int) -> None:
        """``service`` (a member's TCP endpoint) is node ``node``, reached on
        a unix socket: its one alias. One it had before goes -- its service
        moved, and another member may be there now (before 2026-12-05 the
        old name stayed an alias of this node for good: a new member at that
        address was never dialled, and asked by its endpoint, this node
        answered in its place)."""
        for old in [alias for alias, i in self.aliases.items() if i == node and alias != service]:
            del self.aliases[old]
        self.aliases[service] = node

    def _retire_departed(self, services: list[str], now: float,
                         release: Callable[[list[int]], Iterable[int]]) -> None:
        """Mark the learned nodes ``services`` names as seen at ``now``; retire
        those unnamed for :data:`DEPARTED_GRACE` that ``release`` let go."""
        named = self._named
        retired = self.retired
        index_of = self._indexes_in_use()
        index_of.update(self.aliases)
        for service in services:
            node = index_of.get(service, -1)
            if node >= self.given:
                named[node] = now
        departed = [i for i in range(self.given, len(self.endpoints))
                    if i not in retired and now - named.setdefault(i, now) >= DEPARTED_GRACE]
        if departed:
            for node in release(departed):
                self._retire(node, now)

    def _retire(self, node: int, now: float) -> None:
        """Forget learned node ``node`` (its connection is closed): its index
        is free for an endpoint learned :data:`REUSE_AFTER` seconds on."""
        self.retired = self.retired | {node}
        self._retired_at[node] = now
        self._named.pop(node, None)
        self.limits.pop(node, None)
        if node in self.down:
            self.down = self.down - {node}
        if node in self.up:
            self.up = self.up - {node}
        if node in self.failures:
            self.failures = {k: v for k, v in self.failures.items() if k != node}
        for alias in [alias for alias, i in self.aliases.items() if i == node]:
            del self.aliases[alias]

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
