"""Prometheus metrics of one node (``GET /metrics``).

Two sources, one per-node :class:`~prometheus_client.CollectorRegistry`
(never the global one, so several nodes can live in one process):

* :class:`TaskTimings`, an engine listener, observes latency histograms as
  tasks start and finish. Its hooks run inline in the engine and only do a
  dict operation and a histogram observation.
* :class:`NodeCollector` reads counts the node already keeps (engine
  outcomes and per-queue states, workers, errors, limits) when scraped, so
  the hot path pays nothing for them.

Ring gauges come from :class:`ClusterGauges`, which reads the node's ring
(a standalone node: epoch 1, its own leader); replication lag is a hook the
cluster sets through ``node.gateway.metrics.cluster.set_replication_lag(...)``
(``node.gateway`` is None when HTTP is off). ``GET /status`` reads the same
object.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..store.table import Tombstone
from ..store.task import DONE, Task
from .events import EngineListener

if TYPE_CHECKING:
    from .node import Node

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0, 900.0, 3600.0)


class ClusterGauges:
    """Ring facts for ``/metrics`` and ``/status``.

    By default they are read from the node (``node.ring_info()``: epoch 1 and
    itself as the only member and leader when standalone), with each member's
    HTTP gateway (``miyaq queue limit`` uses it to reach every node). The cluster may
    push its own view with :meth:`set_ring`; a clustered node reports
    replication lag per peer every second with :meth:`set_replication_lag`
    (seconds since the peer's stream was heard, requests to it unanswered).
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self._ring: dict[str, Any] | None = None
        self.replication_lag_seconds: dict[str, float] = {}   # peer -> seconds behind
        self.replication_lag_messages: dict[str, int] = {}    # peer -> peer requests unanswered

    def set_ring(self, epoch: int, members: list[str], leader: str | None, is_leader: bool) -> None:
        self._ring = {"epoch": epoch, "leader": leader, "members": list(members), "is_leader": is_leader}

    def set_replication_lag(self, peer: str, seconds: float, messages: int) -> None:
        self.replication_lag_seconds[peer] = seconds
        self.replication_lag_messages[peer] = messages

    def view(self) -> dict[str, Any]:
        if self._ring is not None:
            return dict(self._ring)
        node = self.node
        info = node.ring_info()
        cluster = getattr(node, "cluster", None)
        is_leader = info.get("leader") == node.id if cluster is None else bool(cluster.coordinator.is_leader)
        members = info["members"]
        return {"epoch": info["epoch"], "leader": info["leader"], "members": sorted(members),
                "is_leader": is_leader, "http": {m: members[m].get("http") for m in sorted(members)}}


class TaskTimings(EngineListener):
    """Latency histograms per queue: how late tasks start (first attempt,
    against their eta), how long a successful run takes, and submit to done."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.delay = Histogram("miyaq_task_start_delay_seconds", "Time from a task's eta to its first start",
                               ["queue"], registry=registry, buckets=LATENCY_BUCKETS)
        self.run = Histogram("miyaq_task_run_seconds", "Time from start to done of successful attempts",
                             ["queue"], registry=registry, buckets=LATENCY_BUCKETS)
        self.total = Histogram("miyaq_task_latency_seconds", "Time from submit to done",
                               ["queue"], registry=registry, buckets=LATENCY_BUCKETS)
        self.duplicates = Counter("miyaq_duplicate_runs", "Tasks seen running more than once",
                                  ["queue"], registry=registry)
        self._started: dict[str, float] = {}
        self._children: dict[tuple[int, str], Any] = {}

    def _child(self, which: int, metric: Histogram, queue: str) -> Any:
        child = self._children.get((which, queue))
        if child is None:
            child = self._children[(which, queue)] = metric.labels(queue)
        return child

    def task_started(self, task: Task) -> None:
        now = time.time()
        self._started[task.id] = now
        if task.attempt == 1:
            self._child(0, self.delay, task.queue).observe(max(0.0, now - task.eta))

    def task_ready(self, task: Task) -> None:
        self._started.pop(task.id, None)     # released unstarted

    def task_retrying(self, task: Task, reason: str) -> None:
        self._started.pop(task.id, None)

    def task_dead(self, task: Task) -> None:
        self._started.pop(task.id, None)

    def task_finished(self, task: Task, stone: Tombstone) -> None:
        started = self._started.pop(task.id, None)
        if stone.state == DONE:
            now = stone.finished
            if started is not None:
                self._child(1, self.run, task.queue).observe(max(0.0, now - started))
            self._child(2, self.total, task.queue).observe(max(0.0, now - task.created))

    def duplicate_run(self, task: Task, info: dict[str, Any]) -> None:
        self.duplicates.labels(task.queue).inc()


class NodeCollector(Collector):
    """Reads the node's own counters at scrape time."""

    def __init__(self, node: Node, cluster: ClusterGauges) -> None:
        self.node = node
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        node, engine = self.node, self.node.engine
        info = GaugeMetricFamily("miyaq_node_info", "This node", labels=["node", "version"])
        info.add_metric([node.id, __version__], 1)
        yield info
        yield GaugeMetricFamily("miyaq_uptime_seconds", "Seconds since the node started",
                                value=time.time() - node.started)
        outcomes = CounterMetricFamily("miyaq_tasks", "Tasks by queue and outcome (submitted, completed, "
                                       "failed, retried, lost, done, dead, cancelled, expired)",
                                       labels=["queue", "outcome"])
        for (queue, outcome), n in sorted(engine.outcomes.items()):
            outcomes.add_metric([queue, outcome], n)
        yield outcomes
        depth = GaugeMetricFamily("miyaq_queue_tasks", "Tasks held per queue and state", labels=["queue", "state"])
        for queue, states in sorted(engine.queue_counts().items()):
            for state, n in states.items():
                depth.add_metric([queue, state], n)
        yield depth
        workers = GaugeMetricFamily("miyaq_queue_workers", "Workers serving each queue", labels=["queue"])
        for queue, n in sorted(node.workers.workers_by_queue().items()):
            workers.add_metric([queue], n)
        yield workers
        idle = GaugeMetricFamily("miyaq_queue_idle_slots", "Free worker slots per queue", labels=["queue"])
        for queue, n in sorted(node.workers.idle_by_queue().items()):
            idle.add_metric([queue], n)
        yield idle
        yield GaugeMetricFamily("miyaq_workers", "Connected workers", value=len(node.workers.by_identity))
        yield CounterMetricFamily("miyaq_workers_lost", "Workers declared lost (silent)",
                                  value=node.workers.lost_total)
        yield GaugeMetricFamily("miyaq_live_tasks", "Unfinished tasks held", value=len(engine.table.live))
        yield GaugeMetricFamily("miyaq_dead_letter_tasks", "Tasks in the dead-letter queue",
                                value=len(engine.table.dead))
        yield CounterMetricFamily("miyaq_dead_letter_dropped", "Dead letters dropped at the cap",
                                  value=engine.table.dead_dropped)
        yield GaugeMetricFamily("miyaq_tombstones", "Finished tasks remembered", value=len(engine.table.tombstones))
        yield GaugeMetricFamily("miyaq_waiters", "Pending RESULT / RECEIVE long-polls", value=node.waiters.count)
        errors = CounterMetricFamily("miyaq_protocol_errors", "Refused requests by error code", labels=["code"])
        for code, n in sorted(node.endpoint.errors.items()):
            errors.add_metric([code], n)
        yield errors
        throttled = CounterMetricFamily("miyaq_queue_throttled", "Times a queue was held back by its limits",
                                        labels=["queue"])
        for queue, n in sorted(node.dispatcher.limits.throttled.items()):
            throttled.add_metric([queue], n)
        yield throttled
        yield from self._storage()
        yield from self._cluster()

    def _storage(self) -> Iterator[Metric]:
        """The log's health (docs/durability.md, "A full or failing disk"); none without --data-dir."""
        if self.node.persistence is None:
            return
        s = self.node.persistence.writer.stats()
        yield GaugeMetricFamily("miyaq_log_writable", "1 while the log takes writes; 0 during a disk fault "
                                "(new tasks are refused)", value=int(s["writable"]))
        for name, key, text in (("miyaq_log_write_errors", "write_errors", "Failed log writes (ENOSPC, EIO)"),
                                ("miyaq_log_fsync_errors", "fsync_errors", "Failed log fsyncs"),
                                ("miyaq_log_faults", "faults", "Times the log stopped taking writes"),
                                ("miyaq_log_recoveries", "recoveries", "Times the log was rewritten and "
                                 "took writes again")):
            yield CounterMetricFamily(name, text, value=s[key])

    def _cluster(self) -> Iterator[Metric]:
        c = self.cluster
        view = c.view()
        yield GaugeMetricFamily("miyaq_ring_epoch", "Epoch of the ring this node holds", value=view["epoch"])
        yield GaugeMetricFamily("miyaq_ring_members", "Nodes in the ring", value=len(view["members"]))
        yield GaugeMetricFamily("miyaq_is_leader", "1 while this node acts as leader",
                                value=int(view["is_leader"]))
        lag = GaugeMetricFamily("miyaq_replication_lag_seconds", "Replication lag per peer", labels=["peer"])
        for peer, seconds in sorted(c.replication_lag_seconds.items()):
            lag.add_metric([peer], seconds)
        yield lag
        lag_n = GaugeMetricFamily("miyaq_replication_lag_messages", "Unacknowledged replication messages "
                                  "per peer", labels=["peer"])
        for peer, n in sorted(c.replication_lag_messages.items()):
            lag_n.add_metric([peer], n)
        yield lag_n


class NodeMetrics:
    """Everything ``/metrics`` shows for one node; :meth:`install` hooks it in."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.cluster = ClusterGauges(node)
        self.timings = TaskTimings(self.registry)
        self.http_requests = Counter("miyaq_http_requests", "HTTP requests by route and status",
                                     ["method", "route", "status"], registry=self.registry)
        self.webhooks = Counter("miyaq_webhook_deliveries", "Webhook attempts by queue and result "
                                "(2xx, 4xx, 429, 5xx, timeout, connection, invalid, forbidden)",
                                ["queue", "result"], registry=self.registry)
        self.webhook_seconds = Histogram("miyaq_webhook_request_seconds", "Duration of webhook attempts",
                                         ["queue"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self.registry.register(NodeCollector(node, self.cluster))

    def install(self) -> NodeMetrics:
        if self.timings not in self.node.engine.listeners:
            self.node.engine.listeners.append(self.timings)
        return self

    def uninstall(self) -> None:
        if self.timings in self.node.engine.listeners:
            self.node.engine.listeners.remove(self.timings)

    def webhook_delivered(self, queue: str, result: str, seconds: float) -> None:
        self.webhooks.labels(queue, result).inc()
        self.webhook_seconds.labels(queue).observe(seconds)

    def http_request(self, method: str, route: str, status: int) -> None:
        self.http_requests.labels(method, route, str(status)).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition format."""
        return generate_latest(self.registry)
