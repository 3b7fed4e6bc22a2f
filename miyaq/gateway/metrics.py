"""Prometheus metrics of one node (``GET /metrics``).

Its sources share one per-node :class:`~prometheus_client.CollectorRegistry`
(never the global one, so several nodes can live in one process):

* :class:`~miyaq.gateway.task_timings.TaskTimings`, an engine listener, observes latency histograms as
  tasks start and finish. Its hooks run inline in the engine and only do a
  dict operation and a bisect (:mod:`miyaq.gateway.histograms`); the
  histograms are read when scraped.
* :class:`NodeCollector` reads counts the node already keeps (engine
  outcomes and per-queue states, workers, errors, limits) when scraped, so
  the hot path pays nothing for them.

prometheus_client's :class:`~prometheus_client.ProcessCollector` adds the
process's CPU, memory and open files (``process_open_fds`` against
``process_max_fds``: a node at its limit refuses connections,
:mod:`miyaq.node.open_files`).

The security parts' counts are read when scraped too: handshakes that
failed before any key was checked (:class:`~miyaq.security.handshakes.HandshakeFailures`,
by port and reason) and keys the ZAP handler refused. The age of the oldest
running task is read from :class:`~miyaq.gateway.task_timings.TaskTimings`'
starts, kept in start order (one entry looked at a scrape).

Ring gauges, replication lag, the role's counters
(``miyaq_cluster_<key>_total``, :data:`CLUSTER_COUNTERS`: STATUS
``cluster``) and the copies its handoff holds for a newer ring
(``miyaq_cluster_held_copies``) come from
:class:`~miyaq.gateway.cluster_metrics.ClusterGauges`, which
asks the node's role at scrape time (a standalone node: epoch 1, its own leader, no peers, no
cluster counters). Greenlet crashes come from the node's supervisor
(``miyaq_greenlet_crashes_total{name}``: names are fixed in the code, so the
label set is bounded). ``GET /status`` reads the same objects.

:class:`NodeMetrics` is a part of the node: ``start`` hooks the timings into
the engine (their starts also give a running task's ``started`` in its
info: :mod:`miyaq.core.task_views`), ``stop`` unhooks them.
"""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from miyaq import __version__
from miyaq.core.core import Core
from miyaq.core.handles import NodeRole, StorageHealth
from miyaq.core.view_rows import checked
from miyaq.gateway.cluster_metrics import CLUSTER_COUNTERS, ClusterGauges
from miyaq.gateway.task_timings import LATENCY_BUCKETS, TaskTimings, drop_series
from miyaq.gateway.wsgi import REFUSALS
from miyaq.runtime import Supervisor, green, monotonic, wall
from miyaq.security.handshakes import REASONS, HandshakeFailures
from miyaq.security.zap import ZapHandler
from miyaq.store.task import RUNNING

__all__ = ["CLUSTER_COUNTERS", "HTTP_METHODS", "WEBHOOK_RESULTS", "ClusterGauges", "NodeCollector", "NodeMetrics"]

#: The HTTP methods ``miyaq_http_requests_total`` names; any other is counted as "other",
#: so made-up methods cannot add series (routes are the router's templates or "unmatched").
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

#: The results ``miyaq_webhook_deliveries_total`` names (:class:`miyaq.gateway.outbound.Outcome`'s
#: kinds; any other is counted as "other"), so a closed queue's series can all be removed.
WEBHOOK_RESULTS = frozenset({"2xx", "4xx", "429", "5xx", "other", "timeout", "connection", "invalid", "forbidden"})

