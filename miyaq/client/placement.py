"""Where a new submit goes: the node the ring makes its task's first holder.

In a cluster the first node of a task's preference list on the
consistent-hash ring (rank 0) runs it; the others hold standby copies. A
submit sent to that node is stored and made ready there at once; sent to
any other node, it reaches its first holder in that node's REPLICATE, one
hop (and one wake-up of each node) later. A client builds the same ring
(:class:`~miyaq.protocol.ring.Ring`) from the RING replies it asks for to
discover nodes, and sends each task's first try to its first holder.

Only a hint, never a rule: any node coordinates any submit. With no ring
yet, a ring of one member, a ring the client may not build (malformed, or
over :data:`~miyaq.protocol.ring.MAX_POINTS` points), a first holder the client has no
connection to (or whose connection is down), or a retry, the client picks
the next node round-robin, as it always did. A ring that changed since the
last RING reply (every ``DISCOVERY_INTERVAL`` seconds) sends some tasks to
a node that is no longer their first holder: they take the longer way.

Part of the client's sans-I/O core: no sockets, no clocks.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..errors import MiyaqError
from ..protocol.ring import MAX_POINTS, Ring

logger = logging.getLogger(__name__)

"""The most virtual nodes a client builds a ring of (256 members of weight
1.6 at the default 160 a unit): a RING reply that asks for more -- a
misconfigured or hostile node -- is not worth the client's CPU; its
submits go round-robin."""


class Placement:
    """A ring and the connection (node index) that reaches each of its members."""

    __slots__ = ("ring", "index")

    def __init__(self, ring: Ring, index: dict[str, int]) -> None:
        self.ring = ring
        self.index = index

    def home(self, routing_key: str) -> int:
        """The index of the connection to ``routing_key``'s first holder; -1
        when the client has none to it."""
        return self.index.get(self.ring.primary(routing_key), -1)


def placement_from_ring(body: Mapping[str, Any], index_of: Mapping[str, int],
                        current: Placement | None) -> Placement | None:
    """The placement a RING reply describes (``members``: node id -> ``weight``
    and ``service`` endpoint; ``vnodes``), with ``index_of`` mapping service
    endpoints to the client's connections. None when there is nothing to
    place by: fewer than two members, or a reply the client may not build
    a ring of. ``current`` is reused when the ring did not change (a ring
    costs a hash per point to build)."""
    members = body.get("members")
    vnodes = body.get("vnodes")
    if not isinstance(members, Mapping) or len(members) < 2 or type(vnodes) is not int or vnodes < 1:
        return None
    weights: dict[str, float] = {}
    index: dict[str, int] = {}
    points = 0
    for node_id, info in members.items():
        weight = info.get("weight") if isinstance(info, Mapping) else None
        if not isinstance(node_id, str) or isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return None
        if not 0 < weight < MAX_POINTS:
            return None
        weights[node_id] = float(weight)
        points += max(1, round(weight * vnodes))
        service = info.get("service")
        if isinstance(service, str) and service in index_of:
            index[node_id] = index_of[service]
    if points > MAX_POINTS or not index:
        return None
    if current is not None and current.ring.vnodes == vnodes and dict(current.ring.weights) == weights:
        return Placement(current.ring, index)
    try:
        ring = Ring(weights, vnodes)
    except MiyaqError as err:
        logger.debug("miyaq client: not placing submits by a ring it cannot build: %s", err)
        return None
    return Placement(ring, index)
