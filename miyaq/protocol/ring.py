"""Consistent-hash ring with virtual nodes: where a task lives.

Constraints:

* Placement must be identical in every process on every machine, so points
  and keys are hashed with ``blake2b(digest_size=8)`` read as a big-endian
  64-bit integer. Python's ``hash()`` is salted per process and is never used.
* A node with weight ``w`` owns ``max(1, round(w * vnodes))`` points named
  ``"<node_id>#<i>"``; more points, more of the hash space. Points that collide
  are ordered by node id, so the order never depends on insertion order.
* A key hashing to ``h`` belongs to the first point at or after ``h``,
  wrapping around at 2**64. Lookups are a bisect (O(log points)) followed by a
  walk that stops at the n-th distinct node; each walk is kept, per starting
  point and n (at most points x members of them: every task placed on the
  ring walks from one of its points), so placing a task is a hash, a
  bisect and a dictionary read.
* A :class:`Ring` is immutable; a membership change builds a new ring. Only
  the points of the changed node move, which is what keeps hand-off small.
"""
from __future__ import annotations

import bisect
import hashlib
import logging
import math
from collections.abc import Mapping
from types import MappingProxyType

from miyaq.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_VNODES = 160
"""Virtual nodes per unit of weight."""

_SPACE = 1 << 64
_blake2b = hashlib.blake2b


def stable_hash(data: bytes | str) -> int:
    """The ring's 64-bit hash of ``data`` (a ``str`` is hashed as UTF-8)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"routing key must be bytes or str, not {type(data).__name__}")
    return int.from_bytes(_blake2b(data, digest_size=8).digest(), "big")


MAX_WEIGHT = 1000.0
"""The largest ring weight: a node a thousand times another."""
MAX_VNODES = 4096
"""The most points a member of weight 1 gets."""
MAX_POINTS = 65_536
"""The most points a ring has in all (409 members of weight 1 at the default
vnodes): building one costs a hash a point, in every node and client, each
time the ring changes. A weight of 5,000 made 800,160 points and stalled
every node 2 s, past its ZooKeeper session (before 2026-12-05)."""


def check_weight(weight: object, name: str = "weight") -> float:
    """Return ``weight`` as a float if it is a finite number > 0 and at most
    MAX_WEIGHT, else raise ``ConfigError`` naming it ``name``."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"{name} must be a number, got {weight!r}")
    try:
        value = float(weight)
    except OverflowError:       # an int past a float's range: a member znode of 401 digits stopped every start
        value = math.inf
    if not math.isfinite(value) or value <= 0 or value > MAX_WEIGHT:
        shown = repr(weight) if len(repr(weight)) <= 40 else repr(weight)[:40] + "..."
        raise ConfigError(f"{name} must be finite, > 0 and at most {MAX_WEIGHT:g}, got {shown}")
    return value


def check_points(weights: Mapping[str, float], vnodes: int) -> int:
    """The points a ring of ``weights`` has (weight × vnodes a member, at
    least one); ``ConfigError`` past MAX_POINTS."""
    total = sum(max(1, round(weight * vnodes)) for weight in weights.values())
    if total > MAX_POINTS:
        raise ConfigError(f"a ring of {total} points is over the {MAX_POINTS} a ring may have: "
                          "fewer members, lower weights or fewer vnodes")
    return total


def check_vnodes(vnodes: object, name: str = "vnodes") -> int:
    """``vnodes`` if it is an integer 1..MAX_VNODES, else ``ConfigError``."""
    if isinstance(vnodes, bool) or not isinstance(vnodes, int) or not 1 <= vnodes <= MAX_VNODES:
        raise ConfigError(f"{name} must be an integer 1..{MAX_VNODES}, got {vnodes!r}")
    return vnodes


def _check_member(node_id: object, weight: object) -> float:
    if not isinstance(node_id, str) or not node_id:
        raise ConfigError(f"ring member ids must be non-empty strings, got {node_id!r}")
    return check_weight(weight, f"weight of {node_id!r}")