class NodeCollector(Collector):
    """Reads the node's own counters at scrape time."""

    def __init__(self, node_id: str, core: Core, cluster: ClusterGauges, supervisor: Supervisor,
                 storage: StorageHealth | None, timings: TaskTimings | None = None,
                 handshakes: HandshakeFailures | None = None, keys: ZapHandler | None = None) -> None:
        self.node_id = node_id
        self.core = core
        self.cluster = cluster
        self.supervisor = supervisor
        self.storage = storage
        self.timings = timings
        self.handshakes = handshakes
        self.keys = keys
        self.started = monotonic()

    def collect(self) -> Iterator[Metric]:
        core, engine = self.core, self.core.engine
        info = GaugeMetricFamily("miyaq_node_info", "This node", labels=["node", "version"])
        info.add_metric([self.node_id, __version__], 1)
        yield info
        yield GaugeMetricFamily("miyaq_uptime_seconds", "Seconds since the node started",
                                value=monotonic() - self.started)
        outcomes = CounterMetricFamily("miyaq_tasks", "Tasks by queue and outcome (submitted, completed, "
                                       "failed, retried, lost, done, dead, cancelled, expired)",
                                       labels=["queue", "outcome"])
        share = green.FairShare()     # a series per queue: thousands of queues, tens of ms
        for (queue, outcome), n in sorted(engine.outcomes.items()):
            share.check()
            outcomes.add_metric([queue, outcome], n)
        yield outcomes
        depth = GaugeMetricFamily("miyaq_queue_tasks", "Tasks held per queue and state", labels=["queue", "state"])
        held = engine.queue_counts()
        for queue, states in sorted(held.items()):
            share.check()
            for state, n in states.items():
                depth.add_metric([queue, state], n)
        yield depth
        # A series for each queue that holds tasks or that a worker serves, as
        # STATUS has a row: 0 for a queue with tasks and no worker. Before
        # 2026-12-07 only served queues had one, so with every worker gone the
        # series vanished and "sum(miyaq_queue_workers) == 0" never fired.
        served = core.workers.workers_by_queue()
        workers = GaugeMetricFamily("miyaq_queue_workers", "Workers serving each queue (0: a queue holding "
                                    "tasks that no worker serves)", labels=["queue"])
        for queue in sorted(served.keys() | held.keys()):
            share.check()
            workers.add_metric([queue], served.get(queue, 0))
        yield workers
        idle = GaugeMetricFamily("miyaq_queue_idle_slots",
                                 "Free capacity of the workers per queue: tasks they would still take "
                                 "(running and prefetched) less those leased to them", labels=["queue"])
        free = core.workers.idle_by_queue(lambda some: checked(some, share.check))
        for queue in sorted(free.keys() | held.keys()):
            share.check()
            idle.add_metric([queue], free.get(queue, 0))
        yield idle
        yield GaugeMetricFamily("miyaq_workers", "Connected workers", value=len(core.workers.by_identity))
        yield CounterMetricFamily("miyaq_workers_lost", "Workers declared lost (silent)",
                                  value=core.workers.lost_total)
        yield GaugeMetricFamily("miyaq_live_tasks", "Unfinished tasks held", value=len(engine.table.live))
        yield GaugeMetricFamily("miyaq_live_tasks_limit", "max_tasks: unfinished tasks held before submits are "
                                "answered BUSY", value=core.config.max_tasks)
        yield GaugeMetricFamily("miyaq_dead_letter_tasks", "Tasks in the dead-letter queue",
                                value=len(engine.table.dead))
        yield CounterMetricFamily("miyaq_dead_letter_dropped", "Dead letters dropped at the cap",
                                  value=engine.table.dead_dropped)
        yield GaugeMetricFamily("miyaq_tombstones", "Finished tasks remembered", value=len(engine.table.tombstones))
        config = core.config
        for name, text, value in (
                ("miyaq_payload_bytes", "Payload bytes of the live and dead tasks held (webhook headers and URLs, "
                 "keys and errors included)", engine.table.payload_bytes),
                ("miyaq_payload_bytes_limit", "max_bytes: payload bytes held before submits are answered BUSY",
                 config.max_bytes),
                ("miyaq_result_bytes", "Result and error bytes kept with finished tasks", engine.table.result_bytes),
                ("miyaq_result_bytes_limit", "max_result_bytes: result bytes kept before submits are answered "
                 "BUSY", config.max_result_bytes)):
            yield GaugeMetricFamily(name, text, value=value)
        yield CounterMetricFamily("miyaq_results_dropped", "Finished tasks forgotten early: their results "
                                  "reached twice max_result_bytes", value=engine.table.results_dropped)
        yield GaugeMetricFamily("miyaq_waiters", "Pending RESULT / RECEIVE long-polls", value=core.waiters.count)
        errors = CounterMetricFamily("miyaq_protocol_errors", "Refused requests by error code", labels=["code"])
        for code, n in sorted(core.endpoint.errors.items()):
            errors.add_metric([code], n)
        yield errors
        refused = CounterMetricFamily("miyaq_records_refused", "Records from other nodes or the log that failed "
                                      "validation and were not stored, by source and field",
                                      labels=["source", "field"])
        for (source, field), n in sorted(core.refusals.counts.items()):
            refused.add_metric([source, field], n)
        yield refused
        throttled = CounterMetricFamily("miyaq_queue_throttled", "Times a queue was held back by its limits",
                                        labels=["queue"])
        for queue, n in sorted(core.limits.throttled.items()):
            share.check()
            throttled.add_metric([queue], n)
        yield throttled
        crashes = CounterMetricFamily("miyaq_greenlet_crashes", "Greenlets that died with an exception, and "
                                      "failures their loops caught, by greenlet name", labels=["name"])
        for name, n in sorted(self.supervisor.crashes.items()):
            crashes.add_metric([name], n)
        yield crashes
        yield from self._running()
        yield from self._handshakes()
        yield from self._storage()
        yield from self.cluster.metrics()

    def _running(self) -> Iterator[Metric]:
        """The age of the oldest task leased to a worker (0 with none):
        a handler that hangs, or a worker that holds a task and does not
        run it, shows as a gauge that climbs (docs/operations.md, "A
        handler hangs"). Read from the timings' starts, oldest first, so a
        scrape costs one look at the first entry, whatever the number of
        running tasks (:meth:`TaskTimings.oldest_running`)."""
        if self.timings is None:
            return
        live = self.core.engine.table.live

        def running(task_id: str, attempt: int) -> bool:
            task = live.get(task_id)
            return task is not None and task.state == RUNNING and task.attempt == attempt

        oldest = self.timings.oldest_running(running)
        yield GaugeMetricFamily("miyaq_oldest_running_task_seconds", "Seconds since the oldest task leased to "
                                "a worker started its attempt (0 when none runs)",
                                value=0.0 if oldest is None else max(0.0, wall() - oldest))

    def _handshakes(self) -> Iterator[Metric]:
        """Handshakes that failed on the node's ports, before any key was
        checked (by port and reason: a series for each of the ports watched,
        zero until one fails), and, with keys, those whose key the node
        refused (STATUS ``security``)."""
        if self.handshakes is not None:
            failed = CounterMetricFamily("miyaq_handshakes_failed", "Connections whose ZeroMQ handshake failed "
                                         "before any key was checked, by port and reason (no keys on one side, "
                                         "another node key, not a ZeroMQ peer)", labels=["port", "reason"])
            counts = self.handshakes.counts
            for port in self.handshakes.ports():
                for reason in REASONS:
                    failed.add_metric([port, reason], counts.get((port, reason), 0))
            yield failed
        if self.keys is not None:
            yield CounterMetricFamily("miyaq_handshakes_refused", "CURVE handshakes whose key the node refused "
                                      "(unknown, revoked, or not a peer's on the peer port or stream)",
                                      value=self.keys.refused)

    def _storage(self) -> Iterator[Metric]:
        """The log's health (docs/durability.md, "A full or failing disk"); none without --data-dir."""
        if self.storage is None:
            return
        s = self.storage.stats()
        yield GaugeMetricFamily("miyaq_log_writable", "1 while the log takes writes; 0 during a disk fault "
                                "(new tasks are refused)", value=int(s["writable"]))
        for name, key, text in (("miyaq_log_write_errors", "write_errors", "Failed log writes (ENOSPC, EIO)"),
                                ("miyaq_log_fsync_errors", "fsync_errors", "Failed log fsyncs"),
                                ("miyaq_log_faults", "faults", "Times the log stopped taking writes"),
                                ("miyaq_log_recoveries", "recoveries", "Times the log was rewritten and "
                                 "took writes again")):
            yield CounterMetricFamily(name, text, value=s[key])


