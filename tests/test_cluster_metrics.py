"""The cluster's figures in ``/metrics`` say what happened: a silent peer's
replication lag grows for as long as it is silent and its series ends when
it leaves the ring, a task run on two holders is counted once in
``miyaq_duplicate_runs_total``, and the role's counters (STATUS
``cluster``) are exported.

In-process clusters (:mod:`miyaq.testing.inprocess`); each node's metrics
are read from a :class:`~miyaq.gateway.metrics.NodeMetrics` made for it
(an in-process node has no HTTP gateway), as ``GET /metrics`` reads them."""
from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from miyaq.gateway.metrics import NodeMetrics
from miyaq.testing.inprocess import InProcessCluster


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
