"""The leader's half of the ZooKeeper coordinator: campaign, reconcile, publish the ring.

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
* A paused coordinator (session SUSPENDED) publishes nothing and is not
  leader until its connection is back; a lost session ends the campaign.

:class:`LeaderRole` is a mixin of
:class:`~miyaq.cluster.zk_coordinator.ZooKeeperCoordinator`: it shares the
coordinator's session state (the attributes annotated below) and runs in the
coordinator's greenlets. One campaign greenlet per session generation.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import gevent
import gevent.event
import gevent.queue
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.recipe.election import Election

from miyaq.cluster.membership import Member
from miyaq.cluster.zk_layout import Intent, Layout, RingRecord
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.errors import ConfigError, MiyaqError, Unavailable

# A child of miyaq.cluster.zk_coordinator's logger: one object, one logging tree to configure.
logger = logging.getLogger("miyaq.cluster.zk_coordinator.leader")


class _Fenced(Exception):
    """Our election znode is gone: we are no longer leader."""


class _Conflict(Exception):
    """Someone else wrote the ring between our read and our write."""


def target_ring(
    registered: Mapping[str, Member],
    desired: Mapping[str, Intent],
    *,
    epoch: int,
    leader: str,
    vnodes: int,
) -> RingRecord:
    """The ring the desired state asks for: registered nodes that should be in, with their weights."""
    ids = tuple(sorted(k for k in registered if desired.get(k, Intent(False)).join))
    return RingRecord(
        epoch=epoch,
        members=ids,
        weights={k: desired[k].weight or registered[k].weight for k in ids},
        leader=leader,
        nodes={k: registered[k] for k in ids},
        vnodes=vnodes,
    )


class LeaderRole:
    """Campaigning and, while elected, keeping the published ring equal to the desired one."""

    # Shared with ZooKeeperCoordinator, which sets them in __init__.
    _node_id: str
    _eligible: bool
    _layout: Layout
    _vnodes: int
    _zk: KazooClient | None
    _store: ZnodeStore | None
    _reconcile_interval: float
    _session_gen: int
    _paused: bool
    _leading: bool
    _leader_epoch: int
    _highest_epoch: int
    _election: Election | None
    _campaign_g: gevent.Greenlet | None
    _campaign_gen: int
    _wake: gevent.event.Event
    _notices: gevent.queue.Queue
    _in_session: Callable[[int], bool]
    _spawn: Callable[..., gevent.Greenlet]
    _accept: Callable[[RingRecord], bool]
    _deliver_leadership: Callable[[bool, int], None]

    def _set_leading(self, value: bool, epoch: int = 0) -> None:
        """Record leadership gained (with its term's epoch) or lost, and tell the listeners."""
        if value:
            self._leading = True
            self._leader_epoch = epoch
            logger.info("%s is leader of %s (epoch %d)", self._node_id, self._layout.cluster, epoch)
            self._notices.put((self._deliver_leadership, (True, epoch)))
        elif self._leading:
            self._leading = False
            logger.info("%s is no longer leader (epoch %d)", self._node_id, self._leader_epoch)
            self._notices.put((self._deliver_leadership, (False, self._leader_epoch)))

    def _ensure_campaign(self, gen: int) -> None:
        """Start campaigning in session ``gen`` unless a campaign is running."""
        if not self._eligible or not self._in_session(gen):
            return
        current = self._campaign_g
        if current is not None and not current.dead and self._campaign_gen == gen:
            return
        self._campaign_gen = gen
        self._campaign_g = self._spawn(self._campaign, gen)

    def _end_stale_campaign(self, gen: int, timeout: float) -> None:
        """Wait (up to ``timeout`` s) for a campaign of an older session than ``gen`` to end.

        It notices the new generation and returns, releasing its (already
        vanished) election znode; one that does not is killed.
        """
        old = self._campaign_g
        if old is not None and not old.dead and self._campaign_gen != gen:
            old.join(timeout=timeout)
            if not old.dead:
                old.kill(block=False)

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
        logger.info("%s won the election of %s", self._node_id, self._layout.cluster)
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
        current = record.epoch if record is not None else 0
        target = target_ring(
            registered,
            desired,
            epoch=max(current, self._highest_epoch) + 1,
            leader=self._node_id,
            vnodes=self._vnodes,
        )
        if (
            not new_term
            and record is not None
            and record.content() == target.content()
            and current >= self._highest_epoch
        ):
            return current
        self._publish(store, lock_path, target, stat)
        logger.info(
            "%s published ring epoch %d: %s",
            self._node_id,
            target.epoch,
            ", ".join(f"{k}={target.weights[k]:g}" for k in target.members) or "(empty)",
        )
        self._accept(target)
        return target.epoch

    def _publish(self, store: ZnodeStore, lock_path: str, target: RingRecord, stat: Any) -> None:
        """Write ``target`` fenced by our election znode; ``_Fenced`` or ``_Conflict`` if refused."""
        assert self._zk is not None
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
