"""The cluster's figures in ``/metrics`` say what happened: a silent peer's
replication lag grows for as long as it is silent and its series ends when
it leaves the ring, a task run on two holders is counted once in
``miyaq_duplicate_runs_total``, and the role's counters (STATUS
``cluster``) are exported.

In-process clusters (:mod:`miyaq.testing.inprocess`); each node's metrics
are read from a :class:`~miyaq.gateway.metrics.NodeMetrics` made for it
(an in-process node has no HTTP gateway), as ``GET /metrics`` reads them."""
from __future__ import annotations

import pathlib
from typing import Any

from gateway_harness import FIXTURES, Http
from prometheus_client.parser import text_string_to_metric_families

from miyaq.cluster.holder_events import counts_duplicate
from miyaq.gateway.metrics import NodeMetrics
from miyaq.testing.inprocess import InProcessCluster

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

#: STATUS ``cluster``'s counters: each is ``miyaq_cluster_<key>_total`` in /metrics.
COUNTERS = ("takeovers", "deferrals", "queries_refused", "duplicates", "stream_gaps", "resyncs", "stream_dropped",
            "submits_rejected", "handed_off", "cancels_forwarded", "cancels_unconfirmed", "held_dropped",
            "copies_refused_storage")


def scrape(cluster: InProcessCluster, node_id: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` of ``node_id`` as ``{(sample name, labels): value}``."""
    node = cluster[node_id].node
    metrics = NodeMetrics(node_id, node.core, node.role, node.supervisor)
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def lag_series(samples: dict[Any, float]) -> dict[str, float]:
    return {dict(labels)["peer"]: v for (name, labels), v in samples.items()
            if name == "miyaq_replication_lag_seconds"}


# -- replication lag -------------------------------------------------------------------------------
def test_a_silent_peers_replication_lag_grows_for_as_long_as_it_is_silent(inproc):
    """Fault: the lag read the stream's silence-check clock, which the check
    resets each time it acts on a silence (every ``STREAM_SILENCE``,
    3.5 s): a peer frozen for 14 s read 0.6, 3.7, 0.6, 5.7, 0.7 s. Here
    nobody hears n3 for 14 s (of the process's clock): n1's
    ``miyaq_replication_lag_seconds{peer="n3"}`` (and the console's figure,
    the same function) must never fall and end at 14 s or more, while n2's
    stays under a second or two."""
    cluster = inproc(3)
    assert lag_series(scrape(cluster, "n1"))["n3"] < 2.0
    cluster.net.cut("n3", direction="out")
    seen = []
    for _ in range(14):
        cluster.advance(1.0)
        seen.append(cluster["n1"].node.role.replication_lag(0.0)["n3"][0])
    assert all(b >= a for a, b in zip(seen, seen[1:])), seen
    assert seen[-1] >= 14.0, seen
    lags = lag_series(scrape(cluster, "n1"))
    assert lags["n3"] >= 14.0 and lags["n2"] < 3.0, lags
    cluster.net.heal("n3")
    cluster.wait_until(lambda: cluster["n1"].node.role.replication_lag(0.0)["n3"][0] < 2.0,
                       what="n3 heard again")


def test_a_peer_that_left_the_ring_has_no_lag_series(inproc):
    """Fault: the lag was listed for every stream the node follows, and a
    node that left the ring is followed for ``DEPARTED_GRACE`` (a minute):
    a peer killed and dropped from the ring still had a series (reading
    0-4 s) 30-40 s later. Its series must end when it leaves the ring,
    although its stream is still followed (it may still announce how the
    tasks it ran ended)."""
    cluster = inproc(3)
    assert set(lag_series(scrape(cluster, "n1"))) == {"n2", "n3"}
    cluster.stop_node("n3")
    cluster.publish(["n1", "n2"])
    cluster.advance(5.0)
    assert "n3" in cluster["n1"].node.role.subscriber.sources     # still followed: DEPARTED_GRACE
    assert set(lag_series(scrape(cluster, "n1"))) == {"n2"}
    assert set(cluster["n1"].node.role.replication_lag(0.0)) == {"n2"}


def test_a_node_outside_the_ring_reports_no_replication_lag(inproc):
    """Fault: a running node taken out of the ring (or never in it:
    ``--no-auto-join``, refused) still follows the members' streams, which
    publish nothing to it; reading when each was last heard, its lag for
    every member grew for as long as it stayed out (5.4, 32.0, 74.5 s
    after 5, 30 and 70 s), an alert firing on a spare node (review,
    2026-12-06). Outside the ring it lists no one; back in, every member again."""
    cluster = inproc(3)
    cluster.publish(["n1", "n2"])
    for _ in range(3):
        cluster.advance(10.0)
        assert cluster["n3"].node.role.replication_lag(0.0) == {}
        assert lag_series(scrape(cluster, "n3")) == {}
    assert set(lag_series(scrape(cluster, "n1"))) == {"n2"}
    cluster.publish(["n1", "n2", "n3"])
    cluster.wait_until(lambda: set(cluster["n3"].node.role.replication_lag(0.0)) == {"n1", "n2"},
                       what="n3 back in the ring")


# -- duplicate runs --------------------------------------------------------------------------------
def duplicates_by_node(cluster: InProcessCluster, metrics: dict[str, NodeMetrics]) -> dict[str, tuple[int, int]]:
    """Per node: (``miyaq_duplicate_runs_total`` summed over queues, STATUS ``cluster.duplicates``)."""
    out = {}
    for node_id, m in metrics.items():
        total = sum(s.value for family in m.registry.collect() for s in family.samples
                    if s.name == "miyaq_duplicate_runs_total")
        out[node_id] = (int(total), cluster[node_id].node.role.stats()["duplicates"])
    return out


def two_holders_run_it(cluster: InProcessCluster, hold_runners_start: bool) -> tuple[str, list[str], dict[str, Any]]:
    """A task of two holders: the runner's STARTED event (and heartbeats, and answers to QUERY) do
    not reach the other holders, so a standby copy hears silence and runs
    the task too. With ``hold_runners_start`` the runner's STARTED events
    are held, not lost, and delivered once a standby runs it: each of the
    two then hears of the other's run while its own goes on."""
    tid = cluster.task_id()
    holders = cluster.holders(tid, 2)
    runner, standbys = holders[0], holders[1:]
    if hold_runners_start:
        held = cluster.net.hold("EVENTS", src=runner, event="S")
    else:
        cluster.net.drop("EVENTS", src=runner, event="S")
    cluster.net.drop("HEARTBEAT", src=runner)
    cluster.net.drop("ANSWER", src=runner, answering="QUERY")
    workers = {h: cluster.worker(h) for h in holders}
    cluster.submit_accepted(runner, tid, replicas=2)
    cluster.wait_until(lambda: workers[runner].runs(tid), what="the runner to start the task")
    cluster.advance(3 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: any(workers[h].runs(tid) for h in standbys), timeout=30,
                       what="a standby to run it too")
    if hold_runners_start:
        held.release()
    cluster.settle(0.3)
    return tid, holders, workers


def started_metrics(cluster: InProcessCluster) -> dict[str, NodeMetrics]:
    out = {}
    for node_id, handle in cluster.nodes.items():
        node = handle.node
        out[node_id] = NodeMetrics(node_id, node.core, node.role, node.supervisor)
        out[node_id].start()
    return out


def test_a_task_run_on_two_holders_is_counted_once_in_the_metrics(inproc):
    """Fault: a holder that heard another holder's STARTED event while its
    own run of the task went on counted it in STATUS ``cluster.duplicates``
    only: ``miyaq_duplicate_runs_total`` (fed by the engine's listeners)
    read 0 on every node although the task ran on two. It must read 1 in
    the cluster, on the node whose STATUS says 1."""
    cluster = inproc(3, default_timeout=30.0)     # no lease runs out: the runner runs one attempt
    metrics = started_metrics(cluster)
    tid, holders, workers = two_holders_run_it(cluster, hold_runners_start=False)
    assert sum(workers[h].times(tid) for h in holders) == 2, {h: w.delivered for h, w in workers.items()}
    counts = duplicates_by_node(cluster, metrics)
    assert sum(m for m, _ in counts.values()) == 1, counts
    assert all(m == s for m, s in counts.values()), counts
    assert counts[holders[0]] == (1, 1), counts       # the runner heard of the standby's run


def test_a_duplicate_run_both_holders_hear_of_is_counted_once(inproc):
    """Fault: when each of two holders heard of the other's run while its
    own went on (the runner's STARTED event came late), each counted it:
    STATUS ``cluster.duplicates`` summed over the nodes read 2 for one
    duplicate run. The holder ranked first counts it, the other only logs it."""
    cluster = inproc(3, default_timeout=30.0)     # no lease runs out: the runner runs one attempt
    metrics = started_metrics(cluster)
    tid, holders, workers = two_holders_run_it(cluster, hold_runners_start=True)
    assert sum(workers[h].times(tid) for h in holders) == 2, {h: w.delivered for h, w in workers.items()}
    counts = duplicates_by_node(cluster, metrics)
    assert sum(s for _, s in counts.values()) == 1, counts
    assert sum(m for m, _ in counts.values()) == 1, counts
    assert counts[holders[0]] == (1, 1), counts


def test_which_holder_counts_a_duplicate_run():
    """Both holders compute the same answer: the one ranked first among the
    task's holders, a node no longer listed after them, and the id on a tie."""
    holders = ["n2", "n3", "n1"]
    assert counts_duplicate("n2", "n1", holders) and not counts_duplicate("n1", "n2", holders)
    assert counts_duplicate("n3", "n1", holders) and not counts_duplicate("n1", "n3", holders)
    assert counts_duplicate("n1", "n9", holders) and not counts_duplicate("n9", "n1", holders)
    assert counts_duplicate("n8", "n9", holders) and not counts_duplicate("n9", "n8", holders)


# -- the role's counters ---------------------------------------------------------------------------
def test_the_cluster_counters_of_status_are_in_the_metrics(inproc):
    """Fault: STATUS ``cluster`` counted takeovers, deferrals, duplicates,
    stream gaps, resyncs, dropped stream messages, rejected submits and
    handed-off copies, and docs/configuration.md said they were "in STATUS
    and the metrics", but ``/metrics`` had none of them. Each is
    ``miyaq_cluster_<key>_total`` and reads what STATUS reads; a standby
    that took a task over counts it in both."""
    cluster = inproc(3, default_timeout=30.0)
    metrics = started_metrics(cluster)
    tid, holders, workers = two_holders_run_it(cluster, hold_runners_start=False)
    for node_id, m in metrics.items():
        samples = {s.name: s.value for family in m.registry.collect() for s in family.samples}
        stats = cluster[node_id].node.role.stats()
        for key in COUNTERS:
            assert samples[f"miyaq_cluster_{key}_total"] == stats[key], (node_id, key, samples, stats)
    standby = holders[1]
    assert scrape(cluster, standby)[("miyaq_cluster_takeovers_total", ())] >= 1
    assert scrape(cluster, holders[0])[("miyaq_cluster_duplicates_total", ())] == 1


def test_a_standalone_node_has_no_cluster_counters(make_http_node):
    """A standalone node's status has no cluster section: nor has its
    ``/metrics`` any ``miyaq_cluster_`` series (nothing of a cluster to count)."""
    node = make_http_node()
    api = Http(node.url)
    try:
        status, text, _ = api.get("/metrics")
        assert status == 200
        names = [s.name for family in text_string_to_metric_families(text.decode()) for s in family.samples]
        assert "miyaq_ring_epoch" in names
        assert not [n for n in names if n.startswith("miyaq_cluster_")]
    finally:
        api.close()


def test_every_cluster_counter_and_status_field_is_documented():
    """docs/http.md's metrics table names every ``miyaq_cluster_*_total``,
    and docs/protocol.md every field of STATUS ``cluster``."""
    from miyaq.gateway.metrics import CLUSTER_COUNTERS
    assert tuple(key for key, _ in CLUSTER_COUNTERS) == COUNTERS
    docs = pathlib.Path(__file__).resolve().parent.parent / "docs"
    http, protocol = (docs / "http.md").read_text(), (docs / "protocol.md").read_text()
    for key in COUNTERS:
        assert f"`miyaq_cluster_{key}_total`" in http, key
    assert "`miyaq_cluster_held_copies`" in http
    fields = ("epoch", "leader", "is_leader", "takeovers", "deferrals", "queries_refused", "duplicates", "stream_gaps",
              "resyncs", "stream_dropped", "submits_rejected", "handed_off", "cancels_forwarded", "cancels_unconfirmed",
              "held_dropped", "held_copies", "copies_refused_storage", "running_here", "streams_ready", "zookeeper")
    start = protocol.index("- `cluster`: nil on a standalone node")
    section = protocol[start:protocol.index("- `storage`:", start)]
    for field in fields:
        assert f"`{field}`" in section, field
