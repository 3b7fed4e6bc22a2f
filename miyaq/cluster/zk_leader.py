"""Leadership on ZooKeeper: campaign, reconcile the ring, publish it fenced, abdicate.

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
  (its fence, given to the ``announce`` callback).
* SUSPENDED (connection in doubt) pauses the term at once:
  ``announce(False)`` and nothing is published. If the same session comes
  back (RESUMED), the term goes on with the same epoch (``announce(True,
  epoch)``): the session never ended, so our election znode never left and
  nobody else can have led meanwhile -- and a blip of one ZooKeeper server
  does not bump the ring's epoch (which would make every node resync its
  streams). LOST ends the term and cancels the campaign; the next one starts
  once the registry has registered in the new session, and wins with a new
  epoch. kazoo's ``Election`` does neither by itself (PITFALLS.md).
* One campaign greenlet for the coordinator's life (supervised, restarted if
  it crashes); it campaigns in one session generation at a time.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from kazoo.exceptions import KazooException, NoAuthError
from kazoo.recipe.election import Election

from miyaq.cluster.ring_view import Member
from miyaq.cluster.zk_layout import Intent, RingRecord
from miyaq.protocol.ring import check_points
from miyaq.cluster.zk_registry import Registry
from miyaq.cluster.zk_session import Session, SessionEvent
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.errors import ConfigError, Forbidden, MiyaqError, Unavailable
from miyaq.runtime import RESTART, Supervisor, green, monotonic

logger = logging.getLogger(__name__)

FORBIDDEN_RETRY = 10.0
"""Seconds between attempts of an elected node whose credentials ZooKeeper refuses."""
REFUSAL_RELOG = 300.0
"""While the desired ring cannot be published for one reason, the leader
says so once, then again every this many seconds (it tries every
``reconcile_interval``); a new reason is logged at once."""

Announce = Callable[[bool, int], None]
"""``announce(is_leader, epoch)``: leadership gained (with its term's epoch) or lost. Must not block."""


class _Fenced(Exception):
    """Our election znode is gone: we are no longer leader."""


class _Conflict(Exception):
    """Someone else wrote the ring between our read and our write."""


def target_weights(registered: Mapping[str, Member], desired: Mapping[str, Intent], vnodes: int) -> dict[str, float]:
    """The members and weights of the ring the desired state asks for: each
    registered node whose ``desired`` entry says join, at its desired
    weight, else its registered one. ``ConfigError`` past ``MAX_POINTS``
    at ``vnodes``: such a ring is not published (every node would refuse it)."""
    weights = {k: desired[k].weight or member.weight for k, member in registered.items()
               if desired.get(k, Intent(False)).join}
    check_points(weights, vnodes)
    return weights


def target_ring(
    registered: Mapping[str, Member],
    desired: Mapping[str, Intent],
    *,
    epoch: int,
    leader: str,
    vnodes: int,
) -> RingRecord:
    """The ring the desired state asks for: registered nodes that should be in, with their weights."""
    weights = target_weights(registered, desired, vnodes)
    ids = tuple(sorted(weights))
    return RingRecord(
        epoch=epoch,
        members=ids,
        weights=weights,
        leader=leader,
        nodes={k: registered[k] for k in ids},
        vnodes=vnodes,
    )


class Leader:
    """Campaigning and, while elected, keeping the published ring equal to the desired one.

    ``accept(record)`` adopts a ring this leader published (the follower's
    view); ``highest_epoch()`` is the highest ring epoch this node has seen.
    """

    def __init__(self, session: Session, store: ZnodeStore, registry: Registry, supervisor: Supervisor, *,
                 part: str, node_id: str, vnodes: int, reconcile_interval: float,
                 announce: Announce, accept: Callable[[RingRecord], bool],
                 highest_epoch: Callable[[], int]) -> None:
        self.session = session
        self.store = store
        self.registry = registry
        self.supervisor = supervisor
        self.part = part
        self.node_id = node_id
        self.vnodes = vnodes
        self.reconcile_interval = reconcile_interval
        self._announce = announce
        self._accept = accept
        self._highest_epoch = highest_epoch
        self.leading = False
        self.epoch = 0
        """The epoch this leader's current (or last) term began with."""
        self._stopping = False
        self._paused_term: int | None = None
        """The epoch of a term paused by SUSPENDED, resumed if the same session comes back."""
        self._election: Election | None = None
        self._wake = green.Event()
        self._idle = green.Event()
        self._idle.set()
        self.refusals = 0
        """Reconciles that could not publish what ``desired`` asks (a ring that cannot be built)."""
        self._refused: tuple[str, float] | None = None    # the reason last logged, and when (monotonic)

    @property
    def is_leader(self) -> bool:
        """True while this node may act as leader (never while its session is in doubt)."""
        return self.leading and self.session.usable

    def wake(self) -> None:
        """Something the leader reads changed (members, desired, ring): reconcile soon."""
        self._wake.set()

    def start(self) -> None:
        """Campaign for as long as the coordinator runs."""
        self._idle.clear()
        self.supervisor.spawn(f"{self.part}:campaign", self._campaign_loop, policy=RESTART)

    def stop(self, timeout: float) -> None:
        """Leave the election: wait up to ``timeout`` s for the campaign to release its znode,
        then tell ``announce`` the term ended. Call before the session closes."""
        self._stopping = True
        self._cancel_election()
        self._wake.set()
        self._idle.wait(timeout)
        self._set_leading(False)

    def on_session(self, event: SessionEvent) -> None:
        """Session subscriber: a term never outlives the certainty of our session."""
        if event is SessionEvent.SUSPENDED and self.leading:
            self._paused_term = self.epoch
            self._set_leading(False)
        elif event is SessionEvent.LOST:
            self._paused_term = None
            self._cancel_election()
            self._set_leading(False)
        self._wake.set()

    def _cancel_election(self) -> None:
        election = self._election
        if election is not None:
            election.cancel()

    def _running(self, generation: int) -> bool:
        return not self._stopping and self.session.current(generation)

    def _set_leading(self, value: bool, epoch: int = 0) -> None:
        if value:
            self.leading = True
            self.epoch = epoch
            logger.info("%s is leader of %s (epoch %d)", self.node_id, self.store.layout.cluster, epoch)
            self._announce(True, epoch)
        elif self.leading:
            self.leading = False
            logger.info("%s is no longer leader (epoch %d)", self.node_id, self.epoch)
            self._announce(False, self.epoch)

    # -- the campaign greenlet --------------------------------------------------------

    def _campaign_loop(self) -> None:
        try:
            while not self._stopping and not self.session.closing:
                self._wake.clear()
                generation = self.session.generation
                if not self.registry.is_registered:
                    self._wake.wait(0.5)        # suspended, or not registered again yet
                    continue
                self._campaign(generation)
                if self._running(generation):
                    green.sleep(0.2 + random.uniform(0, 0.3))
        finally:
            self._idle.set()

    def _campaign(self, generation: int) -> None:
        election = Election(self.session.zk, self.store.layout.election, self.node_id)
        self._election = election
        try:
            election.run(self._lead, generation, election)
        except (KazooException, MiyaqError) as exc:
            logger.warning("%s: election interrupted: %s", self.node_id, exc)
        finally:
            if self._election is election:
                self._election = None

    def _lead(self, generation: int, election: Election) -> None:
        """The leader's loop: runs while we hold the election lock in session ``generation``."""
        node = election.lock.node
        if not node or not self._running(generation):
            return
        lock_path = f"{self.store.layout.election}/{node}"
        logger.info("%s won the election of %s", self.node_id, self.store.layout.cluster)
        try:
            while self._running(generation):
                self._wake.clear()
                if self.session.suspended:
                    self._wake.wait(0.2)
                    continue
                resuming = self._paused_term is not None
                try:
                    epoch = self._reconcile(lock_path, new_term=not self.leading and not resuming)
                except _Fenced:
                    logger.warning("%s: election znode gone; no longer leader", self.node_id)
                    return
                except _Conflict:
                    green.sleep(random.uniform(0.01, 0.05))
                    continue
                except Forbidden as exc:
                    # Our credentials do not open the cluster's znodes (ACLs, docs/cluster.md):
                    # claim nothing we cannot do; the ring waits for a node with them.
                    logger.error("%s: elected but cannot lead: %s", self.node_id, exc)
                    self._paused_term = None
                    self._set_leading(False)
                    self._wake.wait(FORBIDDEN_RETRY)
                    continue
                except ConfigError as exc:
                    self._cannot_reconcile(exc.message)
                    self._wake.wait(self.reconcile_interval)
                    continue
                except (Unavailable, KazooException) as exc:
                    logger.warning("%s: leader could not publish the ring: %s", self.node_id, exc)
                    self._wake.wait(0.5)
                    continue
                if self._refused is not None:
                    logger.info("%s: the desired ring can be published again (epoch %d)", self.node_id, epoch)
                    self._refused = None
                if not self.leading and self._running(generation) and self.session.usable:
                    if resuming and self._paused_term is not None:
                        logger.info("%s: same ZooKeeper session; resuming its term", self.node_id)
                        epoch, self._paused_term = self._paused_term, None
                    self._set_leading(True, epoch)
                self._wake.wait(self.reconcile_interval)
        finally:
            self._paused_term = None
            if generation == self.session.generation:
                self._set_leading(False)

    def _cannot_reconcile(self, reason: str) -> None:
        """Log that ``desired`` asks for a ring that cannot be built: once per
        reason, and again every ``REFUSAL_RELOG`` seconds while it stays
        (before, every ``reconcile_interval``: 720 lines an hour)."""
        self.refusals += 1
        now = monotonic()
        if self._refused is None or self._refused[0] != reason or now - self._refused[1] >= REFUSAL_RELOG:
            logger.error("%s: leader cannot reconcile the ring: %s (trying again every %gs; "
                         "this is logged again in %gs while it lasts)",
                         self.node_id, reason, self.reconcile_interval, REFUSAL_RELOG)
            self._refused = (reason, now)

    def _reconcile(self, lock_path: str, new_term: bool) -> int:
        """Publish the ring the desired state asks for, if it differs (or a new term starts)."""
        store = self.store
        registered = store.read_registered()
        desired, _ = store.read_desired()
        record, stat = store.read_ring()
        current = record.epoch if record is not None else store.epoch_floor(stat) if stat is not None else 0
        highest = self._highest_epoch()
        target = target_ring(registered, desired, epoch=max(current, highest) + 1,
                             leader=self.node_id, vnodes=self.vnodes)
        if not new_term and record is not None and record.content() == target.content() and current >= highest:
            return current
        self._publish(lock_path, target, stat)
        logger.info("%s published ring epoch %d: %s", self.node_id, target.epoch,
                    ", ".join(f"{k}={target.weights[k]:g}" for k in target.members) or "(empty)")
        self._accept(target)
        return target.epoch

    def _publish(self, lock_path: str, target: RingRecord, stat: Any) -> None:
        """Write ``target`` fenced by our election znode; ``_Fenced`` or ``_Conflict`` if refused."""
        tx = self.session.zk.transaction()
        tx.check(lock_path, 0)
        if stat is None:
            tx.create(self.store.layout.ring, target.to_bytes())
        else:
            tx.set_data(self.store.layout.ring, target.to_bytes(), stat.version)
        results = self.store.call(tx.commit_async())
        if any(isinstance(r, NoAuthError) for r in results):
            raise self.store.forbidden()
        if isinstance(results[0], Exception):
            raise _Fenced()
        if isinstance(results[1], Exception):
            raise _Conflict()
