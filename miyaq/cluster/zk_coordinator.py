"""Cluster membership, ring epochs and leader election on ZooKeeper (kazoo).

Layout under ``/miyaq/<cluster>/``:

``members/<node_id>``
    Ephemeral; the :class:`~miyaq.cluster.membership.Member` as JSON. It
    vanishes when the node's session ends (clean stop, crash, expiry).
``desired``
    Persistent; the operator's intent, JSON
    ``{"nodes": {node_id: {"join": bool, "weight": float | null}}}``.
    ``join``/``leave``/``set_weight`` (from a node or from :class:`RingAdmin`)
    only ever change this znode, with compare-and-set on its version. A node
    started with ``auto_join=True`` writes ``join: true`` for itself once, at
    start; a reconnect after a lost session does not, so an operator's
    ``leave`` sticks until the node is restarted.
``ring``
    Persistent; the published ring, written only by the leader, JSON
    ``{"epoch", "members": [ids], "weights": {id: w}, "leader": id,
    "vnodes": int, "nodes": {id: Member}}`` (``nodes`` carries the endpoints,
    so a view never depends on reading ``members/`` at the same moment).
``election/``
    kazoo ``Election`` (lock) contenders.

Join/leave requests reach the leader by reconciliation, not by messages: the
leader watches ``members/`` and ``desired`` (and re-checks every
``reconcile_interval`` seconds) and publishes
``ring = {registered nodes whose desired entry says join}`` with weights
``desired weight or the member's registered weight``. A node whose ephemeral
znode vanishes is therefore out of the ring at the next publication, and back
in once it re-registers. Requests survive a change of leader because they are
state, not a queue.

Safety rules:

* Every ring write is a transaction ``check(<our election znode>) +
  set(ring, version=<version read>)``: a leader whose session (and thus its
  election znode) is gone cannot write, and two writers cannot interleave.
  The new epoch is ``max(epoch in the znode, highest epoch seen) + 1``, so it
  strictly increases; each leadership term starts by publishing a new epoch
  (its fence, given to leader listeners).
* Session SUSPENDED: stop acting as leader at once (leader listeners get
  ``False``); on reconnect with the same session, resume with a new term.
  LOST: abdicate, leave the election; on the new session re-register the
  member znode and campaign again.
* Followers apply a ring only if its epoch is higher than the one they hold.
* kazoo runs with ``SequentialGeventHandler`` (no monkey patching). Session
  and watch callbacks only set flags, wake greenlets or enqueue
  notifications; they never block and never call ``zk.stop()``. View and
  leader listeners run in order in one notifier greenlet. Do not call
  :meth:`ZooKeeperCoordinator.stop` from a listener.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import gevent
import gevent.event
import gevent.queue
from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionDropped,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.gevent import SequentialGeventHandler
from kazoo.protocol.states import KazooState
from kazoo.recipe.election import Election
from kazoo.retry import KazooRetry

from miyaq.cluster.membership import (
    Coordinator,
    Member,
    RingView,
    check_node_id,
    check_weight,
)
from miyaq.cluster.ring import DEFAULT_VNODES
from miyaq.errors import ConfigError, MiyaqError, Timeout, Unavailable

logger = logging.getLogger(__name__)

ROOT = "/miyaq"

_TRANSIENT = (ConnectionLoss, SessionExpiredError, OperationTimeoutError, ConnectionDropped)


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


# -- records stored in znodes ------------------------------------------------


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _load(data: bytes, what: str) -> Any:
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
        return _dump(
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
        raw = _load(data, "ring znode")
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
        vnodes = raw.get("vnodes", DEFAULT_VNODES)
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ConfigError(f"ring vnodes must be an integer >= 1, got {vnodes!r}")
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
    raw = _load(data, "desired znode")
    nodes = raw.get("nodes") if isinstance(raw, Mapping) else None
    if not isinstance(nodes, Mapping):
        raise ConfigError("desired znode must be {\"nodes\": {...}}")
    out: dict[str, Intent] = {}
    for node_id, entry in nodes.items():
        check_node_id(node_id)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("join"), bool):
            raise ConfigError(f"desired entry of {node_id!r} must be {{\"join\": bool, ...}}")
        weight = entry.get("weight")
        out[node_id] = Intent(entry["join"], None if weight is None else check_weight(weight))
    return out


def dump_desired(intents: Mapping[str, Intent]) -> bytes:
    return _dump({"nodes": {k: {"join": v.join, "weight": v.weight} for k, v in intents.items()}})


# -- blocking znode operations with deadlines ---------------------------------


class _Store:
    """Reads and writes of one cluster's znodes, each bounded by ``timeout``.

    Connection problems and deadlines become ``Unavailable``; ZooKeeper's
    answers (NoNode, BadVersion, NodeExists) pass through as kazoo errors.
    """

    def __init__(self, zk: KazooClient, layout: Layout, hosts: str, timeout: float) -> None:
        self.zk = zk
        self.layout = layout
        self.hosts = hosts
        self.timeout = timeout

    def call(self, async_result: Any) -> Any:
        async_result.wait(self.timeout)
        if not async_result.ready():
            raise Unavailable(
                f"ZooKeeper at {self.hosts} did not answer within {self.timeout:g}s", hosts=self.hosts
            )
        try:
            return async_result.get(block=False)
        except _TRANSIENT as exc:
            raise Unavailable(
                f"ZooKeeper at {self.hosts}: {type(exc).__name__}", hosts=self.hosts
            ) from None

    def ensure_paths(self) -> None:
        for path in (self.layout.members, self.layout.election):
            try:
                self.call(self.zk.create_async(path, b"", makepath=True))
            except NodeExistsError:
                pass

    def read_registered(self) -> dict[str, Member]:
        try:
            children = self.call(self.zk.get_children_async(self.layout.members))
        except NoNodeError:
            return {}
        pending = []
        for name in children:
            try:
                pending.append((name, self.zk.get_async(self.layout.member(name))))
            except ConfigError:
                logger.warning("ignoring znode %s/%s: not a node id", self.layout.members, name)
        out: dict[str, Member] = {}
        for name, result in pending:
            try:
                data, _ = self.call(result)
            except NoNodeError:
                continue
            try:
                member = Member.from_dict(_load(data, f"member znode {name}"))
            except ConfigError as exc:
                logger.warning("ignoring member znode %s: %s", name, exc)
                continue
            if member.node_id != name:
                logger.warning("ignoring member znode %s: it describes %s", name, member.node_id)
                continue
            out[name] = member
        return out

    def read_desired(self) -> tuple[dict[str, Intent], Any]:
        try:
            data, stat = self.call(self.zk.get_async(self.layout.desired))
        except NoNodeError:
            return {}, None
        return parse_desired(data), stat

    def update_desired(
        self, change: Callable[[dict[str, Intent]], dict[str, Intent]]
    ) -> tuple[dict[str, Intent], dict[str, Intent]]:
        """Compare-and-set loop on ``desired``; returns (before, after)."""
        for _ in range(100):
            try:
                before, stat = self.read_desired()
            except ConfigError as exc:
                # Corrupt intent must not lock the operator out: start afresh.
                logger.warning("overwriting corrupt %s: %s", self.layout.desired, exc)
                before, stat = {}, self.call(self.zk.exists_async(self.layout.desired))
            after = change(dict(before))
            if after == before:
                return before, after
            payload = dump_desired(after)
            try:
                if stat is None:
                    self.call(self.zk.create_async(self.layout.desired, payload, makepath=True))
                else:
                    self.call(self.zk.set_async(self.layout.desired, payload, version=stat.version))
                return before, after
            except (BadVersionError, NodeExistsError, NoNodeError):
                gevent.sleep(random.uniform(0, 0.02))
        raise Unavailable(f"could not update {self.layout.desired}: too many concurrent writers")

    def read_ring(self) -> tuple[RingRecord | None, Any]:
        """The ring record and its stat; (None, stat) when it is corrupt."""
        try:
            data, stat = self.call(self.zk.get_async(self.layout.ring))
        except NoNodeError:
            return None, None
        if not data:
            return None, stat
        try:
            return RingRecord.from_bytes(data), stat
        except ConfigError as exc:
            logger.warning("ring znode %s is corrupt: %s", self.layout.ring, exc)
            return None, stat


def _new_client(hosts: str, session_timeout: float) -> KazooClient:
    handler = SequentialGeventHandler()
    retry = {"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0, "sleep_func": gevent.sleep}
    return KazooClient(
        hosts=hosts,
        timeout=session_timeout,
        handler=handler,
        connection_retry=KazooRetry(**retry),
        command_retry=KazooRetry(**{**retry, "max_tries": 5}),
    )


def _connect(hosts: str, session_timeout: float, connect_timeout: float) -> KazooClient:
    zk = _new_client(hosts, session_timeout)
    try:
        zk.start(timeout=connect_timeout)
    except zk.handler.timeout_exception:
        raise Unavailable(
            f"cannot reach ZooKeeper at {hosts} within {connect_timeout:g}s", hosts=hosts
        ) from None
    return zk


def _close_client(zk: KazooClient) -> None:
    try:
        zk.stop()
    except KazooException:
        logger.debug("error stopping ZooKeeper client", exc_info=True)
    finally:
        zk.close()


class _Fenced(Exception):
    """Our election znode is gone: we are no longer leader."""


class _Conflict(Exception):
    """Someone else wrote the ring between our read and our write."""


class ZooKeeperCoordinator(Coordinator):
    """Membership, ring and leadership for one node, kept in ZooKeeper.

    ``hosts`` is a kazoo connection string; ``cluster`` names the subtree.
    ``auto_join`` records "join" for ``local`` at start. ``leader_eligible=False``
    makes a node that never campaigns (it still registers and follows).
    ``connect_timeout`` bounds ``start``; ``session_timeout`` is asked of the
    server (which clamps it to 2-20 tickTimes); ``op_timeout`` bounds each
    znode operation; the leader re-checks the desired state every
    ``reconcile_interval`` seconds besides reacting to watches.
    """

    def __init__(
        self,
        hosts: str,
        cluster: str,
        local: Member,
        *,
        auto_join: bool = True,
        leader_eligible: bool = True,
        connect_timeout: float = 10.0,
        session_timeout: float = 10.0,
        op_timeout: float = 10.0,
        reconcile_interval: float = 5.0,
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        if not isinstance(local, Member):
            raise ConfigError("ZooKeeperCoordinator needs the local Member")
        if not isinstance(hosts, str) or not hosts:
            raise ConfigError("ZooKeeper hosts must be a non-empty string like '127.0.0.1:2181'")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("session_timeout", session_timeout),
            ("op_timeout", op_timeout),
            ("reconcile_interval", reconcile_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ConfigError(f"vnodes must be an integer >= 1, got {vnodes!r}")
        super().__init__(local)
        self._member = local
        self._node_id = local.node_id
        self._hosts = hosts
        self._layout = Layout(cluster)
        self._auto_join = auto_join
        self._eligible = leader_eligible
        self._connect_timeout = float(connect_timeout)
        self._session_timeout = float(session_timeout)
        self._op_timeout = float(op_timeout)
        self._reconcile_interval = float(reconcile_interval)
        self._vnodes = vnodes

        self._zk: KazooClient | None = None
        self._store: _Store | None = None
        self._started = False
        self._closing = False
        self._view = RingView.empty()
        self._highest_epoch = 0
        self._registered: dict[str, Member] = {}
        self._leading = False
        self._leader_epoch = 0
        self._paused = False
        self._lost = False
        self._session_gen = 0
        self._election: Election | None = None
        self._wake = gevent.event.Event()
        self._registry_dirty = gevent.event.Event()
        self._notices: gevent.queue.Queue = gevent.queue.Queue()
        self._campaign_g: gevent.Greenlet | None = None
        self._campaign_gen = -1
        self._notifier_g: gevent.Greenlet | None = None
        self._greenlets: list[gevent.Greenlet] = []

    # -- public interface -------------------------------------------------------

    @property
    def cluster(self) -> str:
        return self._layout.cluster

    @property
    def hosts(self) -> str:
        return self._hosts

    @property
    def view(self) -> RingView:
        return self._view

    @property
    def is_leader(self) -> bool:
        return self._leading and not self._paused

    @property
    def client(self) -> KazooClient | None:
        """The kazoo client (for tests and diagnostics only)."""
        return self._zk

    def registered(self) -> dict[str, Member]:
        return dict(self._registered)

    def start(self) -> None:
        """Connect, register, watch and campaign; ``Unavailable`` if ZooKeeper cannot be reached."""
        if self._started:
            return
        if self._closing:
            raise ConfigError("a stopped ZooKeeperCoordinator cannot be restarted; make a new one")
        zk = _connect(self._hosts, self._session_timeout, self._connect_timeout)
        self._started = True
        self._zk = zk
        self._store = _Store(zk, self._layout, self._hosts, self._op_timeout)
        try:
            self._notifier_g = self._spawn(self._notifier)
            zk.add_listener(self._on_state)
            self._store.ensure_paths()
            self._register()
            if self._auto_join:
                self._store.update_desired(lambda d: _with_join(d, self._node_id, True))
            self._registered = self._store.read_registered()
            zk.ChildrenWatch(self._layout.members, self._on_members)
            zk.DataWatch(self._layout.ring, self._on_ring)
            zk.DataWatch(self._layout.desired, self._on_desired)
            self._spawn(self._registry_loop)
            self._ensure_campaign(self._session_gen)
        except BaseException:
            self._shutdown(graceful=False)
            raise
        logger.info(
            "%s registered in cluster %s at %s (auto_join=%s)",
            self._node_id, self.cluster, self._hosts, self._auto_join,
        )

    def stop(self) -> None:
        """Abdicate, close the session (the member znode goes at once), stop greenlets."""
        if not self._started or self._closing:
            self._closing = True
            return
        self._shutdown(graceful=True)

    def join(self, node_id: str) -> None:
        check_node_id(node_id)
        self._require_store().update_desired(lambda d: _with_join(d, node_id, True))

    def leave(self, node_id: str) -> None:
        check_node_id(node_id)
        self._require_store().update_desired(lambda d: _with_join(d, node_id, False))

    def set_weight(self, node_id: str, weight: float) -> None:
        check_node_id(node_id)
        value = check_weight(weight)
        self._require_store().update_desired(lambda d: _with_weight(d, node_id, value))

    # -- lifecycle internals ----------------------------------------------------

    def _require_store(self) -> _Store:
        if self._store is None or self._closing:
            raise ConfigError("the coordinator is not running")
        return self._store

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        g = gevent.spawn(fn, *args)
        self._greenlets.append(g)
        self._greenlets = [x for x in self._greenlets if not x.dead]
        return g

    def _in_session(self, gen: int) -> bool:
        return not self._closing and gen == self._session_gen

    def _shutdown(self, graceful: bool) -> None:
        self._closing = True
        self._session_gen += 1
        election = self._election
        if election is not None:
            election.cancel()
        self._wake.set()
        zk = self._zk
        if zk is not None:
            zk.remove_listener(self._on_state)
        campaign = self._campaign_g
        if graceful and campaign is not None:
            # Lets the leader loop return and kazoo release the election znode.
            campaign.join(timeout=self._op_timeout)
        self._set_leading(False)
        self._notices.put(None)
        notifier = self._notifier_g
        if notifier is not None and notifier is not gevent.getcurrent():
            notifier.join(timeout=self._op_timeout)
        if zk is not None:
            _close_client(zk)
        gevent.killall([g for g in self._greenlets if g is not gevent.getcurrent()], timeout=2)
        self._greenlets = []
        logger.info("%s left cluster %s", self._node_id, self.cluster)

    def _register(self) -> None:
        """Create our ephemeral member znode, waiting out a previous incarnation's."""
        assert self._zk is not None and self._store is not None
        path = self._layout.member(self._node_id)
        payload = _dump(self._member.to_dict())
        deadline = time.monotonic() + 2 * self._session_timeout + 2
        warned = False
        while True:
            try:
                self._store.call(self._zk.create_async(path, payload, ephemeral=True, makepath=True))
                return
            except NodeExistsError:
                pass
            try:
                stat = self._store.call(self._zk.exists_async(path))
            except NoNodeError:
                stat = None
            if stat is None:
                continue
            if stat.ephemeralOwner == self._zk.client_id[0]:
                return
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"node id {self._node_id!r} is registered in cluster {self.cluster} by another "
                    f"live session (0x{stat.ephemeralOwner:x}); node ids must be unique"
                )
            if not warned:
                warned = True
                logger.warning(
                    "%s is still registered by session 0x%x (a previous run?); waiting for it to expire",
                    self._node_id, stat.ephemeralOwner,
                )
            gevent.sleep(0.2)

    # -- kazoo callbacks (never block) ------------------------------------------

    def _on_state(self, state: str) -> None:
        if self._closing:
            return
        if state == KazooState.SUSPENDED:
            logger.warning("%s: ZooKeeper connection suspended; pausing leader duties", self._node_id)
            self._paused = True
            self._set_leading(False)
        elif state == KazooState.LOST:
            logger.warning("%s: ZooKeeper session lost; abdicating", self._node_id)
            self._paused = True
            self._lost = True
            self._session_gen += 1
            election = self._election
            if election is not None:
                election.cancel()
            self._set_leading(False)
        elif state == KazooState.CONNECTED:
            self._paused = False
            if self._lost:
                self._lost = False
                logger.info("%s: new ZooKeeper session; registering again", self._node_id)
                self._spawn(self._recover, self._session_gen)
            else:
                logger.info("%s: ZooKeeper connection resumed", self._node_id)
        self._wake.set()
        self._registry_dirty.set()

    def _on_members(self, children: list[str]) -> bool | None:
        if self._closing:
            return False
        self._registry_dirty.set()
        self._wake.set()
        return None

    def _on_desired(self, data: bytes | None, stat: Any) -> bool | None:
        if self._closing:
            return False
        self._wake.set()
        return None

    def _on_ring(self, data: bytes | None, stat: Any) -> bool | None:
        if self._closing:
            return False
        try:
            if self._leading:
                self._wake.set()
            if not data:
                return None
            try:
                record = RingRecord.from_bytes(data)
            except ConfigError as exc:
                logger.warning("%s: ignoring corrupt ring znode: %s", self._node_id, exc)
                return None
            self._accept(record)
        except Exception:
            logger.exception("%s: ring watch failed", self._node_id)
        return None

    # -- views and notifications ------------------------------------------------

    def _accept(self, record: RingRecord) -> bool:
        """Adopt ``record`` if it is newer than the view we hold."""
        held = self._view.epoch
        if record.epoch <= held:
            if record.epoch < held:
                logger.info(
                    "%s: ignoring stale ring epoch %d (holding %d)", self._node_id, record.epoch, held
                )
            return False
        try:
            view = record.to_view()
        except ConfigError as exc:
            logger.warning("%s: ignoring invalid ring epoch %d: %s", self._node_id, record.epoch, exc)
            return False
        self._view = view
        self._highest_epoch = max(self._highest_epoch, record.epoch)
        self._view_changed.set()
        self._notices.put((self._deliver_view, (view,)))
        return True

    def _set_leading(self, value: bool, epoch: int = 0) -> None:
        if value:
            self._leading = True
            self._leader_epoch = epoch
            logger.info("%s is leader of %s (epoch %d)", self._node_id, self.cluster, epoch)
            self._notices.put((self._deliver_leadership, (True, epoch)))
        elif self._leading:
            self._leading = False
            logger.info("%s is no longer leader (epoch %d)", self._node_id, self._leader_epoch)
            self._notices.put((self._deliver_leadership, (False, self._leader_epoch)))

    def _notifier(self) -> None:
        while True:
            item = self._notices.get()
            if item is None:
                return
            fn, args = item
            fn(*args)

    # -- background greenlets ---------------------------------------------------

    def _registry_loop(self) -> None:
        while not self._closing:
            self._registry_dirty.wait()
            self._registry_dirty.clear()
            if self._closing or self._store is None:
                return
            try:
                self._registered = self._store.read_registered()
            except (Unavailable, KazooException):
                gevent.sleep(0.5)
                self._registry_dirty.set()

    def _recover(self, gen: int) -> None:
        """New session after LOST: re-register and campaign again."""
        old = self._campaign_g
        if old is not None and not old.dead and self._campaign_gen != gen:
            # The old session's campaign notices the new generation and ends,
            # releasing its (already vanished) election znode.
            old.join(timeout=self._op_timeout)
            if not old.dead:
                old.kill(block=False)
        while self._in_session(gen):
            try:
                self._register()
                break
            except (Unavailable, KazooException) as exc:
                logger.warning("%s: re-registering failed (%s); retrying", self._node_id, exc)
                gevent.sleep(0.5)
            except ConfigError as exc:
                logger.error("%s: cannot re-register: %s", self._node_id, exc)
                return
        self._ensure_campaign(gen)
        self._registry_dirty.set()

    def _ensure_campaign(self, gen: int) -> None:
        """Start campaigning in session ``gen`` unless a campaign is running."""
        if not self._eligible or not self._in_session(gen):
            return
        current = self._campaign_g
        if current is not None and not current.dead and self._campaign_gen == gen:
            return
        self._campaign_gen = gen
        self._campaign_g = self._spawn(self._campaign, gen)

    def _campaign(self, gen: int) -> None:
        while self._in_session(gen):
            assert self._zk is not None
            election = Election(self._zk, self._layout.election, self._node_id)
            self._election = election
            try:
                election.run(self._lead, gen, election)
            except (KazooException, MiyaqError) as exc:
                logger.warning("%s: election interrupted: %s", self._node_id, exc)
            except Exception:
                logger.exception("%s: election failed; campaigning again", self._node_id)
            finally:
                if self._election is election:
                    self._election = None
            if self._in_session(gen):
                gevent.sleep(0.2 + random.uniform(0, 0.3))

    def _lead(self, gen: int, election: Election) -> None:
        """The leader's loop: runs while we hold the election lock in session ``gen``."""
        node = election.lock.node
        if not node or not self._in_session(gen):
            return
        lock_path = f"{self._layout.election}/{node}"
        logger.info("%s won the election of %s", self._node_id, self.cluster)
        try:
            while self._in_session(gen):
                if self._paused:
                    self._wake.clear()
                    self._wake.wait(0.2)
                    continue
                self._wake.clear()
                try:
                    epoch = self._reconcile(lock_path, new_term=not self._leading)
                except _Fenced:
                    logger.warning("%s: election znode gone; no longer leader", self._node_id)
                    return
                except _Conflict:
                    gevent.sleep(random.uniform(0.01, 0.05))
                    continue
                except ConfigError as exc:
                    logger.error("%s: leader cannot reconcile the ring: %s", self._node_id, exc)
                    self._wake.wait(self._reconcile_interval)
                    continue
                except (Unavailable, KazooException) as exc:
                    logger.warning("%s: leader could not publish the ring: %s", self._node_id, exc)
                    self._wake.wait(0.5)
                    continue
                if not self._leading and self._in_session(gen) and not self._paused:
                    self._set_leading(True, epoch)
                self._wake.wait(self._reconcile_interval)
        finally:
            if gen == self._session_gen:
                self._set_leading(False)

    def _reconcile(self, lock_path: str, new_term: bool) -> int:
        """Publish the ring the desired state asks for, if it differs (or a new term starts)."""
        store = self._store
        assert store is not None and self._zk is not None
        registered = store.read_registered()
        desired, _ = store.read_desired()
        record, stat = store.read_ring()
        ids = tuple(sorted(k for k in registered if desired.get(k, Intent(False)).join))
        weights = {k: desired[k].weight or registered[k].weight for k in ids}
        nodes = {k: registered[k] for k in ids}
        current = record.epoch if record is not None else 0
        target = RingRecord(
            epoch=max(current, self._highest_epoch) + 1,
            members=ids,
            weights=weights,
            leader=self._node_id,
            nodes=nodes,
            vnodes=self._vnodes,
        )
        if (
            not new_term
            and record is not None
            and record.content() == target.content()
            and current >= self._highest_epoch
        ):
            return current
        tx = self._zk.transaction()
        tx.check(lock_path, 0)
        if stat is None:
            tx.create(self._layout.ring, target.to_bytes())
        else:
            tx.set_data(self._layout.ring, target.to_bytes(), stat.version)
        results = store.call(tx.commit_async())
        if isinstance(results[0], Exception):
            raise _Fenced()
        if isinstance(results[1], Exception):
            raise _Conflict()
        logger.info(
            "%s published ring epoch %d: %s",
            self._node_id, target.epoch, ", ".join(f"{k}={weights[k]:g}" for k in ids) or "(empty)",
        )
        self._accept(target)
        return target.epoch


