"""Prometheus metrics: per-node registries (two nodes in one process), task
counts and latency histograms, queue depth, webhook and HTTP counters, and
the ring gauges read from the node's role."""
from __future__ import annotations

from types import SimpleNamespace

from gateway_harness import FIXTURES, Http, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from miyaq.gateway.task_timings import TaskTimings
from miyaq.store.table import Tombstone
from miyaq.store.task import Task

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals


def scrape(api: Http) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text, headers = api.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_each_node_has_its_own_registry(make_http_node):
    a, b = make_http_node(node_id="a"), make_http_node(node_id="b")
    api_a, api_b = Http(a.url), Http(b.url)
    try:
        for _ in range(2):
            assert api_a.post("/tasks", {"name": "job", "queue": "m", "countdown": 600})[0] == 202
        sa, sb = scrape(api_a), scrape(api_b)
        assert value(sa, "miyaq_tasks_total", queue="m", outcome="submitted") == 2
        assert value(sb, "miyaq_tasks_total", queue="m", outcome="submitted") is None
        assert value(sa, "miyaq_queue_tasks", queue="m", state="scheduled") == 2
        assert value(sa, "miyaq_node_info", node="a", version=__import__("miyaq").__version__) == 1
        assert value(sb, "miyaq_node_info", node="b", version=__import__("miyaq").__version__) == 1
    finally:
        api_a.close()
        api_b.close()


def test_outcomes_and_latency_histograms(make_http_node):
    node = make_http_node()
    api = Http(node.url)
    try:
        api.post("/tasks", {"name": "job", "queue": "lat"})
        task = api.post("/receive", {"queues": ["lat"]})[1]["task"]
        assert api.post(f"/tasks/{task['id']}/ack", {"attempt": task["attempt"], "result": 1})[1]["ok"]
        samples = scrape(api)
        assert value(samples, "miyaq_tasks_total", queue="lat", outcome="done") == 1
        assert value(samples, "miyaq_task_start_delay_seconds_count", queue="lat") == 1
        assert value(samples, "miyaq_task_run_seconds_count", queue="lat") == 1
        assert value(samples, "miyaq_task_latency_seconds_count", queue="lat") == 1
        assert value(samples, "miyaq_live_tasks") == 0
        assert value(samples, "miyaq_http_requests_total", method="POST", route="/tasks/{id}/ack",
                     status="200") == 1
    finally:
        api.close()


def test_webhook_deliveries_are_counted_by_result(make_http_node, make_web_worker):
    worker = make_web_worker(script={1: (500, {}, 0.0)})
    node = make_http_node(default_backoff=0.01, webhook_allow_private=True)
    api = Http(node.url)
    try:
        task_id = api.post("/queue/wh", {"url": f"{worker.url}/x"})[1]["id"]
        wait_for(lambda: api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "done", "the retried delivery")
        samples = scrape(api)
        assert value(samples, "miyaq_webhook_deliveries_total", queue="wh", result="5xx") == 1
        assert value(samples, "miyaq_webhook_deliveries_total", queue="wh", result="2xx") == 1
        assert value(samples, "miyaq_webhook_request_seconds_count", queue="wh") == 2
        assert value(samples, "miyaq_tasks_total", queue="wh", outcome="retried") == 1
    finally:
        api.close()


def test_ring_gauges_come_from_the_role(make_http_node):
    """Standalone: epoch 1, one member, leader. Then the gauges follow what
    the role reports (a stand-in for a clustered role: a ring of three led by
    another node, with replication lag towards one peer)."""
    node = make_http_node()
    api = Http(node.url)
    try:
        samples = scrape(api)
        assert (value(samples, "miyaq_ring_epoch"), value(samples, "miyaq_ring_members"),
                value(samples, "miyaq_is_leader")) == (1, 1, 1)
        members = {m: {"service": f"tcp://127.0.0.1:{i}", "http": None} for i, m in enumerate(["t1", "t2", "t3"])}
        clustered = SimpleNamespace(ring_info=lambda: {"epoch": 7, "leader": "t2", "members": members},
                                    is_leader=False, replication_lag=lambda now: {"t2": (0.25, 12)},
                                    stats=lambda: None)
        gauges = node.call(lambda: node.node.part("metrics").cluster)
        node.call(lambda: setattr(gauges, "role", clustered))
        samples = scrape(api)
        assert (value(samples, "miyaq_ring_epoch"), value(samples, "miyaq_ring_members"),
                value(samples, "miyaq_is_leader")) == (7, 3, 0)
        assert value(samples, "miyaq_replication_lag_seconds", peer="t2") == 0.25
        assert value(samples, "miyaq_replication_lag_messages", peer="t2") == 12
        assert api.get("/status")[1]["ring"] == {"epoch": 7, "leader": "t2", "members": ["t1", "t2", "t3"],
                                                 "is_leader": False, "http": {"t1": None, "t2": None, "t3": None}}
    finally:
        api.close()


