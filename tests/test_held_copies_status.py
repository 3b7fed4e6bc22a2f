"""The copies an old holder holds for a ring newer than its view
(:mod:`miyaq.cluster.handoff_held`) are seen from outside: STATUS
``cluster.held_copies`` (how many now) and ``cluster.held_dropped`` (dropped
past the bounds since start), and in ``/metrics`` as
``miyaq_cluster_held_copies`` and ``miyaq_cluster_held_dropped_total``.

The setup is the rejoin's (tests/test_inproc_rejoin_lag.py): n1 restarts
from its log, sees the ring without itself while n2 and n3 have the one with
n1 again, hands them its copies and they confirm on the newer ring."""
from __future__ import annotations

import logging

import pytest

from prometheus_client.parser import text_string_to_metric_families
from test_inproc_rejoin_lag import _restart_n1_with_a_lagging_view

from miyaq.cluster import handoff_held
from miyaq.cluster.handoff_held import HELD_COPY_TTL, HeldCopies
from miyaq.gateway.metrics import NodeMetrics
from miyaq.logs import LogLimiter
from miyaq.testing.inprocess import InProcessCluster


def _figures(cluster: InProcessCluster, node_id: str) -> tuple[int, int, float, float]:
    """(STATUS held_copies, held_dropped, and their two /metrics samples) of ``node_id``."""
    node = cluster[node_id].node
    stats = node.role.stats()
    text = NodeMetrics(node_id, node.core, node.role, node.supervisor).render().decode()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return (stats["held_copies"], stats["held_dropped"], samples["miyaq_cluster_held_copies"],
            samples["miyaq_cluster_held_dropped_total"])


def _held_on_n1(cluster: InProcessCluster) -> int:
    handoff = cluster["n1"].role.handoff
    cluster.wait_until(lambda: len(handoff.held) > 0 and not handoff.leaving and not handoff.busy,
                       what="n1's copies confirmed on the newer ring")
    return len(handoff.held)


def test_copies_held_for_a_newer_ring_show_in_status_and_metrics_until_the_view_catches_up(inproc, tmp_path):
    """Fault: n1's view lags the others' after its restart, so it holds the
    copies they confirmed on the newer ring. Before, nothing outside the
    process said so: STATUS ``cluster`` had no such field and /metrics no
    such series. Now both give the count while they are held, and 0 once
    n1's view reached that ring and its pass placed them (none dropped)."""
    cluster, _ = _restart_n1_with_a_lagging_view(inproc, tmp_path)
    held = _held_on_n1(cluster)
    assert _figures(cluster, "n1") == (held, 0, held, 0)
    assert _figures(cluster, "n2")[:2] == (0, 0)
    cluster.script.deliver("n1")
    epoch = cluster.script.current.epoch
    cluster.wait_until(lambda: cluster.settled(epoch), what=f"every node on epoch {epoch}")
    cluster.wait_until(lambda: cluster["n1"].role.stats()["held_copies"] == 0, what="n1's pass on the newer ring")
    assert _figures(cluster, "n1") == (0, 0, 0, 0)
    assert not cluster.crashes()


def test_held_copies_dropped_when_the_view_never_catches_up_are_counted(inproc, tmp_path):
    """Fault: n1's view never reaches the newer ring: its held copies are
    dropped after HELD_COPY_TTL with a warning, and ``held_dropped`` (and
    ``miyaq_cluster_held_dropped_total``) counts them -- an operator can
    tell those tasks may live on a holder fewer than the ring says."""
    cluster, _ = _restart_n1_with_a_lagging_view(inproc, tmp_path)
    held = _held_on_n1(cluster)
    cluster.advance(HELD_COPY_TTL + 2)
    cluster.wait_until(lambda: cluster["n1"].role.stats()["held_copies"] == 0, what="the held copies' time to end")
    assert _figures(cluster, "n1") == (0, held, 0, held)
    assert not cluster.crashes()


def test_a_hold_refused_for_the_bound_counts_as_dropped(monkeypatch):
    """Past MAX_HELD_COPIES a hold is refused and its caller drops the copy
    at once: that counts in ``dropped`` too; a hold that is granted does not."""
    held = HeldCopies(1)
    assert held.hold("a", 3, 0.0) and held.hold("a", 4, 1.0)
    assert held.dropped == 0
    assert not held.hold("b", 3, 2.0)
    assert (len(held), held.dropped) == (1, 1)


def test_the_bound_of_held_copies_is_the_nodes_max_tasks_and_a_refusal_is_logged(inproc, caplog, monkeypatch):
    """Fault (audit review23): the bound was a fixed 100,000 and a hold
    refused past it dropped the copy with no line in the log -- the loss
    the hold prevents, for a node holding more copies than that (250 of
    300 dropped with the bound patched to 50: 206 tasks left a holder
    short for good). Every held id is a copy the node's table holds (or
    one that ended since), so the bound is the node's ``max_tasks``; a
    refusal still drops the copy, counted and logged (once a minute)."""
    cluster = inproc(3, replicas=3, max_tasks=1234)
    assert cluster["n1"].role.handoff.held.limit == 1234
    # A limiter of its own: another test's refusal may have used this minute's line.
    monkeypatch.setattr(handoff_held, "_refused_log", LogLimiter(handoff_held.logger, burst=1, per=60.0))
    held = HeldCopies(1)
    with caplog.at_level(logging.WARNING, logger="miyaq.cluster.handoff"):
        assert held.hold("a", 3, 0.0)
        assert not held.hold("b", 3, 1.0) and not held.hold("c", 3, 2.0)
    lines = [r.getMessage() for r in caplog.records if "held for a ring newer" in r.getMessage()]
    assert len(lines) == 1 and "task b's copy is dropped" in lines[0]
    assert held.dropped == 2
    with pytest.raises(ValueError):
        HeldCopies(0)
    assert not cluster.crashes()
