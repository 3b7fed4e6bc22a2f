"""Reconciling: a node holds dispatching until it knows what its peers did
while it could not hear them.

A node reconciles after it restarted from its log, restarted with an empty
log (a lost disk, no ``--data-dir``) while the ring still lists it, resumed
from a freeze (SIGSTOP, swap, a VM pause) or had its fence lifted. Meanwhile its gate is
closed (``RECONCILING``: nothing is dispatched) and the copies that come due
are parked (:class:`~miyaq.cluster.standby.StandbyChecker`), and the node
coordinates no submit while its ring lists another member
(:meth:`Reconcile.refusing`): it does not know yet what the others stored
or finished meanwhile, such as a task holding a key whose first holder it
is. The reconcile
ends when every other member's state was fetched again (a resync of each,
numbered at or after the reconcile's mark) and, after a freeze or a fence,
the coordinator confirmed this node's ring -- or on its timeout.

Everything here runs in the node's event loop, driven by the cluster
ticker (:meth:`Reconcile.tick`); the role reads :attr:`Reconcile.active`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from miyaq.constants import FROZEN_RESYNC_TIMEOUT
from miyaq.core.gate import RECONCILING
from miyaq.runtime import monotonic, wall

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)


class Reconcile:
    """One node's reconcile: when it began, what it waits for, and its end."""

    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self._until = 0.0             # when it gives up waiting (monotonic; 0: not reconciling)
        # Each source's resync the reconcile waits for (None: not asked yet, the
        # reconcile cannot end; {}: any resync of each).
        self._marks: dict[str, int] | None = {}
        self._view_confirmed = True   # False from a freeze or a fence until the coordinator confirms the ring
        self._confirming = 0          # the pending confirmation's number (0: none)
        self._confirmations = 0
        self._registered = False      # the coordinator started: the timeout runs from then on

    @property
    def active(self) -> bool:
        """True while dispatching is held for the peers' state."""
        return bool(self._until)

    def refusing(self) -> str:
        """Why this node must not coordinate a submit now because it
        reconciles (``""`` if it may): while the reconcile lasts and its
        ring lists another member. Until then it does not know what the
        others stored or finished while it could not hear them -- a task
        of a key whose first holder it is, stored by another holder with
        ``min_acks`` below the replicas, would get a second live task of
        its key. A node that is its ring's only member reconciles with
        nobody and coordinates (its reconcile ends at the ticker's next
        round anyway). The client resends a refused submit to another node
        at once (``unavailable``: nothing stored here)."""
        if not self._until or not self.role.others():
            return ""
        return "this node is reconciling with the other holders (after a restart, a freeze or a fence)"

    def after_restart(self, timeout: float) -> None:
        """Restarted from its log: hold dispatching until the other holders
        told us what finished (and what we missed) while we were down, and
        let no copy run before it asked them (the reconcile may end on its
        timeout, not on their answers). The streams' first resync of each
        peer is what it waits for.

        Also when the log brought back no live task, only ends (tombstones)
        or dead letters: the ring may still list this node (its old session
        not expired yet), so the others send it copies before it has a ring
        of its own or follows any stream, and it misses their ends. Such a
        copy that came due just after the node's first ring asked peers its
        links did not reach yet, took their silence for absence and ran the
        task again (a chaos run: six tasks, 7 ms after the first ring).
        Reconciling, the copy is parked until every peer's resync came. A
        log with nothing in it reconciles only if the ring lists the node
        when it registers (:meth:`after_registering`)."""
        role = self.role
        table = role.engine.table
        live = table.live
        if not (live or table.dead or len(table.tombstones)):
            return
        role.gate.close(RECONCILING)
        self._until = monotonic() + timeout
        standby = role.standby.ask_first(live.values(), wall())
        logger.info("node %s: %d task(s) from the log, %d of them standby copies until the other "
                    "holders answer; reconciling before dispatching", role.node_id, len(live), standby)

    def after_registering(self, listed: bool, timeout: float) -> None:
        """The coordinator started (the node registered, which may have
        waited out its previous session); ``listed``: the ring listed this
        node before it registered
        (:meth:`~miyaq.cluster.membership.Coordinator.listed_at_start`).

        A node whose log brought nothing back but whom the ring lists was a
        member before this start and lost what it held: its data dir was
        emptied or replaced (a new disk, a new VM with the same node id) or
        it has none. The ring still makes it a holder of its share of every
        task, so the others send it copies and ends, and what it held
        before is only on them: it reconciles as a node restarted from its
        log does -- dispatching held, no submit coordinated while its ring
        lists another member, copies parked -- until each other member's
        first resync (which brings back the tasks they share with it and
        their newest ends) came, or ``timeout``. Before 2026-12-06 such a
        node started as a new one: a copy stored before its resync ran on
        silence from peers it could not reach yet (a second run), and a
        keyed submit it coordinated took a key another holder's task held
        (accepted, then that task cancelled without running). A node id
        new to the ring (``listed`` False: a first start, a node added, or
        one the ring dropped while it was down) joins as before: the
        handoff brings it its copies.

        A node already reconciling (its log had tasks or ends) counts its
        ``timeout`` from now, not from its start: no reconcile times out
        before this call, since registering can wait out the previous
        session (up to twice the session timeout and 2 s: 22 s by default,
        past the 15 s of ``reconcile_timeout``) while the node has no ring
        and no peer's state, and a reconcile ended then would have waited
        for nothing."""
        self._registered = True
        role = self.role
        until = monotonic() + timeout
        if self._until:
            self._until = max(self._until, until)
            return
        if not listed:
            return
        role.gate.close(RECONCILING)
        self._until = until
        standby = role.standby.ask_first(role.engine.table.live.values(), wall())
        logger.warning("node %s: restarted with an empty log while the ring lists it (a new or emptied data "
                       "dir, or none): reconciling with the other holders before it dispatches or coordinates "
                       "(%d copies stored since its start, %d of them standby copies until they answer)",
                       role.node_id, len(role.engine.table.live), standby)

    def hold_until_resynced(self, why: str) -> None:
        """Hold dispatching until every peer's state was fetched again and
        the coordination service confirmed this node's ring (a frozen node
        may not have noticed yet that its session expired and the ring went
        on without it: a chaos run saw one resume, finish its resync in
        60 ms and run, as rank 0 of a ring it was no longer in, a task the
        new holders had just started); the copies that came due meanwhile
        ask the other holders before they run (others may have run them
        while this node was silent)."""
        role = self.role
        role.gate.close(RECONCILING)
        self._marks = None            # ask_first yields: the reconcile must not end on an earlier one's marks
        self._until = monotonic() + FROZEN_RESYNC_TIMEOUT
        self._view_confirmed = False
        self._confirming = 0          # an answer still due belongs to an earlier reconcile
        self._confirm_view()
        role.standby.ask_first(role.engine.table.live.values(), wall())
        self._marks = role.subscriber.resync_all(why)

    def tick(self, mono: float) -> None:
        """The cluster ticker's round: ask for the ring's confirmation again
        after a refusal, end the reconcile when it is done or timed out, and
        ask a peer whose resync failed again meanwhile."""
        if not self._until:
            return
        if not self._view_confirmed:
            self._confirm_view()
        reconciled = self._reconciled()
        if reconciled or (mono >= self._until and self._registered):
            role = self.role
            self._until = 0.0
            role.gate.open(RECONCILING)
            role.standby.unpark()
            logger.info("node %s: %s; dispatching", role.node_id,
                        "reconciled" if reconciled else "reconcile timed out")
        elif self._marks is not None:
            # A resync that failed (its answer lost, the peer slow) is asked
            # again while the reconcile waits for it.
            self.role.subscriber.resync_unsynced(self._marks, self.role.others(),
                                                 "its resync failed while reconciling")

    def _confirm_view(self) -> None:
        """Ask the coordinator to confirm this node's ring (one request at a
        time; the ticker asks again after a refusal, until the reconcile ends).
        Each request is numbered: the answer to one that a new reconcile gave
        up on (it never came, say) confirms nothing."""
        if self._confirming:
            return
        self._confirmations += 1
        ticket = self._confirming = self._confirmations
        role = self.role
        epoch = role.view.epoch

        def done(confirmed: bool) -> None:
            if ticket != self._confirming:
                return
            self._confirming = 0
            if confirmed and role.view.epoch == epoch:
                self._view_confirmed = True

        role.coordinator.confirm_view(epoch, done)

    def _reconciled(self) -> bool:
        """Every other member's state was fetched again since reconciling
        began, and the coordinator confirmed the ring since."""
        role = self.role
        return (len(role.view.members) > 0 and role.streams_ready() and self._view_confirmed
                and self._marks is not None
                and role.subscriber.synced_since(self._marks, role.others()))
