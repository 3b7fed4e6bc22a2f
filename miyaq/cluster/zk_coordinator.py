"""Cluster membership, ring epochs and leader election on ZooKeeper (kazoo).

One :class:`ZooKeeperCoordinator` per node, composed of objects that each
keep their own state and can be tested alone:

* :class:`~miyaq.cluster.zk_session.Session`: the kazoo client, its state
  (suspended, lost) and its generation; tells the others of every change;
* :class:`~miyaq.cluster.zk_registry.Registry`: our member znode (made
  again after a lost session) and the cache of every member;
* :class:`~miyaq.cluster.zk_leader.Leader`: the election, the fenced ring
  writes, abdication on SUSPENDED and LOST;
* :class:`~miyaq.cluster.zk_store.ZnodeStore` and
  :mod:`~miyaq.cluster.zk_layout`: znode reads and writes, and their JSON;
* :class:`~miyaq.cluster.zk_ring_changes.RingChanges`: the ring changes
  the node asks for (join, leave, weight; its auto-join at start).

This module owns the lifecycle (start, stop) and the views: a ring is adopted
only if its epoch is higher than the one held. A node started with
``auto_join=True`` writes ``join: true`` for itself once, at start. A node
whose cluster key is not that of the live members refuses to start before
it registers (:mod:`~miyaq.cluster.zk_keys`).

Every greenlet is spawned through the :class:`~miyaq.runtime.Supervisor`
the owner hands in, named ``zk-<node id>:...`` and restarted if it crashes
(past its restart budget the supervisor stops the process). View and leader
listeners run in order in one notifier greenlet. kazoo runs with
``SequentialGeventHandler`` (no monkey patching). Do not call
:meth:`ZooKeeperCoordinator.stop` from a listener.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient

from miyaq.cluster.membership import Coordinator
from miyaq.protocol.ring import DEFAULT_VNODES
from miyaq.cluster.ring_view import Member, RingView
from miyaq.cluster.zk_auth import ZkAuth
from miyaq.cluster.ring_admin import check_registration
from miyaq.cluster.zk_keys import check_after_register, check_before_register
from miyaq.cluster.zk_layout import NO_CLUSTER_KEY, Layout, RingRecord
from miyaq.cluster.zk_leader import Leader
from miyaq.cluster.zk_registry import Registry
from miyaq.cluster.zk_ring_changes import RingChanges
from miyaq.cluster.zk_session import Session
from miyaq.cluster.zk_client import check_options
from miyaq.cluster.zk_failover import through_failover
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.errors import ConfigError, Unavailable
from miyaq.runtime import RESTART, Supervisor, green, monotonic

__all__ = ["ZooKeeperCoordinator"]

logger = logging.getLogger(__name__)

Notice = tuple[Callable[..., None], tuple[Any, ...]] | None


class ZooKeeperCoordinator(Coordinator):
    """Membership, ring and leadership for one node, kept in ZooKeeper.

    ``hosts`` is a kazoo connection string; ``cluster`` names the subtree.
    ``supervisor`` spawns the coordinator's greenlets (the node's own).
    ``auth`` (digest credentials) protects the cluster's znodes with ACLs
    (:mod:`miyaq.cluster.zk_auth`): znodes made before are given them at start.
    ``cluster_key`` is the fingerprint of the node's cluster key
    (:func:`miyaq.security.curve.key_fingerprint`; ``"none"`` without keys),
    published in its member znode and compared at start with the live
    members' (:mod:`miyaq.cluster.zk_keys`: another one refuses the start,
    ``ConfigError``); None publishes and compares nothing (as a build before
    2026-12-06). ``auto_join`` records "join" for ``local`` at start. ``leader_eligible=False``
    makes a node that never campaigns (it still registers and follows).
    ``connect_timeout`` bounds the first connection, in ``start`` (the
    node's ``zk_connect_timeout``; later the client reconnects without
    end); ``session_timeout`` is asked of the server (which clamps it to
    2-20 tickTimes); ``op_timeout`` bounds each
    znode operation; the leader re-checks the desired state every
    ``reconcile_interval`` seconds besides reacting to watches.
    """

    def __init__(
        self,
        hosts: str,
        cluster: str,
        local: Member,
        *,
        supervisor: Supervisor,
        auth: ZkAuth | None = None,
        cluster_key: str | None = NO_CLUSTER_KEY,
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
        if not isinstance(supervisor, Supervisor):
            raise ConfigError("ZooKeeperCoordinator needs the owner's Supervisor")
        check_options(hosts, vnodes, connect_timeout=connect_timeout, session_timeout=session_timeout,
                      op_timeout=op_timeout, reconcile_interval=reconcile_interval)
        super().__init__(local)
        self._member = local
        self._node_id = local.node_id
        self._hosts = hosts
        self._layout = Layout(cluster)
        self._supervisor = supervisor
        self._auth = auth
        self._cluster_key = cluster_key
        self._part = f"zk-{local.node_id}"
        self._auto_join = auto_join
        self._eligible = leader_eligible
        self._connect_timeout = float(connect_timeout)
        self._session_timeout = float(session_timeout)
        self._op_timeout = float(op_timeout)
        self._reconcile_interval = float(reconcile_interval)
        self._vnodes = vnodes

        self._session: Session | None = None
        self._store: ZnodeStore | None = None
        self._registry: Registry | None = None
        self._leader: Leader | None = None
        self._started = False
        self._closing = False
        self._listed_at_start = False
        self._ring_read = False          # _listed_at_start was read this start (_register)
        self._view = RingView.empty()
        self._notices: green.Queue = green.Queue()
        self._notifier_done = green.Event()
        self._changes = RingChanges(local.node_id, hosts, self._running)

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
        return self._leader is not None and self._leader.is_leader

    @property
    def connection(self) -> str:
        """The ZooKeeper session's state: ``connected``, ``suspended`` (connection in doubt:
        a server down, or no quorum), ``lost`` (expired, no new session yet), ``closed``."""
        if self._session is None:
            return "closed" if self._closing else "connecting"
        return self._session.state

    @property
    def client(self) -> KazooClient | None:
        """The kazoo client (None before ``start``); the same object for the
        coordinator's life. Besides tests, periodic schedules keep their znodes
        with it (:mod:`miyaq.cluster.periodic_store`)."""
        return self._session.zk if self._session is not None else None

    @property
    def session(self) -> Session | None:
        """The session (None before ``start``): its state, for status and tests."""
        return self._session

    def silent_for(self) -> float:
        since = self._session.silent_since if self._session is not None else None
        return 0.0 if since is None else max(0.0, monotonic() - since)

    def session_lost(self) -> bool:
        return self._session is not None and self._session.lost

    def confirm_view(self, epoch: int, done: Callable[[bool], None]) -> None:
        """Read the ring znode on the current session (a round trip): True if
        it succeeded and the ring's epoch is ``epoch``."""
        session = self._session
        if session is None or self._closing or session.lost:
            done(False)
            return
        try:
            result = session.zk.get_async(self._layout.ring)
        except Exception:       # no connection, closing: not confirmed
            done(False)
            return

        def answered(result: Any) -> None:
            try:
                data, _ = result.get_nowait()
                confirmed = bool(data) and RingRecord.from_bytes(data).epoch == epoch and not session.lost
            except Exception:   # SessionExpiredError, ConnectionLoss, a bad znode
                confirmed = False
            done(confirmed)

        result.rawlink(answered)

    def registered(self) -> dict[str, Member]:
        return self._registry.registered() if self._registry is not None else {}

    def listed_at_start(self) -> bool:
        """Whether the ring znode listed this node when :meth:`start` read
        it, just before registering (see the base class)."""
        return self._listed_at_start

    def start(self) -> None:
        """Connect, register, watch and campaign; ``Unavailable`` if ZooKeeper
        cannot be reached, ``ConfigError`` (nothing registered) if a live
        member uses another cluster key (:mod:`~miyaq.cluster.zk_keys`)."""
        if self._started:
            return
        if self._closing:
            raise ConfigError("a stopped ZooKeeperCoordinator cannot be restarted; make a new one")
        try:
            session = Session.open(self._hosts, self._node_id, session_timeout=self._session_timeout,
                                   connect_timeout=self._connect_timeout, auth=self._auth)
        except Unavailable as exc:
            raise Unavailable(f"{exc.message} (--zk-connect-timeout): is ZooKeeper running there? Start it (one "
                              "still starting may need a longer --zk-connect-timeout), or pass --zk (MIYAQ_ZK) "
                              "the host:port list of a running ensemble (without --zk the node runs "
                              "standalone)", **exc.details) from None
        self._started = True
        self._session = session
        store = self._store = ZnodeStore(session.zk, self._layout, self._hosts, self._op_timeout)
        wait = 2 * self._session_timeout + 2
        registry = self._registry = Registry(session, store, self._member, self._supervisor, part=self._part,
                                             wait=wait, cluster_key=self._cluster_key)
        leader = self._leader = Leader(
            session, store, registry, self._supervisor, part=self._part, node_id=self._node_id,
            vnodes=self._vnodes, reconcile_interval=self._reconcile_interval,
            announce=self._announce_leadership, accept=self._accept, highest_epoch=lambda: self._view.epoch,
        )
        session.subscribe(registry.on_session)
        session.subscribe(leader.on_session)
        registry.on_change(leader.wake)
        try:
            self._supervisor.spawn(f"{self._part}:notifier", self._notifier, policy=RESTART)
            through_failover(lambda: self._register(store, registry, wait), self._connect_timeout, self._node_id)
            registry.start()
            session.zk.DataWatch(self._layout.ring, self._on_ring)
            session.zk.DataWatch(self._layout.desired, self._on_desired)
            if self._eligible:
                leader.start()
        except BaseException:
            self._shutdown(graceful=False)
            raise
        logger.info("%s registered in cluster %s at %s (auto_join=%s)",
                    self._node_id, self.cluster, self._hosts, self._auto_join)

    def _register(self, store: ZnodeStore, registry: Registry, wait: float) -> None:
        """The registration's steps, each idempotent (:mod:`.zk_failover`)."""
        store.ensure_paths()
        store.protect()
        if self._cluster_key is not None:
            check_before_register(store, self._node_id, self._cluster_key, wait)
        check_registration(store, self._member, self._vnodes)
        if not self._ring_read:
            # Before registering: a ring that lists us is not our doing. Read
            # once a start: a try after one that registered (and asked to join)
            # may find the ring that join made (review32).
            ring, _ = store.read_ring()
            self._listed_at_start = ring is not None and self._node_id in ring.members
            self._ring_read = True
        registry.register()
        if self._cluster_key is not None:
            check_after_register(store, self._node_id, self._cluster_key)
        if self._auto_join:
            self._changes.auto_join(store)

    def stop(self) -> None:
        """Abdicate, close the session (the member znode goes at once), stop greenlets."""
        if not self._started or self._closing:
            self._closing = True
            return
        self._shutdown(graceful=True)

    def join(self, node_id: str) -> None:
        """Want ``node_id`` in the ring (:meth:`RingChanges.join
        <miyaq.cluster.zk_ring_changes.RingChanges.join>`: ``ConfigError``,
        nothing stored, when that ring would have too many points)."""
        self._changes.join(node_id)

    def leave(self, node_id: str) -> None:
        """Want ``node_id`` out of the ring (:meth:`RingChanges.leave
        <miyaq.cluster.zk_ring_changes.RingChanges.leave>`)."""
        self._changes.leave(node_id)

    def set_weight(self, node_id: str, weight: float) -> None:
        """Set ``node_id``'s ring weight (:meth:`RingChanges.set_weight
        <miyaq.cluster.zk_ring_changes.RingChanges.set_weight>`: ``ConfigError``,
        nothing stored, when the ring would have too many points)."""
        self._changes.set_weight(node_id, weight)

    # -- lifecycle internals ----------------------------------------------------

    def _running(self) -> tuple[ZnodeStore, Session] | None:
        """The store and the session ring changes use; None before the start and once stopping."""
        if self._store is None or self._session is None or self._closing:
            return None
        return self._store, self._session

    def _shutdown(self, graceful: bool) -> None:
        self._closing = True
        if self._leader is not None:
            # Lets the leader loop return and kazoo release the election znode
            # -- not waited for while ZooKeeper is out of reach: nothing can be
            # released then (the znode goes with the session), and the wait
            # took the whole op_timeout off the node's stop (10 s of its
            # budget on a pod's SIGTERM, before 2026-12-05).
            usable = self._session is not None and self._session.usable
            self._leader.stop(self._op_timeout if graceful and usable else 0.0)
        if self._registry is not None:
            self._registry.stop()
        self._notices.put(None)
        if not self._supervisor.stopping:      # else the notifier is gone already: nothing to wait for
            self._notifier_done.wait(self._op_timeout)
        if self._session is not None:
            self._session.close()
        self._supervisor.kill_part(f"{self._part}:")
        logger.info("%s left cluster %s", self._node_id, self.cluster)

    # -- watches (kazoo's greenlet: never block) ----------------------------------

    def _on_ring(self, data: bytes | None, stat: Any) -> bool | None:
        if self._closing:
            return False
        try:
            if self._leader is not None and self._leader.leading:
                self._leader.wake()
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

    def _on_desired(self, data: bytes | None, stat: Any) -> bool | None:
        if self._closing:
            return False
        if self._leader is not None:
            self._leader.wake()
        return None

    # -- views and notifications ------------------------------------------------

    def _accept(self, record: RingRecord) -> bool:
        """Adopt ``record`` if it is newer than the view we hold."""
        held = self._view.epoch
        if record.epoch <= held:
            if record.epoch < held:
                logger.info("%s: ignoring stale ring epoch %d (holding %d)", self._node_id, record.epoch, held)
            return False
        try:
            view = record.to_view()
        except ConfigError as exc:
            logger.warning("%s: ignoring invalid ring epoch %d: %s", self._node_id, record.epoch, exc)
            return False
        self._view = view     # its epoch is the highest this node has seen: only a newer one is adopted
        self._view_changed.set()
        self._notices.put((self._deliver_view, (view,)))
        return True

    def _announce_leadership(self, is_leader: bool, epoch: int) -> None:
        self._notices.put((self._deliver_leadership, (is_leader, epoch)))

    def _notifier(self) -> None:
        """Deliver views and leadership changes in order (listeners are isolated by the base class)."""
        while True:
            item: Notice = self._notices.get()
            if item is None:
                self._notifier_done.set()
                return
            fn, args = item
            fn(*args)
