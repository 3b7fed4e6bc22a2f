"""A clustered node follows the ring (:class:`RingFollower`): it adopts each
view the coordinator hands it, in order, and keeps its peer links and
stream subscriptions to the ring's members -- and, for ``DEPARTED_GRACE``,
to the nodes that left it.

Constraints:

* The coordinator's listener (:meth:`RingFollower.on_view`) never blocks:
  it keeps the newest view and wakes the ring view loop
  (:meth:`RingFollower.serve`, a greenlet the role spawns), which does the
  work. A view older than one still waiting, or than the ring the role
  holds, is ignored; so is every view once the role stopped.
* The view adopted is the role's (``ClusterRole.view``, and its wall-clock
  time ``ClusterRole.view_since`` when the epoch changed): everything else
  of the cluster reads it there.
* A node that left the ring is still linked to, and its stream followed,
  for ``DEPARTED_GRACE``: it still announces how the tasks it ran ended
  (a node drained with ``miyaq leave`` runs its tasks to their end). A
  member back in the ring (restarted) is linked to anew.
* A ring whose members or points changed asks the handoff for a pass, and
  the ticker sweeps again for ``HANDOFF_SWEEP_AFTER_CHANGE`` after it
  (:meth:`RingFollower.sweeping`).
* For ``HANDOFF_SWEEP_AFTER_CHANGE`` after a ring change it remembers the
  ring before it (at most ``RECENT_CHANGES`` of them), so a key this node
  became a holder of by the change can be told (:meth:`RingFollower.gained`):
  the old holders' handoff of the key's outcome may not have come yet.
* Its log lines go to the role's logger (``miyaq.cluster.role``): one
  logger to follow the role.
"""
from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from miyaq.cluster.ring_view import Member, RingView
from miyaq.constants import DEPARTED_GRACE, HANDOFF_SWEEP_AFTER_CHANGE
from miyaq.runtime import green, monotonic, wall

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

__all__ = ["RingFollower", "RECENT_CHANGES"]

RECENT_CHANGES = 8
"""Rings before a change kept for :meth:`RingFollower.gained` (the newest;
each for ``HANDOFF_SWEEP_AFTER_CHANGE``)."""

logger = logging.getLogger("miyaq.cluster.role")    # the role's lines: one logger to follow it


class RingFollower:
    """Adopts the ring views of ``role``'s coordinator and follows their
    members (see the module's constraints)."""

    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self._view_changed = green.Event()
        self._pending_view: RingView | None = None
        self._sweep_until = 0.0
        self._departed: dict[str, tuple[Member, float]] = {}   # left the ring: (member, followed until)
        self._before: list[tuple[RingView, float]] = []   # the ring before each recent change, and until when

    def on_view(self, view: RingView) -> None:
        """Coordinator listener: must not block; the view loop does the work.
        A view older than one still waiting for the loop is ignored here, as
        the loop ignores one older than the ring it holds."""
        pending = self._pending_view
        if pending is not None and view.epoch < pending.epoch:
            logger.info("ring epoch %d ignored: epoch %d is newer", view.epoch, pending.epoch)
            return
        self._pending_view = view
        self._view_changed.set()

    def serve(self) -> None:
        """The ring view loop: adopts each view :meth:`on_view` kept."""
        role = self.role
        while True:
            self._view_changed.wait()
            self._view_changed.clear()
            view = self._pending_view
            if view is None or view.epoch < role.view.epoch or role.stopped:
                continue
            old, role.view = role.view, view
            if view.epoch != old.epoch:
                role.view_since = wall()
            role.publisher.epoch = view.epoch
            members = view.members
            role.subscriber.expect_heartbeats(role.node_id in members)
            mono = monotonic()
            left = [n for n in old.members if n not in members and n != role.node_id]
            for node_id in left:
                self._departed[node_id] = (old.members[node_id], mono + DEPARTED_GRACE)
            if left and old.epoch:
                # The first sign of a lost member where an operator looks (the
                # ring line below is INFO): which, and what follows.
                logger.warning("ring epoch %d: %s left the ring (stopped, killed, frozen or cut off from ZooKeeper "
                               "past its session timeout, or taken out with `miyaq leave`); its tasks' copies move "
                               "to the other members", view.epoch, ", ".join(sorted(left)))
            # Back in the ring (restarted): our link to it lost its connection
            # and may wait seconds before it retries; make it anew.
            returned = [n for n in members if self._departed.pop(n, None) is not None]
            self.follow_links(fresh=returned)
            role.directory.update({m.node_id: m.service for m in members.values()})
            logger.info("ring epoch %d: %s (leader %s)", view.epoch, ", ".join(sorted(members)), view.leader)
            if set(old.members) != set(members) or old.epoch == 0 or old.ring != view.ring:
                role.handoff.request(before=old)
                self._sweep_until = monotonic() + HANDOFF_SWEEP_AFTER_CHANGE
                self._before = [*self._before[1 - RECENT_CHANGES:], (old, self._sweep_until)]
                role.ticker.replan()      # its sweeps come with the ticker's rounds

    def sweeping(self, mono: float) -> bool:
        """True for ``HANDOFF_SWEEP_AFTER_CHANGE`` after a ring change
        (``mono``: monotonic): the handoff sweeps again meanwhile."""
        return mono < self._sweep_until

    def gained(self, routing_key: str, replicas: int, mono: float) -> bool:
        """True if this node was not a holder of ``routing_key`` (``replicas``
        holders) by the ring before a change adopted less than
        ``HANDOFF_SWEEP_AFTER_CHANGE`` ago (``mono``: monotonic) -- its first
        ring since it started counts as such a change. What the old holders
        know of the key (a task holding it, live or finished) comes in their
        handoff, which may still be on its way."""
        node_id = self.role.node_id
        for view, until in self._before:
            if until > mono and node_id not in view.holder_ids(routing_key, min(replicas, len(view.members))):
                return True
        return False

    def departed(self) -> list[str]:
        """Nodes that left the ring less than ``DEPARTED_GRACE`` ago: still
        linked to, and asked too before a standby copy takes a task over (a
        node drained with ``miyaq leave`` runs its tasks to their end)."""
        return list(self._departed)

    def forget_departed(self, mono: float) -> None:
        """Stop following the nodes whose ``DEPARTED_GRACE`` ended by ``mono`` (monotonic)."""
        if self._departed and min(u for _, u in self._departed.values()) <= mono:
            self.follow_links()

    def follow_links(self, fresh: Collection[str] = ()) -> None:
        """Peer links and stream subscriptions: every ring member, and for
        ``DEPARTED_GRACE`` every node that left it -- a node that left (or was
        dropped) still announces how the tasks it ran ended. ``fresh``: members
        back in the ring, linked to anew (:meth:`PeerLink.connect`)."""
        role = self.role
        mono = monotonic()
        for node_id, (_, until) in list(self._departed.items()):
            if until <= mono:
                del self._departed[node_id]
                role.publisher.forget(node_id)     # its stream's sequence number
        links = dict(role.view.members)
        links.update({n: m for n, (m, _) in self._departed.items()})
        role.peer.connect({n: m.peer for n, m in links.items()}, fresh)
        role.subscriber.connect({n: m.pub for n, m in links.items()})
        role.subscriber.set_departed(frozenset(self._departed))
