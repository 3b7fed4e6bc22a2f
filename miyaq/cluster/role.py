"""A node's part in a cluster: membership, the peer link, the replication
streams, replicated submits, standby checks, handoff, resync and reconcile.

The clustered :class:`~miyaq.core.handles.NodeRole`. It is given, by the
composition root (:func:`miyaq.node.assemble.build_node`): the core pieces it
works on (engine, gate, acknowledgements, the directory of members, the
count of refused peer records), the
write barrier of the log, the node's supervisor, a
:class:`~miyaq.cluster.transport.Transport` for its peer link and streams,
and a :class:`~miyaq.cluster.membership.Coordinator` (ZooKeeper in
production). Everything here runs in the node's event loop; the
coordinator's view listener only schedules work: the ring view loop adopts
each view and follows the ring's members
(:mod:`miyaq.cluster.ring_follower`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from miyaq.cluster.copies import Copies
from miyaq.cluster.fence import Fence
from miyaq.cluster.first_holder_cancel import FirstHolderCancel
from miyaq.cluster.handoff import Handoff
from miyaq.cluster.holder_events import EventPublisher, apply_events
from miyaq.cluster.membership import Coordinator, LeaderListener
from miyaq.cluster.peer_requests import CANCEL, QUERY, REPLICATE, SYNC
from miyaq.cluster.reconcile import Reconcile
from miyaq.cluster.replicated_intake import ReplicatedIntake
from miyaq.cluster.ring_follower import RingFollower
from miyaq.cluster.ring_view import RingView
from miyaq.cluster.standby import StandbyChecker
from miyaq.cluster.stream_numbering import stream_silence
from miyaq.cluster.sync import Resync
from miyaq.cluster.ticker import ClusterTicker
from miyaq.cluster.transport import Transport
from miyaq.config import NodeConfig
from miyaq.constants import STALL, SUSPECT_AFTER_FREEZE
from miyaq.core.directory import Directory
from miyaq.core.engine import Engine
from miyaq.core.gate import FENCED, Gate
from miyaq.core.refusals import Refusals
from miyaq.core.handles import Ack, WriteBarrier
from miyaq.core.service import ServiceEndpoint
from miyaq.errors import MiyaqError
from miyaq.runtime import CRITICAL, RESTART, Supervisor, monotonic
from miyaq.store.task import RUNNING, Task

logger = logging.getLogger(__name__)


class ClusterRole:
    """The clustered :class:`~miyaq.core.handles.NodeRole`: places each task
    on its holders, answers the core's questions (holders, readiness,
    whether to coordinate or dispatch now) and runs the cluster's loops as
    parts of the node (module doc)."""

    name = "role"               # the part's name in the node's supervisor and logs
    freeze_sensitive = True     # a frozen process hears from the other holders before it dispatches again

    def __init__(self, config: NodeConfig, engine: Engine, gate: Gate, endpoint: ServiceEndpoint,
                 directory: Directory, barrier: WriteBarrier, supervisor: Supervisor,
                 transport: Transport, coordinator: Coordinator, refusals: Refusals) -> None:
        self.config = config
        self.refusals = refusals      # records from peers that fail validation
        self.node_id = config.id
        self.engine = engine
        self.gate = gate
        self.endpoint = endpoint
        self.directory = directory
        self.barrier = barrier
        self.supervisor = supervisor
        self.coordinator = coordinator
        self.view: RingView = RingView.empty()
        #: When this node took its current view (its wall clock; 0: never).
        self.view_since = 0.0
        self.min_acks = config.min_acks
        self.peer = transport.peer_link(self.node_id)
        self.publisher = transport.publisher(self.node_id)
        self.resync = Resync(self)
        #: True once :meth:`stop` ran: the node takes no more writes from its peers (its log closes next).
        self.stopped = False
        self.subscriber = transport.subscriber(self.node_id, self._apply_events, self.resync.start)
        self.subscriber.silence = stream_silence(config.peer_heartbeat_timeout)
        self.events = EventPublisher(self.node_id, self.publisher, config.max_message)
        self.fence = Fence(self.node_id, coordinator, self.subscriber)
        self.copies = Copies(self)
        self.standby = StandbyChecker(self)
        self.intake = ReplicatedIntake(self, endpoint.ack, endpoint.flush_acks)
        self.handoff = Handoff(self)
        self.cancels = FirstHolderCancel(self)
        engine.listeners += [self.events, self.standby]
        self.peer.handlers.update({REPLICATE: self.copies.on_replicate, QUERY: self.copies.on_query,
                                   SYNC: self.resync.serve, CANCEL: self.cancels.serve})
        self._flush_acks = endpoint.flush_acks
        self.reconcile = Reconcile(self)
        self.ring_follower = RingFollower(self)
        self._suspect_until = 0.0
        self._freeze_noticed = 0.0     # when a freeze was last noticed (monotonic)
        self.ticker = ClusterTicker(self)     # its last round long ago means the process was frozen

    # -- lifecycle ------------------------------------------------------------------
    def setup(self) -> None:
        self.reconcile.after_restart(self.config.reconcile_timeout)

    def start(self) -> None:
        self.peer.start()
        self.publisher.start()
        self.subscriber.start()
        self.supervisor.spawn("cluster ticker", self.ticker.serve, policy=RESTART)
        self.supervisor.spawn("ring view loop", self.ring_follower.serve, policy=CRITICAL)
        self.supervisor.spawn("handoff", self.handoff.serve, policy=RESTART)
        self.coordinator.add_listener(self.ring_follower.on_view)
        self.coordinator.start()
        self.reconcile.after_registering(self.coordinator.listed_at_start(), self.config.reconcile_timeout)

    def stop(self) -> None:
        """Refuse the submits still being replicated (their clients resend
        them elsewhere now, not after their ack timeout), leave the ring's
        coordination (election, registration), then take no more writes
        from the other nodes: the node's log closes once the parts after
        this one stopped, and the peer link and the streams stay open until
        :meth:`kill`. From here on a REPLICATE is answered with nothing
        stored (:meth:`_refuse_replicate`), the other holders' stream events
        are not applied, no resync is asked or applied, standby copies ask
        and run nothing, and the ticker and the ring view loop do nothing.
        Before 2026-12-06 all of these went on until the links closed, after
        the log: a change then logged "a change came after the log closed"
        (an error) and a copy sent then "could not store a copy", about one
        stop in nine at 300 submits a second."""
        self.intake.refuse_all()
        self.coordinator.stop()
        self.stopped = True
        self.peer.handlers[REPLICATE] = self._refuse_replicate

    def _refuse_replicate(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        """A REPLICATE while the node stops: nothing stored, as a node whose
        view of the ring does not make it a holder answers. The submit's
        coordinator counts the copy as not stored at once (and rejects the
        submit now if too few holders are left: its client resends it); a
        handoff's sender keeps its copy and sends it again, to the holders
        of the ring without this node."""
        return {"ids": [], "epoch": self.view.epoch}

    def _apply_events(self, src: str, events: list[Any]) -> None:
        """The other holders' stream events, applied to this node's copies until it stops."""
        if not self.stopped:
            apply_events(self, src, events)
            self.ticker.poke()

    def kill(self) -> None:
        """Close the peer link and the streams. Never raises."""
        for close in (self.subscriber.close, self.publisher.close, self.peer.close):
            try:
                close()
            except Exception:
                logger.exception("closing the cluster transport failed")

    # -- the NodeRole interface -------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return bool(self.coordinator.is_leader)

    def add_leader_listener(self, fn: LeaderListener) -> None:
        self.coordinator.add_leader_listener(fn)

    def new_intake(self, ack: Ack) -> ReplicatedIntake:
        return ReplicatedIntake(self, ack)

    def members(self) -> int:
        return len(self.view.members)

    def holders(self, routing_key: str, replicas: int) -> list[str]:
        """The ids of ``routing_key``'s holders by this node's view of the
        ring (at most ``replicas``, fewer when the ring has fewer members;
        none without a ring). Every submit and every copy is placed here."""
        return self.view.holder_ids(routing_key, replicas)

    def ring_info(self) -> dict[str, Any]:
        view = self.view
        share = view.ring.share() if view.ring is not None else {}
        return {"epoch": view.epoch, "leader": view.leader, "vnodes": view.vnodes,
                "members": {m.node_id: {"service": m.service, "http": m.http, "weight": m.weight,
                                        "share": share.get(m.node_id, 0.0)} for m in view.members.values()}}

    def cancel(self, task_id: str, now: float, answer: Callable[[dict[str, Any] | MiyaqError], None]) -> None:
        """Cancel ``task_id`` as its first holder answers it
        (:class:`~miyaq.cluster.first_holder_cancel.FirstHolderCancel`)."""
        self.cancels.cancel(task_id, now, answer)

    def running_elsewhere(self, task_id: str, now: float) -> None:
        """A worker says a task is still running although the node that gave
        it to the worker went silent: keep this standby copy waiting a lease."""
        task = self.engine.table.live.get(task_id)
        if task is not None and task.standby:
            self.engine.defer(task, now + task.timeout + self.offset_for(task, minimum=1))

    def stalled(self, seconds: float) -> None:
        """The process was frozen for ``seconds`` (SIGSTOP, swap, VM pause):
        other holders may have taken over its tasks meanwhile. Hold
        dispatching until every peer's state was fetched again (or 10 s).
        Both the housekeeping's pass and the cluster ticker's round notice a
        freeze; the second to say so of the same freeze (a gap that began
        before the first was noticed, and holds at most ``STALL`` since)
        changes nothing. A gap that holds more than ``STALL`` after the
        first notice holds a freeze of its own (frozen again before either
        loop ran: before 2026-12-07's review it was taken for the first,
        and said by nobody)."""
        mono = monotonic()
        if mono - seconds < self._freeze_noticed and mono - self._freeze_noticed <= STALL:
            return          # the same freeze, noticed by the other loop
        self._freeze_noticed = mono
        logger.warning("node %s was frozen for %.1fs; resyncing before it dispatches again",
                       self.node_id, seconds)
        self._suspect_until = mono + SUSPECT_AFTER_FREEZE
        self.reconcile.hold_until_resynced("this node was frozen")

    @property
    def reconciling(self) -> bool:
        """True while this node holds dispatching to fetch its peers' state
        again (restarted from its log, resumed from a freeze, fence lifted)."""
        return self.reconcile.active

    def not_ready(self) -> str:
        """Why this node would not serve its part of the ring now (one word,
        ``""`` when it would): ``fenced`` while cut off from ZooKeeper,
        ``not_in_ring`` until the ring it holds lists it (joining after a
        start, or taken out with ``miyaq leave``), ``reconciling`` until it
        fetched its peers' state again. Read by ``GET /readyz``."""
        if self.fence.up or self.fenced():
            return "fenced"
        if self.node_id not in self.view.members:
            return "not_in_ring"
        if self.reconciling:
            return "reconciling"
        return ""

    # -- fencing ----------------------------------------------------------------------
    def fenced(self) -> bool:
        """True while this node must not start tasks (see :mod:`miyaq.cluster.fence`)."""
        return self.fence.fenced(self.view.members)

    def not_coordinating(self) -> str:
        """Why this node must not coordinate a submit now ("" if it may):
        while fenced, for ``SUSPECT_AFTER_FREEZE`` after a freeze or a
        fence, and just after a freeze it has not noticed yet. Its view of the ring may
        be old then, and a SUBMIT it reads may have waited in its socket
        while the client resent it elsewhere: two coordinators with
        different views could both make a copy of rank 0."""
        if self.fence.up or self.fenced():
            return "this node lost ZooKeeper and the ring may go on without it"
        if self.catching_up():
            return "this node is catching up with the cluster (after a freeze or a fence)"
        return ""

    def catching_up(self) -> bool:
        """For ``SUSPECT_AFTER_FREEZE`` after a freeze or a fence, and just
        after a freeze this node has not noticed yet (its ticker is late):
        what it reads now may have waited while the others went on."""
        mono = monotonic()
        ticked = self.ticker.ticked
        return mono < self._suspect_until or bool(ticked and mono - ticked > STALL)

    def _watch_fence(self) -> None:
        if not self.fence.changed(self.view.members):
            return
        if self.fence.up:
            self.gate.close(FENCED)
            logger.warning("node %s: no ZooKeeper for %.1fs and the ring may go on without it; not starting "
                           "tasks until it is back", self.node_id, self.coordinator.silent_for())
            return
        logger.info("node %s: fence lifted; resyncing before it dispatches again", self.node_id)
        self._suspect_until = monotonic() + SUSPECT_AFTER_FREEZE
        self.reconcile.hold_until_resynced("this node was fenced")    # closes the gate before the fence opens it
        self.gate.open(FENCED)

    def flush(self) -> None:
        self.intake.flush()
        self.events.flush()
        self.standby.flush()
        self.ticker.poke()

    def after_peer_work(self, hook: Callable[[], None]) -> None:
        self.peer.after_burst.append(hook)

    def replication_lag(self, now: float) -> dict[str, tuple[float, int]]:
        """Per other member of this node's ring: seconds since a message of
        its stream last arrived (heartbeats come every second; one never
        heard: since it is followed), and our requests to it still
        unanswered. It grows for as long as the peer stays silent. A node
        that left the ring is not listed, although its stream is still
        followed for ``DEPARTED_GRACE``: its series end when it leaves. A
        node outside the ring (``--no-auto-join``, taken out, refused) lists
        no one: nothing is replicated to it, and its lags would only grow.
        (Before 2026-12-06 this read the silence check's clock, reset every
        ``STREAM_SILENCE``, so a silent peer's lag never passed ~6 s; and it
        listed a departed node for a minute.)"""
        members = self.view.members
        if self.node_id not in members:
            return {}      # not in the ring: no member replicates to this node
        mono = monotonic()
        unanswered = self.peer.unanswered()
        return {src: (max(0.0, mono - heard), unanswered.get(src, 0))
                for src, heard in self.subscriber.last_heard().items() if src in members and src != self.node_id}

    def stats(self) -> dict[str, Any]:
        return {"epoch": self.view.epoch, "leader": self.view.leader, "is_leader": self.is_leader,
                "takeovers": self.standby.takeovers, "deferrals": self.standby.deferrals,
                "queries_refused": self.standby.queries_refused,
                "duplicates": self.events.duplicates, "stream_gaps": self.subscriber.gaps,
                "resyncs": self.subscriber.resyncs, "stream_dropped": self.publisher.dropped,
                "submits_rejected": self.intake.rejected, "handed_off": self.handoff.handed,
                "cancels_forwarded": self.cancels.forwarded, "cancels_unconfirmed": self.cancels.unconfirmed,
                "held_dropped": self.handoff.held.dropped, "held_copies": len(self.handoff.held),
                "copies_refused_storage": self.copies.refused_for_storage,
                "running_here": sum(c[RUNNING] for c in self.engine.counts.values()),
                "streams_ready": self.streams_ready(), "zookeeper": self.coordinator.connection}

    # -- placement --------------------------------------------------------------------
    def holders_for(self, task: Task) -> list[str]:
        return self.holders(task.key if task.key is not None else task.id, task.replicas)

    def offset_for(self, task: Task, minimum: int = 0) -> float:
        """This node's copy's wait past the task's eta: its rank (at least
        ``minimum``) times the task's replica offset."""
        return max(task.rank, minimum) * self.replica_offset(task)

    def replica_offset(self, task: Task) -> float:
        """The task's replica offset: its own (``meta["offset"]``) or the node's."""
        if task.meta and isinstance(task.meta.get("offset"), (int, float)):
            return float(task.meta["offset"])
        return self.config.replica_offset

    def place(self, task: Task) -> None:
        """Set this node's rank for a new copy: rank i waits i offsets longer
        (``copy_wait``; ``eta`` stays the task's own). ``task``'s holders,
        this node among them, are set: its extras are its own, written
        directly (ValueError, nothing written, when this node is not listed)."""
        extra = task.extra
        rank = extra.rank = extra.holders.index(self.node_id)
        extra.standby = rank > 0
        extra.copy_wait = float(rank * self.replica_offset(task))

    def install(self, record: Any, now: float, source: str, sender: str, shift: float = 0.0) -> bool:
        return self.copies.installer.install(record, now, source, sender, shift)

    def streams_ready(self) -> bool:
        """Every member's stream has been heard and none is resyncing."""
        return all(self.subscriber.caught_up(m) for m in self.view.members if m != self.node_id)

    def departed(self) -> list[str]:
        """Nodes that left the ring less than ``DEPARTED_GRACE`` ago
        (:meth:`RingFollower.departed <miyaq.cluster.ring_follower.RingFollower.departed>`)."""
        return self.ring_follower.departed()

    def others(self) -> list[str]:
        """The other members of this node's ring."""
        return [m for m in self.view.members if m != self.node_id]
