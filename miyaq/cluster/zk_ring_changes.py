"""A node's own asks to change the ring (:class:`RingChanges`): join,
leave and weight, for :class:`~miyaq.cluster.zk_coordinator.ZooKeeperCoordinator`.

Constraints:

* A node never writes the ring: a change goes to the ``desired`` znode
  (compare-and-set, :class:`~miyaq.cluster.zk_store.ZnodeStore`), and the
  leader publishes the ring it asks for.
* A join or a weight is stored only if the ring it asks for fits
  (:func:`~miyaq.cluster.ring_admin.change_desired`, the check ``miyaq
  join`` and ``ring weight`` make); else ``ConfigError`` and nothing is
  stored -- the leader would refuse to publish that ring, and then every
  later change. A node started with ``auto_join=True`` asks to join once,
  at start, checked the same way (:meth:`RingChanges.auto_join`).
* A change asked while the coordinator is not running is refused
  (``ConfigError``), and one asked while its session is not usable too, at
  once (``Unavailable``). A connection lost during the change is refused
  the same way; whether the write reached ZooKeeper is not known then, and
  asking again once it is back is safe (joins, leaves and weights set a
  value).
* Its log lines go to the coordinator's logger (``miyaq.cluster.zk_coordinator``):
  one logger to follow a node's coordination.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from miyaq.cluster.ring_admin import Change, change_desired
from miyaq.cluster.ring_view import check_node_id
from miyaq.cluster.zk_layout import Intent, with_join, with_weight
from miyaq.cluster.zk_session import Session
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.errors import ConfigError, Unavailable
from miyaq.protocol.ring import check_weight

__all__ = ["RingChanges"]

logger = logging.getLogger("miyaq.cluster.zk_coordinator")    # the coordinator's lines: one logger to follow it

Running = Callable[[], tuple[ZnodeStore, Session] | None]
"""The coordinator's store and session while it runs; None before its start and once it stops."""


class RingChanges:
    """The ring changes one node asks for. ``node_id`` is the node's own id
    (for its auto-join), ``hosts`` the ZooKeeper connection string (named in
    refusals), ``running`` the coordinator's store and session while it runs."""

    def __init__(self, node_id: str, hosts: str, running: Running) -> None:
        self._node_id = node_id
        self._hosts = hosts
        self._running = running

    def auto_join(self, store: ZnodeStore) -> None:
        """Want this node in the ring, checked as :meth:`join` is
        (:func:`~miyaq.cluster.ring_admin.change_desired`): when the ring
        that asks for would have too many points, nothing is stored and the
        node starts out of the ring and says why (before, the join was stored
        unchecked, and the leader then published no ring again). An entry
        that wants the node in already is left as it is, unchecked: this
        start changes nothing the leader has not been asked. An unreadable
        ``desired`` is rebuilt from the published ring
        (:meth:`ZnodeStore.update_desired`); when it cannot be (no ring
        either), the node starts out of the ring and says why too."""
        try:
            if store.read_desired()[0].get(self._node_id, Intent(False)).join:
                return
        except ConfigError:
            pass        # unreadable: the change below rebuilds it
        try:
            change_desired(store, f"join {self._node_id}", lambda d: with_join(d, self._node_id, True),
                           self._node_id)
        except ConfigError as exc:
            logger.error("%s cannot ask to join the ring, and starts out of it: %s", self._node_id, exc.message)

    def join(self, node_id: str) -> None:
        """Want ``node_id`` in the ring; ``ConfigError`` (nothing stored) when
        the ring that asks for would have too many points, as
        ``miyaq ring join`` says."""
        check_node_id(node_id)
        self._change_desired(f"join {node_id}", lambda d: with_join(d, node_id, True), node_id)

    def leave(self, node_id: str) -> None:
        """Want ``node_id`` out of the ring (stored without the ring-size
        check a join and a weight pass)."""
        check_node_id(node_id)
        action = f"leave {node_id}"
        store = self._require_store(action)
        with self._refused_if_lost(action):
            store.update_desired(lambda d: with_join(d, node_id, False))

    def set_weight(self, node_id: str, weight: float) -> None:
        """Set ``node_id``'s ring weight; ``ConfigError`` (nothing stored) when
        the ring would have too many points, counting the nodes wanted in as
        :func:`~miyaq.cluster.zk_layout.fitting` does."""
        check_node_id(node_id)
        value = check_weight(weight)
        self._change_desired(f"set the weight of {node_id} to {value:g}",
                             lambda d: with_weight(d, node_id, value), node_id)

    def _change_desired(self, action: str, change: Change, node_id: str) -> None:
        """Store ``change`` of ``desired`` if the ring it asks for fits, the
        check ``miyaq join`` and ``ring weight`` make
        (:func:`~miyaq.cluster.ring_admin.change_desired`); the leader would
        refuse to publish one that does not, and then every later change."""
        store = self._require_store(action)
        with self._refused_if_lost(action):
            change_desired(store, action, change, node_id)

    @contextmanager
    def _refused_if_lost(self, action: str) -> Iterator[None]:
        """A connection lost during the change (``Unavailable`` from the store:
        the session was usable when asked, then a server went, or the
        ensemble lost its quorum) is refused as a change asked while the
        connection is down is. Whether the write reached ZooKeeper before
        the loss is not known: joins, leaves and weights set a value, so
        asking again once it is back is safe."""
        try:
            yield
        except Unavailable as exc:
            raise Unavailable(f"cannot {action}: {exc.message} (the connection to ZooKeeper was lost during "
                              f"the change, which may or may not have been stored: ask again once it is back); "
                              f"ring changes are refused until it is back", hosts=self._hosts) from None

    def _require_store(self, action: str) -> ZnodeStore:
        """The store for a change; refused at once while the session is not usable."""
        running = self._running()
        if running is None:
            raise ConfigError(f"cannot {action}: the coordinator is not running")
        store, session = running
        if not session.usable:
            raise Unavailable(f"cannot {action}: the connection to ZooKeeper at {self._hosts} is "
                              f"{session.state} (a server is down, or the ensemble lost its quorum); "
                              f"ring changes are refused until it is back", hosts=self._hosts)
        return store
