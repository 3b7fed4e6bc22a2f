"""Where a cluster lives in ZooKeeper, and the JSON records its znodes hold.

Layout under ``/miyaq/<cluster>/``:

``members/<node_id>``
    Ephemeral; the :class:`~miyaq.cluster.ring_view.Member` as JSON, and
    (since 2026-12-06) ``"cluster_key"``: the fingerprint of the node's
    cluster key (:data:`CLUSTER_KEY_FIELD`; ``"none"`` for a node without
    keys), which a starting node compares with its own
    (:mod:`miyaq.cluster.zk_keys`). It vanishes when the node's session
    ends (clean stop, crash, expiry).
``desired``
    Persistent; the operator's intent, JSON
    ``{"nodes": {node_id: {"join": bool, "weight": float | null}}}``.
    ``join``/``leave``/``set_weight`` (from a node or from
    :class:`~miyaq.cluster.ring_admin.RingAdmin`) only ever change this znode,
    with compare-and-set on its version.
``ring``
    Persistent; the published ring, written only by the leader, JSON
    ``{"epoch", "members": [ids], "weights": {id: w}, "leader": id,
    "vnodes": int, "nodes": {id: Member}}`` (``nodes`` carries the endpoints,
    so a view never depends on reading ``members/`` at the same moment).
``election/``
    kazoo ``Election`` (lock) contenders.

Constraints: this module does no I/O. Decoders trust nothing: corrupt JSON, a
wrong type or an invalid id raises ``ConfigError``. JSON is written with
sorted keys and no spaces, so equal records are equal bytes.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from miyaq.protocol.ring import DEFAULT_VNODES, check_points, check_vnodes
from miyaq.cluster.ring_view import Member, RingView, check_node_id
from miyaq.protocol.ring import check_weight
from miyaq.errors import ConfigError
from miyaq.logs import LogLimiter

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # the leader reads desired every interval: a few lines a minute

ROOT = "/miyaq"
CLUSTER_KEY_FIELD = "cluster_key"
"""The field of a member znode that holds the fingerprint of the node's cluster key."""
NO_CLUSTER_KEY = "none"
"""The fingerprint a node without keys publishes."""


def check_cluster_name(cluster: object) -> str:
    """A cluster name is one znode name: same rules as a node id."""
    try:
        return check_node_id(cluster)
    except ConfigError:
        raise ConfigError(
            f"invalid cluster name {cluster!r}: use 1-128 characters from [A-Za-z0-9_.:@-]"
        ) from None


