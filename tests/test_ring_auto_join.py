"""A node's auto-join at start is checked as every other change of the ring is
(``ring_admin.change_desired``), against a real ZooKeeper.

No timing assertions: waits are bounded polls; every coordinator a test
starts is stopped at its end.
"""
from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
from miyaq.cluster.zk_layout import Layout
from miyaq.runtime import Supervisor
from miyaq.testing.zookeeper import ZooKeeperServer
from zk_fixtures import member, wait_until

pytestmark = pytest.mark.timeout(120)

COORDINATOR_LOG = "miyaq.cluster.zk_coordinator"


def heavy_node(zk_server: ZooKeeperServer, cluster: str, supervisor: Supervisor, node_id: str,
               weight: float) -> ZooKeeperCoordinator:
    """A coordinator (not started) for a node of ``weight``, with the test timings of ``make_coordinator``."""
    return ZooKeeperCoordinator(zk_server.hosts, cluster, member(node_id, weight), supervisor=supervisor,
                                session_timeout=2.0, connect_timeout=5.0, op_timeout=5.0, reconcile_interval=1.0)


def test_a_node_whose_auto_join_makes_the_ring_too_large_starts_out_of_it(
        make_coordinator: Callable[..., ZooKeeperCoordinator], zk_server, zk_cluster_name, zk_client,
        zk_supervisor, caplog):
    """Fault: a node started with auto-join (the default) and a weight of
    1000: its join asks for a ring of 160,160 points, past the 65,536 a
    ring may have. ``miyaq join`` and the coordinator's ``join()`` refuse
    that, but the start wrote ``join: true`` unchecked, and the leader then
    published no ring again (no join, leave or weight of any node). Now the
    start makes the same check: nothing is stored, the node says why and
    runs out of the ring, and the leader goes on publishing changes."""
    a = make_coordinator("a")
    wait_until(lambda: a.is_leader and "a" in a.view.members, "a to lead a ring of a")
    desired = Layout(zk_cluster_name).desired
    before = zk_client.get(desired)[0]
    big = heavy_node(zk_server, zk_cluster_name, zk_supervisor, "big", 1000)
    try:
        with caplog.at_level("ERROR", logger=COORDINATOR_LOG):
            big.start()
        assert zk_client.get(desired)[0] == before
        errors = [r.getMessage() for r in caplog.records if r.name == COORDINATOR_LOG]
        assert any("big cannot ask to join the ring" in m and "cannot join big: a ring of 160160 points" in m
                   for m in errors), errors
        wait_until(lambda: "big" in a.registered(), "big to register")
        a.set_weight("a", 2)
        wait_until(lambda: a.view.members["a"].weight == 2, "a's new weight published")
        assert set(a.view.members) == {"a"}
    finally:
        big.stop()


def test_a_start_whose_entry_wants_it_in_already_is_not_refused(
        make_coordinator: Callable[..., ZooKeeperCoordinator], zk_cluster_name, zk_client, caplog):
    """A node restarting whose ``desired`` entry says join already changes
    nothing at its start, so it is not checked: the leader publishes what it
    can. Here the check would count a node given weight 408 that is not
    running (65,280 points) and refuse; the leader counts only registered
    nodes and puts c in. Refusing would have logged that c cannot join while
    it joins."""
    a = make_coordinator("a")
    wait_until(lambda: a.is_leader and "a" in a.view.members, "a to lead a ring of a")
    desired = Layout(zk_cluster_name).desired
    nodes = json.loads(zk_client.get(desired)[0])["nodes"]
    nodes["big"] = {"join": True, "weight": 408}
    nodes["c"] = {"join": True, "weight": None}
    zk_client.set(desired, json.dumps({"nodes": nodes}).encode())
    before = zk_client.get(desired)[0]
    with caplog.at_level("ERROR", logger=COORDINATOR_LOG):
        make_coordinator("c")
    wait_until(lambda: set(a.view.members) == {"a", "c"}, "c in the ring")
    assert zk_client.get(desired)[0] == before
    assert not [r for r in caplog.records if r.name == COORDINATOR_LOG], caplog.text


def test_a_node_restarted_with_a_weight_too_large_for_the_ring_is_refused_at_start(
        make_coordinator: Callable[..., ZooKeeperCoordinator], zk_server, zk_cluster_name, zk_client,
        zk_supervisor):
    """Fault: a node in the ring (wanted in at no weight of its own) is
    restarted with ``--weight 1000``. Its start changes nothing in
    ``desired``, so no check ran, but its registration alone asked the
    leader for a ring of 160,160 points: the leader published no ring
    again, and every join, leave and weight of every node was refused
    from then on. Now the start is refused, saying why, and registers
    nothing; the cluster goes on taking changes."""
    from miyaq.errors import ConfigError

    a = make_coordinator("a")
    wait_until(lambda: a.is_leader and "a" in a.view.members, "a to lead a ring of a")
    c = make_coordinator("c")
    wait_until(lambda: set(a.view.members) == {"a", "c"}, "c in the ring")
    c.stop()
    wait_until(lambda: "c" not in a.registered(), "c's member znode gone")
    desired = Layout(zk_cluster_name).desired
    before = zk_client.get(desired)[0]
    heavy = heavy_node(zk_server, zk_cluster_name, zk_supervisor, "c", 1000)
    try:
        with pytest.raises(ConfigError, match="c cannot register with weight 1000: the ring it is wanted in "
                                              "would be too large .a ring of 160160 points"):
            heavy.start()
    finally:
        heavy.stop()
    assert zk_client.get(desired)[0] == before
    assert "c" not in a.registered()
    a.set_weight("a", 2)
    wait_until(lambda: a.view.members["a"].weight == 2, "a's new weight published")
    again = make_coordinator("c")
    wait_until(lambda: set(a.view.members) == {"a", "c"} and "c" in again.view.members, "c back in the ring")
