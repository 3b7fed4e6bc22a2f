"""A miyaq node: builds its parts from a :class:`~miyaq.config.NodeConfig`
and runs them as supervised greenlets.

Parts: the engine (task state), the service socket, the dispatcher, the
worker registry, long-poll waiters, the timer loop and housekeeping. Every
greenlet is spawned through :meth:`Node.spawn`; one that dies unexpectedly
stops the node loudly instead of leaving it half alive.

Shutdown (SIGTERM, SIGINT or :meth:`stop`): stop accepting submits, stop
dispatching, wait up to ``shutdown_grace`` for running tasks to report, then
close every socket with linger 0.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Callable

import gevent
import gevent.event
import zmq.green as zmq

from .. import __version__
from ..config import NodeConfig
from ..runtime import Supervisor
from .dispatcher import Dispatcher
from .engine import Engine
from .handlers import ServiceHandlers
from ..store.log import AppendLog
from .intake import LocalIntake
from .periodic import PeriodicScheduler
from .persistence import Persistence, replay
from .service import ServiceEndpoint
from .waiters import Waiters
from .workers import WorkerRegistry

logger = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 0.1
STALL = 2.0     # the process did not run for this long: frozen, not merely busy


class Node:
    def __init__(self, config: NodeConfig, ctx: zmq.Context | None = None) -> None:
        self.config = config
        self.id = config.id
        self.ctx = ctx or zmq.Context()
        self.started = time.time()
        self.engine = Engine(config)
        self.dispatcher = Dispatcher(self.engine, config.max_batch)
        self.endpoint = ServiceEndpoint(self.ctx, f"tcp://{config.host}:{config.port}", config.max_message)
        self.workers = WorkerRegistry(self.engine, self.dispatcher, self.endpoint, self.id,
                                      config.heartbeat, config.liveness)
        self.waiters = Waiters(self.dispatcher, config.max_waiters)
        self.intake: Any = LocalIntake(self.engine, self.endpoint.ack)
        self.engine.listeners += [self.dispatcher, self.waiters]
        self.handlers = ServiceHandlers(self)
        self.handlers.install()
        self.accepting_workers = True
        self.endpoint.after_burst.append(self._after_burst)
        self._greenlets: list[gevent.Greenlet] = []
        self._stopped = gevent.event.Event()
        self._timer_wake = gevent.event.Event()
        self._timer_at = 0.0
        self._stopping = False
        self.crashed: BaseException | None = None
        # Parts moved to the runtime spawn through this supervisor (the rest through spawn()).
        self.supervisor = Supervisor(f"node {self.id}", on_fatal=self._fatal)
        self.on_stop: list[Callable[[], None]] = []
        self.persistence: Persistence | None = None
        if config.data_dir:
            self._open_log()
        self.cluster: Any = None
        if config.zk:
            self._join_cluster()
        self.periodic = PeriodicScheduler(self)   # fires on the leader only (docs/periodic.md)
        self.gateway: Any = None
        if config.http_port:
            from ..gateway.server import Gateway   # the HTTP interface (docs/http.md)
            self.gateway = Gateway(self)

    def _open_log(self) -> None:
        os.makedirs(self.config.data_dir, exist_ok=True)
        log = AppendLog(self.config.data_dir, fsync=self.config.fsync,
                        interval_ms=self.config.fsync_interval_ms, supervisor=self.supervisor)
        started = time.time()
        counts = replay(self.engine, log, started)
        logger.info("node %s replayed %d log records in %.2fs: %d live tasks, %d tombstones "
                    "(log: %d corrupt records, %d bytes truncated)", self.id, counts["records"],
                    time.time() - started, counts["tasks"], counts["tombstones"],
                    log.corrupt_records, log.truncated_bytes)
        self.persistence = Persistence(self.engine, log, lambda fn: self.supervisor.spawn("log-writer", fn))
        self.engine.listeners.append(self.persistence)
        self.endpoint.ack_gate = self.persistence.after_written
        self.engine.admission.append(self.persistence.admit)   # a disk fault refuses new tasks

    def _join_cluster(self) -> None:
        from ..cluster.role import ClusterRole, local_member
        from ..cluster.zk_coordinator import ZooKeeperCoordinator
        drop = float(os.environ.get("MIYAQ_FAULT_STREAM_DROP", "0") or 0)
        coordinator = ZooKeeperCoordinator(self.config.zk, self.config.cluster, local_member(self),
                                           supervisor=self.supervisor, auto_join=self.config.auto_join,
                                           session_timeout=self.config.zk_session_timeout)
        self.cluster = ClusterRole(self, coordinator, drop_ratio=drop)
        self.intake = self.cluster.intake
        self.workers.nodes = self.service_endpoints
        self.workers.holder_endpoints = self._holder_endpoints

    def _holder_endpoints(self, task: Any) -> list[str]:
        members = self.cluster.view.members
        return [members[h].service for h in task.holders if h in members]

    def ring_info(self) -> dict[str, Any]:
        if self.cluster is not None:
            return self.cluster.ring_info()
        return {"epoch": 1, "leader": self.id, "vnodes": 0,
                "members": {self.id: {"service": self.config.endpoint(self.config.port), "share": 1.0,
                                      "weight": self.config.weight,
                                      "http": f"http://{self.config.advertised_host}:{self.config.http_port}"
                                      if self.config.http_port else None}}}

    def service_endpoints(self) -> list[str]:
        """Every node's service endpoint (workers and clients connect to all)."""
        return sorted(m["service"] for m in self.ring_info()["members"].values())

    # -- lifecycle -------------------------------------------------------------
    def spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        g = gevent.spawn(fn, *args)
        g.link_exception(self._crash)
        self._greenlets.append(g)
        return g

    def _crash(self, g: gevent.Greenlet) -> None:
        if self._stopping:
            return
        self.crashed = g.exception
        logger.critical("node %s: greenlet %s died: %r; stopping", self.id, g, g.exception)
        gevent.spawn(self.stop, 0)

    def _fatal(self, name: str, exc: BaseException) -> None:
        """The supervisor's on_fatal: a critical greenlet died (already logged); stop at once."""
        if self._stopping:
            return
        self.crashed = exc
        self.stop(0)

    def start(self) -> "Node":
        if self.persistence is not None:
            self.persistence.start()
        elif not self.config.zk:
            logger.warning("node %s keeps tasks in memory only (no --data-dir): "
                           "they do not survive a restart", self.id)
        self.spawn(self.endpoint.serve)
        self.periodic.start()   # before the cluster: it listens for leadership
        if self.cluster is not None:
            self.cluster.start()
        self.spawn(self._timer_loop)
        self.spawn(self._housekeeping)
        if self.gateway is not None:
            self.gateway.start()
        logger.info("miyaq %s node %s serving on tcp://%s:%d", __version__, self.id,
                    self.config.host, self.config.port)
        return self

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, lambda s=sig: gevent.spawn(self.stop))

    def serve_forever(self) -> None:
        self.start()
        self._stopped.wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def stop(self, grace: float | None = None) -> None:
        """Drain and stop. Idempotent."""
        if self._stopping:
            self._stopped.wait()
            return
        self._stopping = True
        grace = self.config.shutdown_grace if grace is None else grace
        self.engine.accepting = False
        self.accepting_workers = False
        self.dispatcher.paused = True    # nothing new is leased from here on
        running = sum(len(w.running) for w in self.workers.by_identity.values())
        logger.info("node %s stopping: %d running task(s), grace %.1fs", self.id, running, grace)
        deadline = time.time() + grace
        while time.time() < deadline and any(w.running for w in self.workers.by_identity.values()):
            gevent.sleep(0.05)
        if self.gateway is not None:
            self.gateway.stop()
        for hook in self.on_stop:
            try:
                hook()
            except Exception:
                logger.exception("stop hook failed")
        if self.persistence is not None:
            try:
                self.persistence.close()
            except Exception:
                logger.exception("closing the log failed")
        current = gevent.getcurrent()
        for g in self._greenlets:
            if g is not current:
                g.kill(block=False)
        gevent.sleep(0)          # let the readers die before their sockets close
        if self.cluster is not None:
            self.cluster.stop()
        self.supervisor.kill()
        self.endpoint.close()
        live = len(self.engine.table.live)
        if live and not self.config.data_dir:
            logger.warning("node %s stopped holding %d unfinished task(s) in memory only", self.id, live)
        self.ctx.destroy(linger=0)
        logger.info("node %s stopped", self.id)
        self._stopped.set()

    # -- loops -------------------------------------------------------------------
    def wake(self, now: float) -> None:
        """Work arrived outside the service socket (HTTP, timers): dispatch,
        replicate and acknowledge it now, and re-check the next timer."""
        self.endpoint.flush_acks()
        if self.cluster is not None:
            self.cluster.flush()
        self._after_burst(now)

    def _after_burst(self, now: float) -> None:
        self.dispatcher.pump(now)
        nxt = self.engine.timers.next_due()
        if nxt is not None and nxt < self._timer_at:
            self._timer_wake.set()

    def _timer_loop(self) -> None:
        engine, dispatcher = self.engine, self.dispatcher
        while True:
            now = time.time()
            nxt = engine.fire_due(now)
            if not self._stopping:
                dispatcher.pump(now)
            self._timer_at = nxt if nxt is not None else now + 1.0
            self._timer_wake.clear()
            delay = min(max(0.0, self._timer_at - time.time()), 1.0)
            if delay > 0:
                self._timer_wake.wait(delay)

    def _housekeeping(self) -> None:
        last_beat = 0.0
        last_sweep = 0.0
        last = time.time()
        while True:
            gevent.sleep(HOUSEKEEPING_INTERVAL)
            now = time.time()
            if self.cluster is not None:
                if now - last > STALL:
                    self.cluster.stalled(now - last)
                self.dispatcher.alive_at = now
            last = now
            self.waiters.sweep(now)
            if now - last_beat >= self.config.heartbeat:
                last_beat = now
                self.workers.tick(now)
            if now - last_sweep >= 1.0:
                last_sweep = now
                self.engine.table.sweep(now)
                self.engine.compact_lanes()
            if not self._stopping:
                self.dispatcher.pump(now)

    # -- views -------------------------------------------------------------------
    def status(self, now: float) -> dict[str, Any]:
        counts = self.engine.queue_counts()
        idle = self.workers.idle_by_queue()
        workers = self.workers.workers_by_queue()
        queues = {}
        for q in sorted(set(counts) | set(idle)):
            row = dict(counts.get(q, {"scheduled": 0, "ready": 0, "running": 0, "retrying": 0, "dead": 0}))
            row["workers"] = workers.get(q, 0)
            row["idle"] = idle.get(q, 0)
            queues[q] = row
        totals = {"live": len(self.engine.table.live), "dead": len(self.engine.table.dead),
                  "tombstones": len(self.engine.table.tombstones),
                  "workers": len(self.workers.by_identity)}
        outcomes: dict[str, int] = {}
        for (_, outcome), n in self.engine.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + n
        return {"node": self.id, "version": __version__, "uptime": now - self.started,
                "accepting": self.engine.accepting, "queues": queues, "totals": totals,
                "outcomes": outcomes, "errors": dict(self.endpoint.errors),
                "max_tasks": self.config.max_tasks, "periodic": self.periodic.stats(),
                "cluster": self.cluster.stats() if self.cluster is not None else None,
                "storage": self.persistence.writer.stats() if self.persistence is not None else None}
