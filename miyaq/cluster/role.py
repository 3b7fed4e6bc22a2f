"""A node's part in a cluster: membership, the peer link, the replication
streams, replicated submits, standby checks, handoff and resync.

Created by the node when it runs with ``--zk``. Everything here runs in the
node's gevent loop; the coordinator's view listener only schedules work.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent

from ..store.task import DEAD, RUNNING, SCHEDULED, Task
from ..node.persistence import task_from_record
from .events import EventPublisher, apply_events
from .handoff import Handoff
from .intake import ClusterIntake
from .membership import Coordinator, Member, RingView
from .peer import QUERY, REPLICATE, SYNC, PeerEndpoint
from .standby import StandbyChecker, describe
from .stream import HEARTBEAT, StreamPublisher, StreamSubscriber
from .sync import Resync

if TYPE_CHECKING:
    from ..node.node import Node

logger = logging.getLogger(__name__)

HANDOFF_SWEEP = 10.0


def local_member(node: "Node") -> Member:
    c = node.config
    return Member(node_id=node.id, service=c.endpoint(c.port), peer=c.endpoint(c.peer),
                  pub=c.endpoint(c.pub), http=f"http://{c.advertised_host}:{c.http_port}" if c.http_port else None,
                  weight=c.weight)


class ClusterRole:
    def __init__(self, node: "Node", coordinator: Coordinator, drop_ratio: float = 0.0) -> None:
        self.node = node
        self.node_id = node.id
        self.engine = node.engine
        self.config = node.config
        self.coordinator = coordinator
        self.view: RingView = RingView.empty()
        self.min_acks = node.config.min_acks
        self.applying = False          # True while applying another holder's events
        self.duplicates_seen = 0
        c = node.config
        self.peer = PeerEndpoint(node.ctx, self.node_id, f"tcp://{c.host}:{c.peer}", c.max_message)
        self.publisher = StreamPublisher(node.ctx, self.node_id, f"tcp://{c.host}:{c.pub}", drop_ratio)
        self.resync = Resync(self)
        self.subscriber = StreamSubscriber(node.ctx, self.node_id,
                                           lambda src, evs: apply_events(self, src, evs), self.resync.start)
        self.publisher_listener = EventPublisher(self)
        self.standby = StandbyChecker(self)
        self.intake = ClusterIntake(self)
        self.handoff = Handoff(self)
        self.engine.listeners += [self.publisher_listener, self.standby]
        self.peer.handlers.update({REPLICATE: self._on_replicate, QUERY: self._on_query,
                                   SYNC: self.resync.serve})
        self.peer.after_burst.append(self.flush)
        # Replication acks arrive on the peer link: release the SUBMITTED
        # replies they complete without waiting for the next client message.
        self.peer.after_burst.append(node.endpoint.flush_acks)
        node.endpoint.after_burst.append(lambda now: self.flush())
        self._view_changed = gevent.event.Event()
        self._pending_view: RingView | None = None
        self._reconcile_until = 0.0
        self._resync_base = 0
        self._sweep_until = 0.0

    # -- lifecycle ------------------------------------------------------------------
    RECONCILE_TIMEOUT = 15.0

    def start(self) -> None:
        node = self.node
        if self.engine.table.live:
            # Restarted from its log: hold dispatching until the other holders
            # told us what finished (and what we missed) while we were down.
            node.dispatcher.paused = True
            self._reconcile_until = time.time() + self.RECONCILE_TIMEOUT
            logger.info("node %s: %d task(s) from the log; reconciling with the other holders before "
                        "dispatching", self.node_id, len(self.engine.table.live))
        node.spawn(self.peer.serve_requests)
        node.spawn(self.peer.serve_answers)
        node.spawn(self.subscriber.serve)
        node.spawn(self._ticker)
        node.spawn(self._view_loop)
        self.coordinator.add_listener(self._on_view)
        self.coordinator.start()

    def stop(self) -> None:
        try:
            self.coordinator.stop()
        except Exception:
            logger.exception("stopping the coordinator failed")
        self.subscriber.close()
        self.publisher.close()
        self.peer.close()

    # -- ring -------------------------------------------------------------------------
    def _on_view(self, view: RingView) -> None:
        """Coordinator listener: must not block; the view loop does the work."""
        self._pending_view = view
        self._view_changed.set()

    def _view_loop(self) -> None:
        while True:
            self._view_changed.wait()
            self._view_changed.clear()
            view = self._pending_view
            if view is None or view.epoch < self.view.epoch:
                continue
            old, self.view = self.view, view
            self.publisher.epoch = view.epoch
            members = view.members
            self.peer.connect({m.node_id: m.peer for m in members.values()})
            self.subscriber.connect({m.node_id: m.pub for m in members.values()})
            logger.info("ring epoch %d: %s (leader %s)", view.epoch, ", ".join(sorted(members)), view.leader)
            if set(old.members) != set(members) or old.epoch == 0 or old.ring != view.ring:
                self.handoff.run()
                self._sweep_until = time.time() + 60.0

    def holders_for(self, task: Task) -> list[str]:
        view = self.view
        if not view.members:
            return []
        n = min(task.replicas, len(view.members))
        key = task.key if task.key is not None else task.id
        return [m.node_id for m in view.holders(key, n)]

    def offset_for(self, task: Task, minimum: int = 0) -> float:
        offset = self.config.replica_offset
        if task.meta and isinstance(task.meta.get("offset"), (int, float)):
            offset = float(task.meta["offset"])
        return max(task.rank, minimum) * offset

    def place(self, task: Task) -> None:
        """Set this node's rank for a new copy: rank i waits i offsets longer."""
        task.rank = task.holders.index(self.node_id)
        task.standby = task.rank > 0
        task.eta += self.offset_for(task)

    def finish_known(self, finished: dict[str, Any]) -> None:
        """Another holder already finished these tasks: finish our copies."""
        now = time.time()
        self.applying = True
        try:
            for task_id, outcome in finished.items():
                if isinstance(outcome, list) and len(outcome) == 3 and task_id in self.engine.table.live:
                    self.engine.finish_copy(task_id, outcome[0], outcome[1], outcome[2], now)
        finally:
            self.applying = False

    def stalled(self, seconds: float) -> None:
        """The process was frozen for ``seconds`` (SIGSTOP, swap, VM pause):
        other holders may have taken over its tasks meanwhile. Hold
        dispatching until every peer's state was fetched again (or 10 s)."""
        logger.warning("node %s was frozen for %.1fs; resyncing before it dispatches again",
                       self.node_id, seconds)
        self.node.dispatcher.paused = True
        self._resync_base = self.resync.completed
        self._reconcile_until = time.time() + 10.0
        self.subscriber.resync_all("this node was frozen")

    def running_elsewhere(self, task_id: str, now: float) -> None:
        """A worker says a task is still running although the node that gave
        it to the worker went silent: keep this standby copy waiting a lease."""
        task = self.engine.table.live.get(task_id)
        if task is not None and task.standby:
            self.engine.defer(task, now + task.timeout + self.offset_for(task, minimum=1))

    # -- peer requests --------------------------------------------------------------------
    def _on_replicate(self, sender: str, body: dict[str, Any]) -> dict[str, Any] | None:
        records = body.get("tasks")
        if not isinstance(records, list):
            return {"ids": []}
        now = time.time()
        stored = [r["id"] for r in records if isinstance(r, dict) and self.install(r, now)]
        table = self.engine.table
        finished = {}
        for task_id in stored:
            stone = table.tombstone(task_id)
            if stone is not None and task_id not in table.live:
                finished[task_id] = [stone.state, stone.result, stone.error]
        answer: dict[str, Any] = {"ids": stored}
        if finished:
            answer["finished"] = finished     # the sender must not run these again
        persistence = self.node.persistence
        if persistence is None:
            return answer
        # A copy counts as stored once it is in this node's log, as on the
        # node that took the submit: answer only after the write.
        reply = self.peer.later()
        persistence.after_written(lambda: reply(answer))
        return None

    def _on_query(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        ids = body.get("ids")
        if not isinstance(ids, list):
            return {"states": {}}
        return {"states": {i: describe(self, i) for i in ids[:10_000] if isinstance(i, str)}}

    def install(self, record: dict[str, Any], now: float) -> bool:
        """Store (or update) this node's copy of a replicated or handed-off
        task. Idempotent; never resurrects a finished task."""
        holders = record.get("holders")
        if not isinstance(holders, list) or not isinstance(record.get("id"), str):
            return False
        if self.view.members:
            # The sender's view of the ring may be older or newer than ours:
            # place the copy by our own view, and refuse it if we are not a
            # holder there (the sender keeps its copy and asks again later).
            probe = Task(record["id"], "default", None, b"", key=record.get("key"))
            probe.replicas = int(record.get("replicas", len(holders)) or len(holders))
            holders = self.holders_for(probe)
        if self.node_id not in holders:
            return False
        engine = self.engine
        table = engine.table
        existing = table.live.get(record["id"]) or table.dead.get(record["id"])
        if existing is not None:
            existing.holders = tuple(holders)
            existing.rank = holders.index(self.node_id)
            return True
        if table.tombstone(record["id"]) is not None:
            return True
        try:
            task = task_from_record(record)
        except (KeyError, TypeError):
            return False
        task.holders = tuple(holders)
        state = record.get("state", SCHEDULED)
        task.state = SCHEDULED
        task.rank = holders.index(self.node_id)
        if state == DEAD:
            task.state = DEAD
            engine.restore(task, now)
            return True
        if "state" in record:    # a handed-off copy of a task under way elsewhere
            task.standby = True
            base = max(task.eta, record.get("lease_end", 0.0), now)
            task.eta = base + self.offset_for(task, minimum=1)
        else:
            task.standby = task.rank > 0
            task.eta += self.offset_for(task)
        try:
            status, _ = engine.submit(task, now)
        except Exception as exc:   # Busy / ShuttingDown: not stored
            logger.warning("could not store a copy of %s: %s", task.id, exc)
            return False
        return status == "accepted" or record["id"] in table.live

    # -- periodic ---------------------------------------------------------------------------
    def flush(self) -> None:
        self.intake.flush()
        self.publisher_listener.flush()
        self.standby.flush()

    def _ticker(self) -> None:
        last_beat = 0.0
        while True:
            gevent.sleep(0.05)
            now = time.time()
            self.flush()
            self.intake.sweep(now)
            if self._reconcile_until and (now >= self._reconcile_until or
                                          (len(self.view.members) > 0 and self.streams_ready()
                                           and self.resync.completed - self._resync_base
                                           >= len(self.view.members) - 1)):
                self._reconcile_until = 0.0
                if not self.node.engine.accepting:
                    continue
                self.node.dispatcher.paused = False
                self.node.dispatcher.pending = True
                logger.info("node %s: reconciled; dispatching", self.node_id)
            if now - last_beat >= HEARTBEAT:
                last_beat = now
                self.publisher.heartbeat([m for m in self.view.members if m != self.node_id])
                self.handoff.retry(now)
                self._report_lag(now)
            if now < self._sweep_until and now - self.handoff.last_run >= HANDOFF_SWEEP:
                # For a minute after a ring change, sweep again: catches copies
                # placed by a view that changed meanwhile (cost: one pass over the tasks).
                self.handoff.run()

    def _report_lag(self, now: float) -> None:
        """Replication lag per peer for /metrics: seconds since its stream was
        last heard (heartbeats come every second), and our requests to it
        still unanswered."""
        gateway = self.node.gateway
        metrics = getattr(gateway, "metrics", None) if gateway is not None else None
        if metrics is None:
            return
        for src, source in self.subscriber.sources.items():
            metrics.cluster.set_replication_lag(src, max(0.0, now - source.heard),
                                                self.peer.outstanding.get(src, 0))

    # -- views ------------------------------------------------------------------------------
    def ring_info(self) -> dict[str, Any]:
        view = self.view
        share = view.ring.share() if view.ring is not None else {}
        return {"epoch": view.epoch, "leader": view.leader, "vnodes": view.vnodes,
                "members": {m.node_id: {"service": m.service, "http": m.http, "weight": m.weight,
                                        "share": share.get(m.node_id, 0.0)} for m in view.members.values()}}

    def streams_ready(self) -> bool:
        """Every member's stream has been heard and none is resyncing."""
        sources = self.subscriber.sources
        others = [m for m in self.view.members if m != self.node_id]
        return all(m in sources and sources[m].inc and not sources[m].syncing for m in others)

    def stats(self) -> dict[str, Any]:
        return {"epoch": self.view.epoch, "leader": self.view.leader, "is_leader": self.coordinator.is_leader,
                "takeovers": self.standby.takeovers, "deferrals": self.standby.deferrals,
                "duplicates": self.publisher_listener.duplicates, "stream_gaps": self.subscriber.gaps,
                "resyncs": self.subscriber.resyncs, "stream_dropped": self.publisher.dropped,
                "submits_rejected": self.intake.rejected, "handed_off": self.handoff.handed,
                "running_here": sum(c[RUNNING] for c in self.engine.counts.values()),
                "streams_ready": self.streams_ready()}