class Layout:
    """The znode paths of one cluster."""

    def __init__(self, cluster: str) -> None:
        self.cluster = check_cluster_name(cluster)
        self.base = f"{ROOT}/{self.cluster}"
        self.members = f"{self.base}/members"
        self.ring = f"{self.base}/ring"
        self.election = f"{self.base}/election"
        self.desired = f"{self.base}/desired"

    def member(self, node_id: str) -> str:
        return f"{self.members}/{check_node_id(node_id)}"


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes of ``obj`` (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def load_json(data: bytes, what: str) -> Any:
    """Decode a znode's JSON; ``ConfigError`` naming ``what`` when it is not JSON."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class RingRecord:
    """The content of the ``ring`` znode."""

    epoch: int
    members: tuple[str, ...]
    weights: dict[str, float]
    leader: str | None
    nodes: dict[str, Member]
    vnodes: int = DEFAULT_VNODES

    def content(self) -> tuple:
        """Everything but the epoch, for "did anything change?"."""
        return (
            self.members,
            tuple(sorted(self.weights.items())),
            self.leader,
            tuple(sorted((k, tuple(sorted(m.to_dict().items(), key=str))) for k, m in self.nodes.items())),
            self.vnodes,
        )

    def to_bytes(self) -> bytes:
        return dump_json(
            {
                "epoch": self.epoch,
                "members": list(self.members),
                "weights": self.weights,
                "leader": self.leader,
                "vnodes": self.vnodes,
                "nodes": {k: m.to_dict() for k, m in self.nodes.items()},
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RingRecord:
        raw = load_json(data, "ring znode")
        if not isinstance(raw, Mapping):
            raise ConfigError("ring znode must hold a JSON object")
        epoch = raw.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"ring epoch must be an integer >= 0, got {epoch!r}")
        members = raw.get("members")
        if not isinstance(members, list):
            raise ConfigError("ring members must be a list")
        ids = tuple(sorted(check_node_id(m) for m in members))
        weights_raw = raw.get("weights", {})
        nodes_raw = raw.get("nodes", {})
        if not isinstance(weights_raw, Mapping) or not isinstance(nodes_raw, Mapping):
            raise ConfigError("ring weights and nodes must be objects")
        weights: dict[str, float] = {}
        nodes: dict[str, Member] = {}
        for node_id in ids:
            if node_id not in nodes_raw:
                raise ConfigError(f"ring member {node_id!r} has no endpoints")
            member = Member.from_dict(nodes_raw[node_id])
            if member.node_id != node_id:
                raise ConfigError(f"ring member {node_id!r} holds endpoints of {member.node_id!r}")
            weights[node_id] = check_weight(weights_raw.get(node_id, member.weight))
            nodes[node_id] = member
        leader = raw.get("leader")
        if leader is not None:
            check_node_id(leader)
        vnodes = check_vnodes(raw.get("vnodes", DEFAULT_VNODES), "ring vnodes")
        check_points(weights, vnodes)
        return cls(epoch, ids, weights, leader, nodes, vnodes)

    def to_view(self) -> RingView:
        members = {k: replace(self.nodes[k], weight=self.weights[k]) for k in self.members}
        return RingView(epoch=self.epoch, members=members, leader=self.leader, vnodes=self.vnodes)


class Intent(NamedTuple):
    """The operator's wish for one node (an entry of the ``desired`` znode)."""

    join: bool
    weight: float | None = None


def parse_desired(data: bytes | None) -> dict[str, Intent]:
    """Decode the ``desired`` znode; ``ConfigError`` when it is corrupt."""
    if not data:
        return {}
    raw = load_json(data, "desired znode")
    nodes = raw.get("nodes") if isinstance(raw, Mapping) else None
    if not isinstance(nodes, Mapping):
        raise ConfigError("desired znode must be {\"nodes\": {...}}")
    out: dict[str, Intent] = {}
    problems: list[str] = []
    for node_id, entry in nodes.items():
        # One bad entry (a hand edit, another version) must not cost the
        # others: before 2026-12-05 it made the whole znode corrupt -- the
        # leader published nothing, and the next change rewrote it empty.
        try:
            check_node_id(node_id)
        except ConfigError as err:
            problems.append(err.message)
            continue
        if not isinstance(entry, Mapping) or not isinstance(entry.get("join"), bool):
            problems.append(f"desired entry of {node_id!r} must be {{\"join\": bool, ...}}: ignored")
            continue
        weight = entry.get("weight")
        try:
            checked = None if weight is None else check_weight(weight)
        except ConfigError as err:
            problems.append(f"desired weight of {node_id!r}: {err.message}; its default weight is used")
            checked = None
        out[node_id] = Intent(entry["join"], checked)
    if problems:
        _log.warning("desired", "desired znode: %d bad entr%s (%s)", len(problems),
                     "y" if len(problems) == 1 else "ies", "; ".join(problems[:3]))
    return out


def dump_desired(intents: Mapping[str, Intent]) -> bytes:
    return dump_json({"nodes": {k: {"join": v.join, "weight": v.weight} for k, v in intents.items()}})


def with_join(intents: dict[str, Intent], node_id: str, join: bool) -> dict[str, Intent]:
    """``intents`` with ``node_id`` wanted in (``join``) or out of the ring.

    Leaving forgets an entry that carries no weight, so ``desired`` does not
    grow with every node that ever left.
    """
    entry = intents.get(node_id, Intent(False))
    if join:
        intents[node_id] = entry._replace(join=True)
    elif entry.weight is None:
        intents.pop(node_id, None)
    else:
        intents[node_id] = entry._replace(join=False)
    return intents


def with_weight(intents: dict[str, Intent], node_id: str, weight: float) -> dict[str, Intent]:
    """``intents`` with ``node_id``'s ring weight set (it keeps its join wish)."""
    intents[node_id] = intents.get(node_id, Intent(False))._replace(weight=weight)
    return intents


def fitting(desired: dict[str, Intent], registered: Mapping[str, Member], ring: RingRecord | None,
            action: str, also: str | None = None) -> dict[str, Intent]:
    """``desired`` if the ring it asks for fits, else ``ConfigError`` naming
    ``action`` (for a change of ``desired``: nothing is stored).

    Counted (:func:`counted_in`): ``also`` (the node joined or given a
    weight, as if it were in: a weight that can never fit is refused when
    set), and every node wanted in that is registered now, or in the
    published ring, or was given a weight of its own (running or not) --
    each at its desired weight, else its registered or published one, else
    1. A node wanted in that is none of these (it auto-joined under an id
    that is gone, and stopped without ``miyaq leave``) costs nothing:
    before, every such entry counted, and ~410 of them made every join and
    weight fail (``miyaq ring`` lists them, :func:`not_registered`). Before
    2026-12-05 only a weight for a node in the ring was checked: a node out
    of it could be given 1000 and joined, and the leader then refused every
    ring (no join, leave or weight was published)."""
    weights = {node_id: intent.weight or _known_weight(node_id, registered, ring)
               for node_id, intent in desired.items() if counted_in(node_id, intent, registered, ring, also)}
    try:
        check_points(weights, ring.vnodes if ring is not None else DEFAULT_VNODES)
    except ConfigError as exc:
        raise ConfigError(f"cannot {action}: {exc.message} (counting every node wanted in the ring that is "
                          "registered, in the ring or given a weight)") from None
    return desired


MAX_DESIRED = 4_096
"""Entries ``desired`` keeps before it forgets those of nodes gone for good
(:func:`pruned`): at about 40 bytes an entry, far below ZooKeeper's 1 MB
znode limit (``jute.maxbuffer``), past which every join, leave and weight
-- and every node's auto-join at start -- would fail."""


def pruned(desired: dict[str, Intent], registered: Mapping[str, Member], ring: RingRecord | None,
           also: str | None = None, keep: int = MAX_DESIRED) -> dict[str, Intent]:
    """``desired`` with at most ``keep`` entries where it can: past that, the
    oldest entries (the znode keeps the order they were first written) of
    nodes wanted in at no weight of their own that are neither registered
    nor in the published ring nor ``also`` -- nodes that auto-joined under an
    id that is gone (a container's ``<hostname>-<port>``) and stopped
    without ``miyaq leave`` -- are forgotten; one that starts again joins
    like any new node. Entries with a weight (an operator's) stay. Before
    2026-12-05 every such entry stayed: about 25,000 recreated containers
    would have filled the znode."""
    excess = len(desired) - keep
    if excess <= 0:
        return desired
    gone = [node_id for node_id, intent in desired.items()
            if intent.join and intent.weight is None and not counted_in(node_id, intent, registered, ring, also)]
    for node_id in gone[:excess]:
        del desired[node_id]
    return desired


def counted_in(node_id: str, intent: Intent, registered: Mapping[str, Member], ring: RingRecord | None,
               also: str | None = None) -> bool:
    """Whether :func:`fitting` counts ``node_id`` (its ``intent``) in the ring
    a change asks for."""
    if node_id == also:
        return True
    if not intent.join:
        return False
    return (node_id in registered or intent.weight is not None
            or (ring is not None and node_id in ring.members))


def not_registered(desired: Mapping[str, Intent], registered: Mapping[str, Member]) -> list[str]:
    """The nodes ``desired`` wants in the ring that are not registered now,
    sorted: stopped, or gone for good (``miyaq leave NODE`` forgets one)."""
    return sorted(node_id for node_id, intent in desired.items() if intent.join and node_id not in registered)


def _known_weight(node_id: str, registered: Mapping[str, Member], ring: RingRecord | None) -> float:
    """A node's weight when ``desired`` sets none: its registered one, else its published one, else 1."""
    if node_id in registered:
        return registered[node_id].weight
    if ring is not None and node_id in ring.weights:
        return ring.weights[node_id]
    return 1.0


class PublishedKey(NamedTuple):
    """What a member znode says of its node's cluster key."""

    fingerprint: str | None
    """The fingerprint it published; None from a build that publishes none (before 2026-12-06)."""
    created: int
    """The znode's ``czxid``: a member registered before another has a smaller one."""


def other_cluster_keys(own: str, published: Mapping[str, PublishedKey], node_id: str) -> dict[str, str]:
    """The members of ``published`` (but ``node_id``, whose entry is a
    previous run's of this node) that published a cluster key fingerprint
    other than ``own``: ``{member: fingerprint}``. A member that published
    none (an older build) is not compared: it is not counted either way."""
    return {member: key.fingerprint for member, key in published.items()
            if member != node_id and key.fingerprint is not None and key.fingerprint != own}
