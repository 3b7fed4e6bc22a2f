"""Cluster membership, ring epochs and leader election on ZooKeeper (kazoo).

One :class:`ZooKeeperCoordinator` per node. Its parts:

* :mod:`miyaq.cluster.zk_layout`: the znodes and the JSON they hold;
* :mod:`miyaq.cluster.zk_store`: znode reads and writes with deadlines;
* :mod:`miyaq.cluster.zk_session`: session states, watches, re-registration;
* :mod:`miyaq.cluster.zk_leader`: the election, reconciliation and the
  fenced ring writes;
* :mod:`miyaq.cluster.ring_admin`: operator commands (re-exported here, as
  are the layout names, for older imports).

This module owns the lifecycle (start, stop) and the views: followers apply a
ring only if its epoch is higher than the one they hold. A node started with
``auto_join=True`` writes ``join: true`` for itself once, at start.

kazoo runs with ``SequentialGeventHandler`` (no monkey patching). View and
leader listeners run in order in one notifier greenlet. Do not call
:meth:`ZooKeeperCoordinator.stop` from a listener.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.queue
from kazoo.client import KazooClient
from kazoo.recipe.election import Election

from miyaq.cluster.membership import (
    Coordinator,
    Member,
    RingView,
    check_node_id,
    check_weight,
)
from miyaq.cluster.ring import DEFAULT_VNODES
from miyaq.cluster.ring_admin import RingAdmin
from miyaq.cluster.zk_layout import (  # the layout names are re-exported for older imports
    ROOT,
    Intent,
    Layout,
    RingRecord,
    check_cluster_name,
    dump_desired,
    parse_desired,
    with_join,
    with_weight,
)
from miyaq.cluster.zk_leader import LeaderRole
from miyaq.cluster.zk_session import SessionRole
from miyaq.cluster.zk_store import ZnodeStore, check_options, close_client, connect
from miyaq.errors import ConfigError

__all__ = [
    "ROOT", "Intent", "Layout", "RingAdmin", "RingRecord", "ZooKeeperCoordinator",
    "check_cluster_name", "dump_desired", "parse_desired",
]

logger = logging.getLogger(__name__)


class ZooKeeperCoordinator(SessionRole, LeaderRole, Coordinator):
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
        check_options(hosts, vnodes, connect_timeout=connect_timeout, session_timeout=session_timeout,
                      op_timeout=op_timeout, reconcile_interval=reconcile_interval)
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
        self._store: ZnodeStore | None = None
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
        """The kazoo client (None before ``start``); the same object for the
        coordinator's life. Besides tests, periodic schedules keep their znodes
        with it (:mod:`miyaq.cluster.periodic_store`)."""
        return self._zk

    def registered(self) -> dict[str, Member]:
        return dict(self._registered)

    def start(self) -> None:
        """Connect, register, watch and campaign; ``Unavailable`` if ZooKeeper cannot be reached."""
        if self._started:
            return
        if self._closing:
            raise ConfigError("a stopped ZooKeeperCoordinator cannot be restarted; make a new one")
        zk = connect(self._hosts, self._session_timeout, self._connect_timeout)
        self._started = True
        self._zk = zk
        self._store = ZnodeStore(zk, self._layout, self._hosts, self._op_timeout)
        try:
            self._notifier_g = self._spawn(self._notifier)
            zk.add_listener(self._on_state)
            self._store.ensure_paths()
            self._register()
            if self._auto_join:
                self._store.update_desired(lambda d: with_join(d, self._node_id, True))
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
        self._require_store().update_desired(lambda d: with_join(d, node_id, True))

    def leave(self, node_id: str) -> None:
        check_node_id(node_id)
        self._require_store().update_desired(lambda d: with_join(d, node_id, False))

    def set_weight(self, node_id: str, weight: float) -> None:
        check_node_id(node_id)
        value = check_weight(weight)
        self._require_store().update_desired(lambda d: with_weight(d, node_id, value))

    # -- lifecycle internals ----------------------------------------------------

    def _register(self) -> None:
        """Create our ephemeral member znode, waiting out a previous incarnation's."""
        assert self._store is not None
        self._store.register(self._member, wait=2 * self._session_timeout + 2)

    def _require_store(self) -> ZnodeStore:
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
            close_client(zk)
        gevent.killall([g for g in self._greenlets if g is not gevent.getcurrent()], timeout=2)
        self._greenlets = []
        logger.info("%s left cluster %s", self._node_id, self.cluster)

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

    def _notifier(self) -> None:
        while True:
            item = self._notices.get()
            if item is None:
                return
            fn, args = item
            fn(*args)
