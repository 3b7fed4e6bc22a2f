"""The ring as the cluster sees it: the :class:`Member` and :class:`RingView` values.

Constraints:

* :class:`Member` and :class:`RingView` are immutable values that round-trip
  through ``to_dict``/``from_dict`` as plain JSON/msgpack types. ``from_dict``
  trusts nothing: a wrong type or a missing field raises ``ConfigError``.
  Unknown keys are ignored so newer nodes can add fields.
* A node id is also a znode name and a ZeroMQ routing id: 1-128 characters
  from ``[A-Za-z0-9_.:@-]``, not ``.`` or ``..``.
* A member's endpoints are non-empty strings of at most ``MAX_ENDPOINT_CHARS``.
* A view with a higher ``epoch`` supersedes a lower one.

Plain values, no I/O: the coordinators that hand views out are in
:mod:`miyaq.cluster.membership`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from miyaq.config import NodeConfig
from miyaq.errors import ConfigError
from miyaq.protocol.commands import MAX_ENDPOINT_CHARS
from miyaq.protocol.ring import DEFAULT_VNODES, Ring, check_weight

_NODE_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def check_node_id(node_id: object) -> str:
    """Return ``node_id`` if it is a valid node id, else raise ``ConfigError``."""
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id) or node_id in (".", ".."):
        raise ConfigError(
            f"invalid node id {node_id!r}: use 1-128 characters from [A-Za-z0-9_.:@-]"
        )
    return node_id


def _str_field(data: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"member field {name!r} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class Member:
    """A registered node and the endpoints other parts use to reach it."""

    node_id: str
    service: str
    peer: str
    pub: str
    http: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_node_id(self.node_id)
        for name in ("service", "peer", "pub"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > MAX_ENDPOINT_CHARS:
                raise ConfigError(f"member {self.node_id}: {name} must be a non-empty string of at most "
                                  f"{MAX_ENDPOINT_CHARS} characters")
        if self.http is not None and (not isinstance(self.http, str) or not self.http
                                      or len(self.http) > MAX_ENDPOINT_CHARS):
            raise ConfigError(f"member {self.node_id}: http must be a non-empty string of at most "
                              f"{MAX_ENDPOINT_CHARS} characters, or None")
        object.__setattr__(self, "weight", check_weight(self.weight))

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "service": self.service,
            "peer": self.peer,
            "pub": self.pub,
            "http": self.http,
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, data: object) -> Member:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a member must be a mapping, got {type(data).__name__}")
        weight = data.get("weight", 1.0)
        return cls(
            node_id=check_node_id(data.get("node_id")),
            service=_str_field(data, "service"),  # type: ignore[arg-type]
            peer=_str_field(data, "peer"),  # type: ignore[arg-type]
            pub=_str_field(data, "pub"),  # type: ignore[arg-type]
            http=_str_field(data, "http", optional=True),
            weight=check_weight(weight),
        )


@dataclass(frozen=True)
class RingView:
    """One published state of the ring.

    ``members`` holds only the nodes that are in the ring, each with its
    effective (ring) weight. ``ring`` is derived from them; it is ``None``
    when the view is empty (before any leader published, or when every node
    left), and then :meth:`holders` returns ``[]``.
    """

    epoch: int
    members: dict[str, Member]
    leader: str | None = None
    vnodes: int = DEFAULT_VNODES
    ring: Ring | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 0:
            raise ConfigError(f"epoch must be an integer >= 0, got {self.epoch!r}")
        if not isinstance(self.members, Mapping):
            raise ConfigError("view members must be a mapping of node id to Member")
        members = dict(self.members)
        for node_id, member in members.items():
            if not isinstance(member, Member) or member.node_id != node_id:
                raise ConfigError(f"view member {node_id!r} does not match its Member")
        if self.leader is not None:
            check_node_id(self.leader)
        object.__setattr__(self, "members", members)
        ring = Ring({k: m.weight for k, m in members.items()}, self.vnodes) if members else None
        object.__setattr__(self, "ring", ring)

    @classmethod
    def empty(cls) -> RingView:
        """The view a coordinator holds before it has seen any ring."""
        return cls(epoch=0, members={}, leader=None)

    def holders(self, routing_key: bytes | str, n: int) -> list[Member]:
        """The preference list of ``routing_key``: up to ``n`` distinct members."""
        if self.ring is None:
            return []
        return [self.members[node_id] for node_id in self.ring.preference_list(routing_key, n)]

    def holder_ids(self, routing_key: bytes | str, n: int) -> list[str]:
        """The ids of :meth:`holders` (the placement hot path: no :class:`Member` lookups)."""
        if self.ring is None:
            return []
        return self.ring.preference_list(routing_key, n)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.members

    def __len__(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "leader": self.leader,
            "vnodes": self.vnodes,
            "members": {k: m.to_dict() for k, m in sorted(self.members.items())},
        }

    @classmethod
    def from_dict(cls, data: object) -> RingView:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a ring view must be a mapping, got {type(data).__name__}")
        epoch = data.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ConfigError(f"view epoch must be an integer, got {epoch!r}")
        vnodes = data.get("vnodes", DEFAULT_VNODES)
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ConfigError(f"view vnodes must be an integer >= 1, got {vnodes!r}")
        raw = data.get("members", {})
        if not isinstance(raw, Mapping):
            raise ConfigError("view members must be a mapping")
        members = {}
        for node_id, item in raw.items():
            member = Member.from_dict(item)
            if member.node_id != node_id:
                raise ConfigError(f"view member key {node_id!r} != node_id {member.node_id!r}")
            members[node_id] = member
        leader = data.get("leader")
        if leader is not None:
            check_node_id(leader)
        return cls(epoch=epoch, members=members, leader=leader, vnodes=vnodes)


def local_member(config: NodeConfig) -> Member:
    """The node ``config`` describes, as the ring knows it: its endpoints and weight."""
    c = config
    return Member(node_id=c.id, service=c.endpoint(c.port), peer=c.endpoint(c.peer), pub=c.endpoint(c.pub),
                  http=c.http_url, weight=c.weight)
