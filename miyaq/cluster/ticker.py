"""The cluster's ticker: a node's periodic round of cluster work, and when
it comes.

A round (:meth:`ClusterTicker.round`) flushes what the role holds to send
(replication, stream events, standby queries), sends again the copies a
holder could not be sent, rejects the submits whose ``replication_timeout``
passed, watches the fence (ZooKeeper's silence), moves a reconcile on, links
again to a peer that could not be linked, and every ``STREAM_HEARTBEAT``
sends each peer its stream's heartbeat and drops what expired (early
events, resync marks, departed nodes). The handoff is told the time
(its sweeps, its retries).

When the next round comes (:meth:`ClusterTicker.next_round`): every
``CLUSTER_TICK`` while something is in flight that a round moves on
(:meth:`ClusterTicker.in_flight`: copies not sent yet, ZooKeeper silent or
the fence up, a reconcile, a handoff pass under way or copies it holds for
a lagging view) or something waits to be flushed, else when the next thing
is due: the stream heartbeat, the first waiting submit's
``replication_timeout``, the handoff's next sweep or retry, a try to link.
Work that arrives (:meth:`ClusterTicker.poke`, from the role's flush, the
stream's events, a new ring) brings the next round sooner when it needs
one sooner than planned. The heartbeat's round, at most
``STREAM_HEARTBEAT`` after the last, also keeps :attr:`ClusterTicker.ticked`
recent for :meth:`ClusterRole.catching_up
<miyaq.cluster.role.ClusterRole.catching_up>` (a round older than ``STALL``
means the process was frozen): ``STREAM_HEARTBEAT`` is half of ``STALL``.

Before 2026-12-07 a round came every ``CLUSTER_TICK`` whatever was in
flight: an idle cluster node woke 20 times a second for it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from miyaq.constants import CLUSTER_TICK, HANDOFF_SWEEP, RELINK_INTERVAL, STALL, STREAM_HEARTBEAT
from miyaq.runtime import green, monotonic

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole


class ClusterTicker:
    """The ticker of one :class:`~miyaq.cluster.role.ClusterRole` (module doc).

    :attr:`rounds` counts the rounds run, :attr:`ticked` is when the last
    one began (``monotonic``; 0.0: none yet)."""

    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.ticked = 0.0            # the last round began (monotonic): long ago means the process was frozen
        self.rounds = 0              # rounds run
        self._last_beat = 0.0        # the last stream heartbeat sent (monotonic; 0.0: send at the next round)
        self._last_relink = 0.0
        self._wake = green.Event()
        self._until = 0.0            # the planned round (monotonic); 0.0 while a round runs

    # -- when ----------------------------------------------------------------------------
    def in_flight(self) -> bool:
        """Is anything in flight that a round moves on every ``CLUSTER_TICK``?
        Copies a holder could not be sent (sent again each round), ZooKeeper
        silent or the fence up (the fence decides within ``FENCE_AFTER``), a
        reconcile, a handoff pass under way or copies it holds for a lagging
        view. A node that stops has nothing in flight: its rounds do nothing."""
        role = self.role
        if role.stopped:
            return False
        handoff = role.handoff
        return bool(role.intake.unsent or role.coordinator.silent_for() > 0.0 or role.fence.up
                    or not role.publisher.zk_ok or role.reconcile.active or handoff.busy or handoff.held)

    def next_round(self, mono: float) -> float:
        """When the round after one at ``mono`` comes (``monotonic``): a
        ``CLUSTER_TICK`` later while something is in flight
        (:meth:`in_flight`) or waits to be flushed, else at the next of: the
        stream heartbeat, the first waiting submit's ``replication_timeout``,
        a try to link to a peer that could not be linked, the handoff's next
        sweep (the minute after a ring change) or its retry of the copies not
        confirmed. Never sooner than ``CLUSTER_TICK`` after ``mono``."""
        role = self.role
        floor = mono + CLUSTER_TICK
        if self.in_flight():
            return floor
        intake = role.intake
        if not role.stopped and (intake.outbox or role.events.outbox or role.standby.due):
            return floor
        due = self._last_beat + STREAM_HEARTBEAT
        if intake.pending:
            due = min(due, next(iter(intake.pending.values())).deadline)    # they wait in deadline order
        if role.peer.unlinked:
            due = min(due, self._last_relink + RELINK_INTERVAL)
        handoff = role.handoff
        if role.ring_follower.sweeping(mono):
            due = min(due, handoff.last_run + HANDOFF_SWEEP)
        if handoff.leaving or handoff.outcomes.unanswered:
            due = min(due, handoff.next_retry)
        return max(floor, due)

    def poke(self) -> None:
        """Work arrived (after each flush of the role, each batch of a
        peer's stream events): a ticker that sleeps past the round this work
        needs plans that round instead. What work can need sooner is looked
        at, no more (this runs several times a task): something left to
        flush, copies that could not be sent, a reconcile or a handoff pass
        begun, a waiting submit due before the planned round. A lone submit,
        due at its ``replication_timeout``, costs the ticker nothing.
        ZooKeeper's silence is not work: the next round notices it (a
        second at most, within ``FENCE_AFTER``)."""
        until = self._until
        if until <= self.ticked + CLUSTER_TICK:
            return          # awake, or its next round comes as soon as any could
        role = self.role
        intake, handoff = role.intake, role.handoff
        pending = intake.pending
        if (intake.unsent or intake.outbox or role.events.outbox or role.standby.due or role.reconcile.active
                or handoff.busy or handoff.held
                or (pending and next(iter(pending.values())).deadline < until)):
            self.replan()

    def replan(self) -> None:
        """Plan the next round anew (:meth:`next_round` of the last one),
        sooner if something needs it sooner: a new ring (its sweeps), or
        whatever :meth:`poke` would see."""
        due = self.next_round(self.ticked)
        if due < self._until:
            self._until = due
            self._wake.set()

    def recheck(self) -> None:
        """Run a round now (a test moved the clocks on: the round's time, not
        the real time, decides what is due)."""
        self._until = 0.0
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------
    def serve(self) -> None:
        """The ticker's greenlet: a round, then a wait until the next (which
        :meth:`poke` may bring sooner)."""
        wake = self._wake
        mono = monotonic()
        while True:
            self._until = self.next_round(mono)
            while (left := self._until - monotonic()) > 0:
                wake.clear()
                wake.wait(left)       # poked (perhaps sooner now), or the wait ended (a little early: again)
            self._until = 0.0         # awake: no poke plans anything until the next wait
            if self.role.stopped:
                mono = monotonic()
                continue        # the node stops: no handoff, no standby check, no resync
            mono = monotonic()
            self.round(mono)

    def round(self, mono: float) -> None:
        """One round of the ticker at ``mono`` (module doc)."""
        role = self.role
        if self.ticked and mono - self.ticked > STALL:
            # Frozen (or the hub blocked) past STALL. Said here as well as by
            # the housekeeping's pass: whichever of the two greenlets runs
            # first after the freeze, a SUBMIT read between them must find
            # the node catching up, not this round's fresh stamp.
            role.stalled(mono - self.ticked)
        self.ticked = mono
        self.rounds += 1
        zk_ok = role.coordinator.silent_for() == 0.0
        if zk_ok and not role.publisher.zk_ok:
            self._last_beat = 0.0       # tell the peers now: one cut off from ZooKeeper fences on it
        role.publisher.zk_ok = zk_ok
        role._watch_fence()
        role.flush()
        if role.intake.sweep():
            role._flush_acks()     # the rejections leave now, not with the next message
        role.reconcile.tick(mono)
        if role.peer.unlinked and mono - self._last_relink >= RELINK_INTERVAL:
            self._last_relink = mono
            role.ring_follower.follow_links()      # a link that could not be made (no file descriptor left)
        if mono - self._last_beat >= STREAM_HEARTBEAT:
            self._last_beat = mono
            role.publisher.heartbeat(role.others())
            role.events.drop_expired_early(mono)
            role.resync.expire(mono)
            role.ring_follower.forget_departed(mono)
        # For a minute after a ring change, sweep again: catches copies placed
        # by a view that changed meanwhile (cost: one pass over the tasks).
        role.handoff.tick(mono, sweeping=role.ring_follower.sweeping(mono))