def test_the_task_limit_and_the_zookeeper_session_are_gauges(make_http_node):
    """An operator could not alert on a node nearly full (no series held
    ``max_tasks``) nor on a lost ZooKeeper session (STATUS only); the
    oncall audit. Now ``miyaq_live_tasks_limit`` always, and on a clustered
    node ``miyaq_zookeeper_connected`` (1 connected, else 0)."""
    from miyaq.gateway.metrics import CLUSTER_COUNTERS

    node = make_http_node(max_tasks=123)
    api = Http(node.url)
    try:
        samples = scrape(api)
        assert value(samples, "miyaq_live_tasks_limit") == 123
        assert value(samples, "miyaq_zookeeper_connected") is None       # standalone: no session
        gauges = node.call(lambda: node.node.part("metrics").cluster)
        for state, expected in (("suspended", 0), ("lost", 0), ("connected", 1)):
            stats = dict.fromkeys((key for key, _ in CLUSTER_COUNTERS), 0) | {"zookeeper": state, "held_copies": 0}
            clustered = SimpleNamespace(ring_info=gauges.role.ring_info, is_leader=False,
                                        replication_lag=lambda now: {}, stats=lambda stats=stats: stats)
            node.call(lambda clustered=clustered: setattr(gauges, "role", clustered))
            assert value(scrape(api), "miyaq_zookeeper_connected") == expected, state
    finally:
        api.close()


def test_a_queue_holding_tasks_with_no_worker_has_a_workers_series_at_0(make_http_node):
    """Incident: no workers (every worker stopped, or none started for the
    queue) while tasks wait. ``miyaq_queue_workers`` had a series only for
    queues a worker served, so with no worker it had none, and the alert of
    docs/operations.md, ``sum(miyaq_queue_workers) == 0 and ...``, compared
    an empty vector: it never fired, in the one fault it is for (staged on
    a 3-node cluster, the sre audit). Now each queue that holds tasks has
    its series at 0, as STATUS has its row with ``workers 0``."""
    node = make_http_node()
    api = Http(node.url)
    try:
        assert api.post("/tasks", {"name": "job", "queue": "orphan"})[0] == 202
        samples = scrape(api)
        assert value(samples, "miyaq_queue_tasks", queue="orphan", state="ready") == 1
        assert value(samples, "miyaq_queue_workers", queue="orphan") == 0
        assert value(samples, "miyaq_queue_idle_slots", queue="orphan") == 0
        assert value(samples, "miyaq_workers") == 0
    finally:
        api.close()


def test_limits_throttling_is_exposed(make_http_node):
    node = make_http_node(queue_limits="th:rate=0,burst=1")
    api = Http(node.url)
    try:
        for _ in range(2):
            api.post("/tasks", {"name": "job", "queue": "th"})
        assert api.post("/receive", {"queues": ["th"]})[1]["task"] is not None
        assert api.post("/receive", {"queues": ["th"]})[1]["task"] is None
        assert value(scrape(api), "miyaq_queue_throttled_total", queue="th") >= 1
    finally:
        api.close()


def test_a_forgotten_queue_takes_its_latency_series_with_it():
    """Bounded /metrics: a queue the engine forgot (empty, among more than
    100 seen) loses its latency histograms and duplicate counter, so queue
    names a producer makes up do not grow the scrape without bound."""
    registry = CollectorRegistry()
    timings = TaskTimings(registry)
    task = Task("t1", "made-up-7", "echo", b"", eta=1.0, created=1.0)
    task.attempt = 1
    timings.task_started(task)
    timings.task_finished(task, Tombstone.of(task, "done", None, 2.0))
    timings.duplicate_run(task, {})
    assert b'queue="made-up-7"' in generate_latest(registry)
    timings.queue_forgotten("made-up-7")
    timings.queue_forgotten("never-seen")
    assert b'queue="made-up-7"' not in generate_latest(registry)


def test_queue_histograms_expose_what_prometheus_clients_own_histogram_would():
    """The task-path histograms keep plain counts and are exposed at scrape
    time: the buckets, count and sum must be the library Histogram's for the
    same observations (on a bound, just over one, and past the last)."""
    from prometheus_client import Histogram

    from miyaq.gateway.histograms import QueueHistogram
    from miyaq.gateway.task_timings import LATENCY_BUCKETS

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = QueueHistogram("lat_seconds", "doc", LATENCY_BUCKETS)
    ours.register(_Families(fast))
    library = Histogram("lat_seconds", "doc", ["queue"], registry=theirs, buckets=LATENCY_BUCKETS)
    for queue, seconds in [("a", 0.0), ("a", 0.001), ("a", 0.0011), ("b", 7.5), ("b", 5000.0), ("a", 0.5)]:
        fast.observe(queue, seconds)
        library.labels(queue).observe(seconds)

    def lines(registry):
        return sorted(line for line in generate_latest(registry).decode().splitlines()
                      if line.startswith("lat_seconds") and "_created" not in line)

    assert lines(ours) == lines(theirs)
    assert 'lat_seconds_bucket{le="+Inf",queue="b"} 2.0' in lines(ours)
    fast.forget("b")
    assert not any('queue="b"' in line for line in lines(ours))


class _Families:
    def __init__(self, histogram):
        self.histogram = histogram

    def collect(self):
        yield self.histogram.family()
