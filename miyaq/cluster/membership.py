"""The ring as the cluster sees it, and the coordinator interface a node uses.

Constraints:

* :class:`Member` and :class:`RingView` are immutable values that round-trip
  through ``to_dict``/``from_dict`` as plain JSON/msgpack types. ``from_dict``
  trusts nothing: a wrong type or a missing field raises ``ConfigError``.
  Unknown keys are ignored so newer nodes can add fields.
* A node id is also a znode name and a ZeroMQ routing id: 1-128 characters
  from ``[A-Za-z0-9_.:@-]``, not ``.`` or ``..``.
* A view with a higher ``epoch`` supersedes a lower one; a coordinator never
  hands its listeners a view older than the one it holds.
* Listeners are called from the coordinator's own greenlet and must not block
  (spawn a greenlet for real work). An exception in a listener is logged and
  never reaches the coordinator.
* :class:`StandaloneCoordinator` is the embedded default: a ring of one (the
  local node), always its own leader, epoch 1, no ZooKeeper, and the same
  listener calls a clustered node gets.
"""
from __future__ import annotations

import abc
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from miyaq.cluster.ring import DEFAULT_VNODES, Ring
from miyaq.config import NodeConfig
from miyaq.errors import ConfigError, Timeout
from miyaq.runtime import green, monotonic

logger = logging.getLogger(__name__)

_NODE_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")

ViewListener = Callable[["RingView"], None]
LeaderListener = Callable[[bool, int], None]


def check_node_id(node_id: object) -> str:
    """Return ``node_id`` if it is a valid node id, else raise ``ConfigError``."""
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id) or node_id in (".", ".."):
        raise ConfigError(
            f"invalid node id {node_id!r}: use 1-128 characters from [A-Za-z0-9_.:@-]"
        )
    return node_id


def check_weight(weight: object) -> float:
    """Return ``weight`` as a float if it is a finite number > 0, else raise ``ConfigError``."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"weight must be a number, got {weight!r}")
    value = float(weight)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"weight must be finite and > 0, got {weight!r}")
    return value


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
            if not isinstance(value, str) or not value:
                raise ConfigError(f"member {self.node_id}: {name} must be a non-empty string")
        if self.http is not None and (not isinstance(self.http, str) or not self.http):
            raise ConfigError(f"member {self.node_id}: http must be a non-empty string or None")
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


class Coordinator(abc.ABC):
    """What a node needs from membership: views, leadership, join/leave.

    Subclasses call :meth:`_deliver_view` and :meth:`_deliver_leadership`;
    this base class keeps the listener lists, isolates listener errors and
    implements :meth:`wait_for_view`.
    """

    def __init__(self, local: Member | None) -> None:
        self._local = local
        self._view_listeners: list[ViewListener] = []
        self._leader_listeners: list[LeaderListener] = []
        self._view_changed = green.Event()

    @property
    def local(self) -> Member | None:
        """The member this coordinator registers (``None`` for observers)."""
        return self._local

    # -- the interface --------------------------------------------------------

    @abc.abstractmethod
    def start(self) -> None:
        """Register, start watching and campaigning. Listeners added before
        ``start`` receive the first view."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Leave the election and deregister. Leader listeners are told
        ``False`` if this node was leader. Idempotent."""

    @property
    @abc.abstractmethod
    def view(self) -> RingView:
        """The newest view this node holds."""

    @property
    def connection(self) -> str:
        """The link to the membership store, for status: ``connected`` unless a
        subclass knows better (ZooKeeper: ``suspended``, ``lost``, ``closed``)."""
        return "connected"

    @property
    @abc.abstractmethod
    def is_leader(self) -> bool:
        """True while this node may act as leader (never while its session is in doubt)."""

    def silent_for(self) -> float:
        """Seconds this node has been without its coordination service (its
        ZooKeeper connection suspended or its session lost); 0 while
        connected, and always for a standalone node."""
        return 0.0

    def session_lost(self) -> bool:
        """True from the moment this node learns its session ended (its
        registration is gone: the ring may already go on without it) until
        it has a new one; False for a standalone node."""
        return False

    @abc.abstractmethod
    def join(self, node_id: str) -> None:
        """Ask for ``node_id`` to be in the ring (applied by the leader)."""

    @abc.abstractmethod
    def leave(self, node_id: str) -> None:
        """Ask for ``node_id`` to be out of the ring (applied by the leader)."""

    @abc.abstractmethod
    def set_weight(self, node_id: str, weight: float) -> None:
        """Ask for ``node_id``'s ring weight to be ``weight`` (applied by the leader)."""

    @abc.abstractmethod
    def registered(self) -> dict[str, Member]:
        """Every registered member, in the ring or not."""

    # -- listeners ------------------------------------------------------------

    def add_listener(self, fn: ViewListener) -> None:
        """Call ``fn(view)`` on every new view. ``fn`` must not block."""
        self._view_listeners.append(fn)

    def remove_listener(self, fn: ViewListener) -> None:
        if fn in self._view_listeners:
            self._view_listeners.remove(fn)

    def add_leader_listener(self, fn: LeaderListener) -> None:
        """Call ``fn(is_leader, epoch)`` when leadership is gained or lost.

        ``epoch`` is the ring epoch the leader published when its term
        began; leader actions should be fenced with it. ``fn`` must not block.
        """
        self._leader_listeners.append(fn)

    def remove_leader_listener(self, fn: LeaderListener) -> None:
        if fn in self._leader_listeners:
            self._leader_listeners.remove(fn)

    def wait_for_view(
        self, predicate: Callable[[RingView], bool], timeout: float = 10.0
    ) -> RingView:
        """Block this greenlet until ``predicate(view)`` holds; ``Timeout`` after ``timeout`` s."""
        deadline = monotonic() + timeout
        while True:
            self._view_changed.clear()
            view = self.view
            if predicate(view):
                return view
            left = deadline - monotonic()
            if left <= 0:
                raise Timeout(
                    f"ring view did not reach the expected state within {timeout:g}s "
                    f"(epoch {view.epoch}, members {sorted(view.members)}, leader {view.leader})"
                )
            # Wake on a new view, and re-check now and then in case a
            # subclass changed state without delivering a view.
            self._view_changed.wait(min(left, 0.5))

    # -- for subclasses -------------------------------------------------------

    def _deliver_view(self, view: RingView) -> None:
        self._view_changed.set()
        for fn in list(self._view_listeners):
            try:
                fn(view)
            except Exception:
                logger.exception("ring view listener %r failed (epoch %s)", fn, view.epoch)

    def _deliver_leadership(self, is_leader: bool, epoch: int) -> None:
        self._view_changed.set()
        for fn in list(self._leader_listeners):
            try:
                fn(is_leader, epoch)
            except Exception:
                logger.exception("leader listener %r failed (%s, epoch %s)", fn, is_leader, epoch)