class NodeMetrics:
    """Everything ``/metrics`` shows for one node (a part: start hooks it in)."""

    name = "metrics"

    def __init__(self, node_id: str, core: Core, role: NodeRole, supervisor: Supervisor,
                 storage: StorageHealth | None = None, handshakes: HandshakeFailures | None = None,
                 keys: ZapHandler | None = None) -> None:
        self.engine = core.engine
        self.storage = storage          # the log's health, also read by GET /readyz
        self.registry = CollectorRegistry(auto_describe=True)
        self.cluster = ClusterGauges(role)
        self.timings = TaskTimings(self.registry)
        self.http_requests = Counter("miyaq_http_requests", "HTTP requests by method (a known verb or other), "
                                     "route template (or unmatched) and status",
                                     ["method", "route", "status"], registry=self.registry)
        self.http_refusals = Counter("miyaq_http_refused", "HTTP connections and requests refused before a "
                                     "handler ran (client_limit, header_timeout, tls_handshake, malformed, "
                                     "headers_too_large, open_files, body_budget), an answer refused for "
                                     "http_answer_budget (answer_budget) or its client's share of it "
                                     "(answer_share), or cut for an answer not taken in time (send_timeout)",
                                     ["reason"], registry=self.registry)
        for reason in REFUSALS:       # each at 0 from the start, so increase() sees the first refusal
            self.http_refusals.labels(reason)
        # Read when scraped: the gateway sets its function (0 with no gateway).
        self.http_answers_held = Gauge("miyaq_http_answer_bytes_held", "Bytes of large HTTP answers (over "
                                       "64 KiB) built and not yet taken by their clients, against "
                                       "http_answer_budget", registry=self.registry)
        self.webhooks = Counter("miyaq_webhook_deliveries", "Webhook attempts by queue and result "
                                "(2xx, 4xx, 429, 5xx, timeout, connection, invalid, forbidden)",
                                ["queue", "result"], registry=self.registry)
        self.webhook_seconds = Histogram("miyaq_webhook_request_seconds", "Duration of webhook attempts",
                                         ["queue"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self.registry.register(NodeCollector(node_id, core, self.cluster, supervisor, storage, self.timings,
                                             handshakes, keys))
        # The process's own: CPU, memory, and open files against their limit
        # (process_open_fds, process_max_fds; miyaq.node.open_files says it in the log).
        ProcessCollector(registry=self.registry)

    # -- lifecycle ----------------------------------------------------------------
    def setup(self) -> None:
        """Nothing to prepare."""

    def start(self) -> None:
        """Hook the timings into the engine; their starts date running tasks in their info."""
        if self.timings not in self.engine.listeners:
            self.engine.listeners.append(self.timings)
        self.engine.run_starts = self.timings

    def stop(self) -> None:
        if self.timings in self.engine.listeners:
            self.engine.listeners.remove(self.timings)
        if self.engine.run_starts is self.timings:
            self.engine.run_starts = None     # no longer kept up to date

    def kill(self) -> None:
        self.stop()

    def webhook_delivered(self, queue: str, result: str, seconds: float) -> None:
        self.webhooks.labels(queue, result if result in WEBHOOK_RESULTS else "other").inc()
        self.webhook_seconds.labels(queue).observe(seconds)

    def webhook_queue_closed(self, queue: str) -> None:
        """The webhook deliverer closed ``queue``'s lane (the engine forgot the
        queue): its webhook series end, as its other series did."""
        for result in WEBHOOK_RESULTS:
            drop_series(self.webhooks, queue, result)
        drop_series(self.webhook_seconds, queue)

    def http_request(self, method: str, route: str, status: int) -> None:
        """Count one answer. ``route`` must come from a fixed set (a route template or "unmatched")."""
        self.http_requests.labels(method if method in HTTP_METHODS else "other", route, str(status)).inc()

    def http_refused(self, reason: str) -> None:
        """Count a refusal; ``reason`` is one of :data:`miyaq.gateway.wsgi.REFUSALS`."""
        self.http_refusals.labels(reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition format. The families are read in
        the hub (the node's state is the hub's alone), yielding to it every
        ``HUB_SLICE`` of the per-queue loops; the text is written in a thread
        of the hub's pool, from those families only, while the hub runs on.
        Before 2026-12-05 both ran in one go in the hub: at 10,000 queues a
        scrape held the node 0.3 s (0.1 s reading, 0.2 s writing 60,000
        lines), and every client, worker and peer waited."""
        families = list(self.registry.collect())
        return green.run_in_thread(generate_latest, _Collected(families))


class _Collected:
    """Families already read, as ``generate_latest`` takes a registry."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
