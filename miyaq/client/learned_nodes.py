"""What a client learns from the ring's RING replies: the new service
endpoints, dialled at a free index; the departed ones, retired; the
placement the reply describes (:mod:`.placement`). :class:`LearnedNodes` is
:class:`~miyaq.client.nodes.Nodes`'s base: the nodes a client knows, this
part how that list follows the ring.

Part of the client's sans-I/O core, as :mod:`.nodes`: no sockets, no
clocks -- the caller passes ``now``.

Nodes move: a member restarted in a new container, or replaced in a rolling
upgrade, comes back at another address. An endpoint learned from a RING
reply (never one the user gave) that no RING reply has named for
:data:`DEPARTED_GRACE` seconds, and on which nothing is in flight, is
*retired* (:meth:`LearnedNodes.from_ring`): the driver closes its connection and
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

from typing import Any, Callable, Iterable

from .. import constants
from ..protocol.commands import MAX_ENDPOINT_CHARS
from .placement import Placement, placement_from_ring
from .sizes import Limits

__all__ = ["DEPARTED_GRACE", "MAX_NODES", "REUSE_AFTER", "LearnedNodes"]

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


class LearnedNodes:
    """How a :class:`~miyaq.client.nodes.Nodes` follows the ring (its base).
    The nodes set the attributes below (their meaning: :class:`Nodes`) and
    give ``index``, which turns a node's endpoint or index into its index."""

    endpoints: list[str]
    given: int
    next_slot: int
    aliases: dict[str, int]
    refused: set[str]
    retired: frozenset[int]
    down: frozenset[int]
    up: frozenset[int]
    failures: dict[int, str]
    limits: dict[int, Limits | None]
    placement: Placement | None
    _named: dict[int, float]
    _retired_at: dict[int, float]
    index: Callable[[str | int | None], int]

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

    def _free_slot(self, now: float) -> int:
        """The lowest index retired at least :data:`REUSE_AFTER` seconds
        before ``now``, else the next one."""
        ready = [i for i in self.retired if now - self._retired_at.get(i, 0.0) >= REUSE_AFTER]
        return min(ready) if ready else len(self.endpoints)