class StandaloneCoordinator(Coordinator):
    """A ring of one: the local node, always leader, epoch 1, no ZooKeeper."""

    EPOCH = 1

    def __init__(self, local: Member) -> None:
        if not isinstance(local, Member):
            raise ConfigError("StandaloneCoordinator needs the local Member")
        super().__init__(local)
        self._member = local
        self._running = False
        self._view = RingView.empty()

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._view = RingView(
            epoch=self.EPOCH,
            members={self._member.node_id: self._member},
            leader=self._member.node_id,
        )
        logger.info("standalone ring: %s is the only member and leader", self._member.node_id)
        self._deliver_view(self._view)
        self._deliver_leadership(True, self.EPOCH)

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._deliver_leadership(False, self.EPOCH)

    @property
    def view(self) -> RingView:
        return self._view

    @property
    def is_leader(self) -> bool:
        return self._running

    def _check_local(self, node_id: str, action: str) -> None:
        check_node_id(node_id)
        if node_id != self._member.node_id:
            raise ConfigError(
                f"cannot {action} {node_id!r}: a standalone node's ring holds only "
                f"{self._member.node_id!r} (run nodes with ZooKeeper to form a cluster)"
            )

    def join(self, node_id: str) -> None:
        """Joining the local node is a no-op (it is always in its ring)."""
        self._check_local(node_id, "join")

    def leave(self, node_id: str) -> None:
        """Always refused: a standalone node cannot leave its ring of one."""
        self._check_local(node_id, "leave")
        raise ConfigError("a standalone node cannot leave its ring of one")

    def set_weight(self, node_id: str, weight: float) -> None:
        """Recorded on the local member; a ring of one places every key the same."""
        self._check_local(node_id, "set the weight of")
        self._member = replace(self._member, weight=check_weight(weight))
        self._local = self._member

    def registered(self) -> dict[str, Member]:
        return {self._member.node_id: self._member}
