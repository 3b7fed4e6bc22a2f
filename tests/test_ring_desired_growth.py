"""The ``desired`` znode of a cluster whose nodes auto-joined under ids that
are gone (a container whose default node id changes at every recreate,
replaced machines) and stopped without ``miyaq leave``: one entry each,
wanted in the ring, never registered again. Against a real ZooKeeper
(tests/zk_fixtures.py), as tests/test_ring_faults.py.

No timing assertions: waits are bounded polls; every coordinator a test
starts is stopped at its end."""
from __future__ import annotations

import functools

import json
from collections.abc import Callable

import pytest

from miyaq.cli.main import main
from miyaq.cli.ring_cmd import format_ring
from miyaq.cluster.ring_admin import RingAdmin
from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
from miyaq.cluster.zk_layout import MAX_DESIRED, Layout, RingRecord
from miyaq.errors import ConfigError
from zk_fixtures import DEADLINE, wait_until

pytestmark = pytest.mark.timeout(120)

STALE = 420
"""Entries left by nodes gone for good: 420 x 160 points is past the 65,536 a ring may have."""


@pytest.fixture
def make(make_coordinator: Callable[..., ZooKeeperCoordinator]) -> Callable[..., ZooKeeperCoordinator]:
    """Start coordinators of this test's cluster (4 s sessions); all stopped at teardown."""
    return functools.partial(make_coordinator, session_timeout=4.0)


def _ring(zk_client, cluster: str) -> RingRecord:
    return RingRecord.from_bytes(zk_client.get(Layout(cluster).ring)[0])


def _gone_for_good(make, zk_client, cluster: str) -> list[str]:
    """One node auto-joins and stops without leaving (its entry stays), and
    the entries of STALE - 1 more such nodes are written as theirs were: the
    ids of all of them."""
    pod = make("pod-0", leader_eligible=False)
    desired = Layout(cluster).desired
    wait_until(lambda: b'"pod-0"' in zk_client.get(desired)[0], "pod-0's own join stored")
    pod.stop()
    nodes = json.loads(zk_client.get(desired)[0])["nodes"]
    assert nodes["pod-0"] == {"join": True, "weight": None}
    stale = [f"pod-{i}" for i in range(STALE)]
    nodes.update({node_id: {"join": True, "weight": None} for node_id in stale})
    zk_client.set(desired, json.dumps({"nodes": nodes}).encode())
    return stale


def test_entries_of_nodes_gone_for_good_do_not_block_weights_and_joins(make, zk_server, zk_cluster_name,
                                                                        zk_client, capsys):
    """Fault: 420 nodes auto-joined under ids that never come back and
    stopped without `miyaq leave`. Their `desired` entries stay (only a
    leave removes one), and every join and weight counted every node wanted
    in, running or not: "a ring of 67680 points is over the 65536" for
    `ring weight`, `join`, the coordinator's own calls, and `miyaq ring
    weight` exited 2. Now a node wanted in counts if it is registered, in
    the ring or given a weight of its own; the others cost nothing, and
    `miyaq ring` lists them for `miyaq leave`."""
    a = make("a")
    make("b", auto_join=False)
    wait_until(lambda: a.is_leader and "b" in a.registered(), "a to lead and b to register")
    stale = _gone_for_good(make, zk_client, zk_cluster_name)

    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE) as admin:
        assert "b joined the ring" in admin.join("b")
        assert "weight of a: 1 -> 2" in admin.set_weight("a", 2)
        a.set_weight("b", 3)
        wait_until(lambda: _ring(zk_client, zk_cluster_name).weights.get("b") == 3, "b's weight published")
        assert main(["ring", "weight", "b", "1.5", "--zk", zk_server.hosts, "--cluster", zk_cluster_name]) == 0
        assert "weight 3 -> 1.5" in capsys.readouterr().out
        assert set(_ring(zk_client, zk_cluster_name).members) == {"a", "b"}

        status = admin.status()
        assert status["not_registered"] == sorted(stale)
        text = format_ring(status, zk_server.hosts)
        assert f"{STALE} nodes wanted in the ring are not registered" in text and "miyaq leave NODE" in text
        assert "pod-0, pod-1, pod-10" in text and f"and {STALE - 20} more" in text

        admin.leave("pod-0")        # forgets its entry
        assert admin.status()["not_registered"] == sorted(stale[1:])


def test_a_weight_given_to_a_node_that_is_not_running_still_counts(make, zk_server, zk_cluster_name,
                                                                    zk_client):
    """A node wanted in that the operator gave a weight counts whether or not
    it runs (it joins at that weight when it starts), as before: with one
    not running at weight 408 (65,280 points) and a at 1 (160), nothing
    more fits: a change that would pass 65,536 points is refused and not
    stored."""
    a = make("a")
    wait_until(lambda: a.is_leader and "a" in _ring(zk_client, zk_cluster_name).members, "a ring of a")
    desired = Layout(zk_cluster_name).desired
    nodes = json.loads(zk_client.get(desired)[0])["nodes"]
    nodes["big"] = {"join": True, "weight": 408}
    zk_client.set(desired, json.dumps({"nodes": nodes}).encode())
    before = zk_client.get(desired)[0]
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE) as admin:
        with pytest.raises(ConfigError, match="cannot set the weight of a to 2: a ring of 65600 points"):
            admin.set_weight("a", 2)
        with pytest.raises(ConfigError, match="cannot join c: a ring of 65600 points"):
            admin.join("c")            # not registered: it counts as the node joined, at weight 1
        assert zk_client.get(desired)[0] == before
        assert admin.status()["not_registered"] == ["big"]


def test_the_desired_znode_forgets_the_oldest_nodes_gone_for_good_past_its_cap(make, zk_server, zk_cluster_name,
                                                                               zk_client):
    """Fault: every node that auto-joined under an id that never comes back
    (a container's ``<hostname>-<port>``, recreated at each deploy) kept its
    ``desired`` entry for good: about 25,000 of them would fill the znode
    past ZooKeeper's 1 MB, and every join, leave, weight and auto-join at
    start would fail. Past ``MAX_DESIRED`` entries a change forgets the
    oldest of them; nodes registered, in the ring, given a weight, or
    being joined stay."""
    a = make("a")
    wait_until(lambda: a.is_leader and "a" in _ring(zk_client, zk_cluster_name).members, "a ring of a")
    desired = Layout(zk_cluster_name).desired
    nodes = json.loads(zk_client.get(desired)[0])["nodes"]
    gone = [f"gone-{i}" for i in range(MAX_DESIRED + 50)]
    nodes.update({node_id: {"join": True, "weight": None} for node_id in gone})
    nodes["planned"] = {"join": True, "weight": 2}       # an operator's: not running yet
    zk_client.set(desired, json.dumps({"nodes": nodes}).encode())
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE) as admin:
        admin.join("newcomer")          # not running: it stays wanted in
    after = json.loads(zk_client.get(desired)[0])["nodes"]
    assert len(after) == MAX_DESIRED
    assert {"a", "planned", "newcomer"} <= set(after)
    assert [n for n in gone if n not in after] == gone[:len(gone) + 3 - MAX_DESIRED]   # the oldest went
