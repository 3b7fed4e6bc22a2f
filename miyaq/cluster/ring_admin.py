"""Inspect and change a cluster's ring from outside (the CLI): no node needed.

Constraints:

* An admin never writes the ring: ``join``/``leave``/``set_weight`` change
  only the ``desired`` znode (compare-and-set) and then wait, polling the
  ``ring`` znode, until the leader has published the change. When no node
  runs, the intent is stored and applies when one does.
* Every call blocks the calling greenlet; ZooKeeper operations are bounded
  by ``timeout`` (``Unavailable``), waits for the leader too (``Timeout``).
* Opening is lazy (the first call connects); :meth:`RingAdmin.close` (or the
  context manager) closes the session.
* When ZooKeeper does not answer, the ``Unavailable`` says why, from the
  servers' own account (:func:`~miyaq.cluster.zk_probe.diagnose`): none
  reachable, or an ensemble that lost its quorum -- then no ring change can
  be made, and the nodes go on serving tasks on the ring they hold.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from kazoo.client import KazooClient

from miyaq.cluster.ring_view import Member, RingView, check_node_id
from miyaq.protocol.ring import check_weight
from miyaq.cluster.zk_auth import ZkAuth
from miyaq.cluster.zk_layout import Intent, Layout, RingRecord, fitting, not_registered, pruned, with_join, with_weight
from miyaq.cluster.zk_leader import target_weights
from miyaq.protocol.ring import DEFAULT_VNODES
from miyaq.cluster.zk_client import check_hosts, close_client, connect
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.cluster.zk_probe import diagnose
from miyaq.errors import ConfigError, Timeout, Unavailable
from miyaq.runtime import green, monotonic

logger = logging.getLogger(__name__)

Change = Callable[[dict[str, Intent]], dict[str, Intent]]
"""A change of the ``desired`` intents (``zk_layout.with_join``, ``with_weight``)."""


def change_desired(store: ZnodeStore, action: str, change: Change,
                   node_id: str) -> tuple[RingRecord | None, dict[str, Member]]:
    """Store ``change`` of ``desired`` (compare-and-set) if the ring it asks
    for fits: the one ring-size check of every join and weight -- ``miyaq
    join`` and ``ring weight`` (:class:`RingAdmin`), a node's
    ``ZooKeeperCoordinator.join``/``set_weight`` and its auto-join at start.
    ``node_id`` is the node joined or given a weight; the count is
    :func:`~miyaq.cluster.zk_layout.fitting`'s. When it does not fit:
    ``ConfigError`` naming ``action`` ("cannot join n3: a ring of ...
    points is over the 65536 ..."), and nothing is stored -- the leader
    would refuse to publish that ring, and with it every later change.
    Returns the published ring and the registered members it was checked
    against (read before the write)."""
    ring, _ = store.read_ring()
    registered = store.read_registered()
    store.update_desired(lambda d: fitting(pruned(change(d), registered, ring, also=node_id), registered, ring,
                                           action, also=node_id))
    return ring, registered


def check_registration(store: ZnodeStore, member: Member, vnodes: int) -> None:
    """``ConfigError`` when registering ``member`` would make the ring the
    leader builds too large: its ``desired`` entry wants it in at no weight
    of its own, so its registered weight counts, and a node restarted with a
    larger ``--weight`` (1000 where it had 1) asked the leader for a ring
    past the point limit -- which the leader refuses to publish, and with it
    every later join, leave and weight of every node. Counted as the leader
    counts (:func:`~miyaq.cluster.zk_leader.target_weights`: registered
    nodes wanted in). A ring that is too large without this node is not
    this start's doing and does not refuse it; nor does an unreadable
    ``desired`` (the auto-join rebuilds it)."""
    try:
        desired, _ = store.read_desired()
    except ConfigError:
        return
    intent = desired.get(member.node_id)
    if intent is None or not intent.join or intent.weight is not None:
        return
    ring, _ = store.read_ring()
    if ring is not None:
        vnodes = ring.vnodes
    registered = store.read_registered()
    registered.pop(member.node_id, None)
    try:
        target_weights(registered, desired, vnodes)
    except ConfigError:
        return
    try:
        target_weights({**registered, member.node_id: member}, desired, vnodes)
    except ConfigError as exc:
        raise ConfigError(f"{member.node_id} cannot register with weight {member.weight:g}: the ring it is "
                          f"wanted in would be too large ({exc.message}); start it with a smaller --weight, "
                          "or take it out first (miyaq leave)") from None


class RingAdmin:
    """Inspect and change a cluster's ring from the CLI (no node needed).

    Blocking calls; each change returns a sentence describing what changed
    once the leader published it, or raises ``Timeout`` after ``timeout`` s.
    ``auth`` is the cluster's ZooKeeper credentials: without them a protected
    cluster can be neither read nor changed (``Forbidden``).
    """

    def __init__(
        self,
        hosts: str,
        cluster: str,
        *,
        connect_timeout: float = 10.0,
        timeout: float = 15.0,
        session_timeout: float = 10.0,
        auth: ZkAuth | None = None,
    ) -> None:
        self._hosts = check_hosts(hosts)
        self._auth = auth
        self._layout = Layout(cluster)
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._session_timeout = session_timeout
        self._zk: KazooClient | None = None
        self._store: ZnodeStore | None = None

    @property
    def hosts(self) -> str:
        return self._hosts

    @property
    def cluster(self) -> str:
        return self._layout.cluster

    def _open(self, changing: bool = False) -> ZnodeStore:
        """The store, connected; for a change, ``Unavailable`` unless the connection is up now."""
        if self._store is None:
            zk = connect(self._hosts, self._session_timeout, self._connect_timeout, self._auth)
            self._zk = zk
            self._store = ZnodeStore(zk, self._layout, self._hosts, self._timeout)
        if changing and not self._store.zk.connected:
            raise Unavailable(f"the connection to ZooKeeper at {self._hosts} is down", hosts=self._hosts)
        return self._store

    @contextmanager
    def _explained(self, action: str) -> Iterator[None]:
        """Re-raise ``Unavailable`` with what the servers say about themselves."""
        try:
            yield
        except Unavailable as exc:
            diagnosis = diagnose(self._hosts)
            raise Unavailable(f"cannot {action}: {exc.message}; {diagnosis.text}", hosts=self._hosts,
                              reason=diagnosis.reason) from None

    def close(self) -> None:
        """Close the ZooKeeper session; idempotent."""
        if self._zk is not None:
            close_client(self._zk)
        self._zk = None
        self._store = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self, purpose: str = "read the ring") -> dict[str, Any]:
        """Members (registered, in ring or wanted), leader, epoch and share of
        the ring, and ``not_registered``: the ids ``desired`` wants in the
        ring that are not registered now (stopped, or gone for good: ``miyaq
        leave`` forgets one). ``purpose`` names what the caller is doing, in
        an ``Unavailable`` ("cannot <purpose>: ...")."""
        with self._explained(purpose):
            return self._status()

    def _status(self) -> dict[str, Any]:
        """Reads only: creates no znode (before 2026-12-05 it created the
        election path, and with credentials a digest-only ``/miyaq``). An
        unreadable ``desired`` is reported in ``desired_error``, not raised:
        the ring is still shown."""
        store = self._open()
        registered = store.read_registered()
        try:
            desired, _ = store.read_desired()
            desired_error = None
        except ConfigError as exc:
            desired, desired_error = {}, store.unreadable_desired(exc.message)
        record, _ = store.read_ring()
        view = record.to_view() if record is not None else RingView.empty()
        share = view.ring.share() if view.ring is not None else {}
        contenders = store.read_contenders()
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
            "not_registered": not_registered(desired, registered),
            "desired_error": desired_error,
        }

    # Each change reads the ring *before* writing the intent: a fast leader may
    # publish between the write and the next read, and the answer must still
    # say what this call changed.

    def join(self, node_id: str) -> str:
        """Want ``node_id`` in the ring; returns once the leader published it (or why not)."""
        check_node_id(node_id)
        with self._explained(f"join {node_id}"):
            return self._join(node_id)

    def _join(self, node_id: str) -> str:
        store = self._open(changing=True)
        before, registered = change_desired(store, f"join {node_id}", lambda d: with_join(d, node_id, True),
                                            node_id)
        if before is not None and node_id in before.members:
            return f"{node_id} is in the ring (epoch {before.epoch})"
        if node_id not in registered:
            return f"{node_id} is not registered; it will join the ring when it starts"
        record = self._wait_for(lambda r: node_id in r.members, f"{node_id} to join the ring")
        return f"{node_id} joined the ring at epoch {record.epoch}"

    def leave(self, node_id: str) -> str:
        """Want ``node_id`` out of the ring; returns once the leader published it."""
        check_node_id(node_id)
        with self._explained(f"leave {node_id}"):
            return self._leave(node_id)

    def _leave(self, node_id: str) -> str:
        store = self._open(changing=True)
        before, _ = store.read_ring()
        store.update_desired(lambda d: with_join(d, node_id, False))
        if before is None or node_id not in before.members:
            epoch = before.epoch if before is not None else 0
            return (f"{node_id} is not in the ring (epoch {epoch}); it stays out until `miyaq join {node_id}`, "
                    "or until it starts again with auto-join (the default)")
        record = self._wait_for(lambda r: node_id not in r.members, f"{node_id} to leave the ring")
        return f"{node_id} left the ring at epoch {record.epoch}"

    def set_weight(self, node_id: str, weight: float) -> str:
        """Set ``node_id``'s ring weight; returns once the leader published it."""
        check_node_id(node_id)
        value = check_weight(weight)
        with self._explained(f"set the weight of {node_id}"):
            return self._set_weight(node_id, value)

    def _set_weight(self, node_id: str, value: float) -> str:
        store = self._open(changing=True)
        before, _ = change_desired(store, f"set the weight of {node_id} to {value:g}",
                                   lambda d: with_weight(d, node_id, value), node_id)
        if before is None or node_id not in before.members:
            return f"weight of {node_id} set to {value:g}; it applies when {node_id} is in the ring"
        old = before.weights[node_id]
        if old == value:
            return f"weight of {node_id} is {value:g} (epoch {before.epoch})"
        record = self._wait_for(
            lambda r: r.weights.get(node_id) == value, f"the new weight of {node_id}"
        )
        return f"weight of {node_id}: {old:g} -> {value:g} at epoch {record.epoch}"

    def _unpublished_reason(self, store: ZnodeStore) -> str:
        """Why the leader may not have published the desired ring, as far as ZooKeeper tells."""
        try:
            desired, _ = store.read_desired()
        except ConfigError as exc:
            return store.unreadable_desired(exc.message)
        registered = store.read_registered()
        record, _ = store.read_ring()
        try:
            target_weights(registered, desired, record.vnodes if record is not None else DEFAULT_VNODES)
        except ConfigError as exc:
            return f"the leader cannot publish the ring it asks for: {exc.message}"
        return f"is any node of cluster {self._layout.cluster} running?"

    def _wait_for(self, done: Callable[[RingRecord], bool], what: str) -> RingRecord:
        store = self._open()
        deadline = monotonic() + self._timeout
        record: RingRecord | None = None
        while True:
            record, _ = store.read_ring()
            if record is not None and done(record):
                return record
            if monotonic() >= deadline:
                raise self._timed_out(store, record, what)
            green.sleep(0.1)

    def _timed_out(self, store: ZnodeStore, record: RingRecord | None, what: str) -> Timeout:
        epoch = record.epoch if record is not None else 0
        leader = record.leader if record is not None else None
        try:
            reason = self._unpublished_reason(store)
        except Unavailable as exc:
            reason = exc.message
        return Timeout(
            f"the leader did not publish {what} within {self._timeout:g}s (ring epoch {epoch}, last leader "
            f"{leader}): {reason}; the request stays stored in {self._layout.desired} and applies once the "
            "leader publishes it"
        )