class Ring:
    """An immutable consistent-hash ring built from ``{node_id: weight}``."""

    __slots__ = ("_weights", "_vnodes", "_hashes", "_owners", "_members", "_walks")

    def __init__(self, members: Mapping[str, float], vnodes: int = DEFAULT_VNODES) -> None:
        check_vnodes(vnodes)
        if not isinstance(members, Mapping):
            raise ConfigError("ring members must be a mapping of node id to weight")
        if not members:
            raise ConfigError("a ring needs at least one member")
        weights = {node_id: _check_member(node_id, w) for node_id, w in members.items()}
        check_points(weights, vnodes)
        points: list[tuple[int, str]] = []
        for node_id, weight in weights.items():
            count = max(1, round(weight * vnodes))
            points.extend((stable_hash(f"{node_id}#{i}"), node_id) for i in range(count))
        points.sort()
        self._weights = weights
        self._vnodes = vnodes
        self._hashes = [h for h, _ in points]
        self._owners = [node_id for _, node_id in points]
        self._members = tuple(sorted(weights))
        self._walks: dict[tuple[int, int], tuple[str, ...]] = {}   # (first point, n) -> nodes

    # -- lookups ------------------------------------------------------------

    def preference_list(self, routing_key: bytes | str, n: int) -> list[str]:
        """The first ``n`` distinct nodes clockwise from ``hash(routing_key)``.

        Fewer than ``n`` when the ring has fewer members. Index 0 is the
        primary (rank 0), then rank 1, and so on.
        """
        if type(n) is not int or n < 0:
            raise ConfigError(f"n must be a non-negative integer, got {n!r}")
        want = min(n, len(self._members))
        if want == 0:
            return []
        owners = self._owners
        total = len(owners)
        start = bisect.bisect_left(self._hashes, stable_hash(routing_key)) % total
        walk = self._walks.get((start, want))
        if walk is None:
            found: list[str] = []
            for step in range(total):
                node_id = owners[(start + step) % total]
                if node_id not in found:
                    found.append(node_id)
                    if len(found) == want:
                        break
            walk = self._walks[(start, want)] = tuple(found)
        return list(walk)

    def primary(self, routing_key: bytes | str) -> str:
        """The rank-0 holder of ``routing_key``."""
        return self.owner_at(stable_hash(routing_key))

    def owner_at(self, point: int) -> str:
        """The node owning hash ``point`` (0 <= point < 2**64)."""
        index = bisect.bisect_left(self._hashes, point)
        return self._owners[index % len(self._owners)]

    def share(self) -> dict[str, float]:
        """Fraction of the hash space each node owns as primary (sums to 1)."""
        owned = dict.fromkeys(self._members, 0)
        hashes = self._hashes
        previous = hashes[-1] - _SPACE  # the arc of point 0 wraps around zero
        for point, node_id in zip(hashes, self._owners):
            owned[node_id] += point - previous
            previous = point
        return {node_id: arc / _SPACE for node_id, arc in owned.items()}

    # -- properties and protocol --------------------------------------------

    @property
    def members(self) -> tuple[str, ...]:
        """Node ids on the ring, sorted."""
        return self._members

    @property
    def weights(self) -> Mapping[str, float]:
        """Read-only ``{node_id: weight}``."""
        return MappingProxyType(self._weights)

    @property
    def vnodes(self) -> int:
        """Virtual nodes per unit of weight."""
        return self._vnodes

    @property
    def points(self) -> int:
        """Total number of virtual nodes on the ring."""
        return len(self._hashes)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._weights

    def __iter__(self):
        return iter(self._members)

    def _key(self) -> tuple:
        return (self._members, tuple(sorted(self._weights.items())), self._vnodes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        weights = ", ".join(f"{k}={w:g}" for k, w in sorted(self._weights.items()))
        return f"Ring({weights}; vnodes={self._vnodes})"