def _with_join(intents: dict[str, Intent], node_id: str, join: bool) -> dict[str, Intent]:
    entry = intents.get(node_id, Intent(False))
    if join:
        intents[node_id] = entry._replace(join=True)
    elif entry.weight is None:
        intents.pop(node_id, None)
    else:
        intents[node_id] = entry._replace(join=False)
    return intents


def _with_weight(intents: dict[str, Intent], node_id: str, weight: float) -> dict[str, Intent]:
    intents[node_id] = intents.get(node_id, Intent(False))._replace(weight=weight)
    return intents


class RingAdmin:
    """Inspect and change a cluster's ring from the CLI (no node needed).

    Blocking calls; each change returns a sentence describing what changed
    once the leader published it, or raises ``Timeout`` after ``timeout`` s.
    """

    def __init__(
        self,
        hosts: str,
        cluster: str,
        *,
        connect_timeout: float = 10.0,
        timeout: float = 15.0,
        session_timeout: float = 10.0,
    ) -> None:
        self._hosts = hosts
        self._layout = Layout(cluster)
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._session_timeout = session_timeout
        self._zk: KazooClient | None = None
        self._store: _Store | None = None

    def _open(self) -> _Store:
        if self._store is None:
            zk = _connect(self._hosts, self._session_timeout, self._connect_timeout)
            self._zk = zk
            self._store = _Store(zk, self._layout, self._hosts, self._timeout)
        return self._store

    def close(self) -> None:
        if self._zk is not None:
            _close_client(self._zk)
        self._zk = None
        self._store = None

    def __enter__(self) -> RingAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> dict[str, Any]:
        """Members (registered, in ring or wanted), leader, epoch and share of the ring."""
        store = self._open()
        registered = store.read_registered()
        desired, _ = store.read_desired()
        record, _ = store.read_ring()
        view = record.to_view() if record is not None else RingView.empty()
        share = view.ring.share() if view.ring is not None else {}
        try:
            contenders = Election(store.zk, self._layout.election).contenders()
        except (KazooException, NoNodeError):
            contenders = []
        members: dict[str, dict[str, Any]] = {}
        for node_id in sorted(set(registered) | set(desired) | set(view.members)):
            member = view.members.get(node_id) or registered.get(node_id)
            intent = desired.get(node_id)
            if node_id in view.members:
                weight: float | None = view.members[node_id].weight
            elif intent is not None and intent.weight is not None:
                weight = intent.weight
            else:
                weight = member.weight if member is not None else None
            members[node_id] = {
                "node_id": node_id,
                "service": member.service if member else None,
                "peer": member.peer if member else None,
                "pub": member.pub if member else None,
                "http": member.http if member else None,
                "registered": node_id in registered,
                "in_ring": node_id in view.members,
                "joined": bool(intent and intent.join),
                "weight": weight,
                "share": share.get(node_id, 0.0),
            }
        return {
            "cluster": self._layout.cluster,
            "epoch": view.epoch,
            "leader": view.leader,
            "contenders": contenders,
            "vnodes": view.vnodes,
            "members": members,
        }

    def join(self, node_id: str) -> str:
        check_node_id(node_id)
        store = self._open()
        store.update_desired(lambda d: _with_join(d, node_id, True))
        record, _ = store.read_ring()
        if record is not None and node_id in record.members:
            return f"{node_id} is in the ring (epoch {record.epoch})"
        if node_id not in store.read_registered():
            return f"{node_id} is not registered; it will join the ring when it starts"
        record = self._wait_for(lambda r: node_id in r.members, f"{node_id} to join the ring")
        return f"{node_id} joined the ring at epoch {record.epoch}"

    def leave(self, node_id: str) -> str:
        check_node_id(node_id)
        store = self._open()
        store.update_desired(lambda d: _with_join(d, node_id, False))
        record, _ = store.read_ring()
        if record is None or node_id not in record.members:
            epoch = record.epoch if record is not None else 0
            return f"{node_id} is not in the ring (epoch {epoch}); it will stay out"
        record = self._wait_for(lambda r: node_id not in r.members, f"{node_id} to leave the ring")
        return f"{node_id} left the ring at epoch {record.epoch}"

    def set_weight(self, node_id: str, weight: float) -> str:
        check_node_id(node_id)
        value = check_weight(weight)
        store = self._open()
        store.update_desired(lambda d: _with_weight(d, node_id, value))
        record, _ = store.read_ring()
        if record is None or node_id not in record.members:
            return f"weight of {node_id} set to {value:g}; it applies when {node_id} is in the ring"
        old = record.weights[node_id]
        if old == value:
            return f"weight of {node_id} is {value:g} (epoch {record.epoch})"
        record = self._wait_for(
            lambda r: r.weights.get(node_id) == value, f"the new weight of {node_id}"
        )
        return f"weight of {node_id}: {old:g} -> {value:g} at epoch {record.epoch}"

    def _wait_for(self, done: Callable[[RingRecord], bool], what: str) -> RingRecord:
        store = self._open()
        deadline = time.monotonic() + self._timeout
        record: RingRecord | None = None
        while True:
            record, _ = store.read_ring()
            if record is not None and done(record):
                return record
            if time.monotonic() >= deadline:
                epoch = record.epoch if record is not None else 0
                leader = record.leader if record is not None else None
                raise Timeout(
                    f"the leader did not publish {what} within {self._timeout:g}s "
                    f"(ring epoch {epoch}, last leader {leader}); is any node of cluster "
                    f"{self._layout.cluster} running?"
                )
            gevent.sleep(0.1)
