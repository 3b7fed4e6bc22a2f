"""Fencing (miyaq.cluster.fence): when a node without ZooKeeper stops
starting tasks. Each test states what this node and its peers know of
ZooKeeper, as the coordinator (``silent_for``) and the peers' heartbeats
(``heard_from``: since when each has had ZooKeeper) report it; the times are
seconds apart from the rule's thresholds, so no test depends on timing."""
from __future__ import annotations

from typing import Any, cast

import pytest

from miyaq.cluster.fence import Fence
from miyaq.cluster.membership import Coordinator
from miyaq.cluster.transport import StreamSubscriber
from miyaq.constants import FENCE_AFTER, FENCE_PEER_HELD
from miyaq.runtime import monotonic

RING = ["n0", "n1", "n2"]


class Knowledge:
    """This node's ZooKeeper silence and what its peers' heartbeats said,
    each as seconds before now (None: that peer has no ZooKeeper)."""

    def __init__(self, silent: float, peers: dict[str, float | None]) -> None:
        self.silent = silent
        self.peers = peers

    def silent_for(self) -> float:
        return self.silent

    def heard_from(self, within: float) -> dict[str, float | None]:
        now = monotonic()
        return {n: None if ago is None else now - ago for n, ago in self.peers.items()}


def fence(silent: float, peers: dict[str, float | None]) -> Fence:
    known = Knowledge(silent, peers)
    return Fence("n0", cast(Coordinator, known), cast(StreamSubscriber, cast(Any, known)))


def test_a_node_that_has_zookeeper_or_just_lost_it_is_not_fenced():
    assert not fence(0.0, {"n1": 100.0, "n2": 100.0}).fenced(RING)
    assert not fence(FENCE_AFTER / 2, {"n1": 100.0, "n2": 100.0}).fenced(RING)


def test_fault_this_node_alone_cut_off_from_zookeeper_fences():
    """Fault: this node lost ZooKeeper 20 s ago; its peers have had it all along."""
    assert fence(20.0, {"n1": 100.0, "n2": 100.0}).fenced(RING)


def test_fault_whole_ensemble_away_fences_no_one():
    """Fault: every server of the ensemble is down; no node has ZooKeeper,
    each hears the others: the cluster keeps serving on the ring it has."""
    assert not fence(20.0, {"n1": None, "n2": None}).fenced(RING)


def test_fault_ensemble_just_back_and_this_node_reconnecting_is_not_fenced():
    """Fault: the ensemble was away and came back a moment ago; the peers
    reconnected first. This node is about to: the peers do not count yet."""
    just_back = FENCE_PEER_HELD / 3
    assert not fence(20.0, {"n1": just_back, "n2": just_back}).fenced(RING)


@pytest.mark.parametrize("held", [2 * FENCE_PEER_HELD, 18.0], ids=["just-held", "held-long"])
def test_fault_cut_off_while_the_peers_reconnected_fences_once_they_held_it(held):
    """Fault: this node's ZooKeeper server was cut off from the others (a
    minority). The peers lost their connections too -- they shared that
    server, or it was the ensemble's leader and the rest elected a new one
    -- and got them back a moment later. None has had ZooKeeper since
    before this node lost it, but once one has kept it FENCE_PEER_HELD while
    this node still has none, it fences. (Chaos runs saw a node fence 7.2 s
    after it lost ZooKeeper, and a CI run 4.9 s, past the 6 s the checker
    allows from the cut, with a 3 s hold.)"""
    assert fence(20.0, {"n1": held, "n2": None}).fenced(RING)
    # ... and not before one held it that long
    assert not fence(FENCE_AFTER + 0.5, {"n1": FENCE_PEER_HELD / 2, "n2": None}).fenced(RING)


def test_fault_split_minority_hears_no_majority_and_fences():
    """Fault: a partition leaves this node alone; it hears none of its peers
    (so nothing of their ZooKeeper): it may be the minority, and fences."""
    assert fence(20.0, {}).fenced(RING)
    assert not fence(20.0, {"n1": None}).fenced(RING)   # hears a majority (itself and n1), no one has ZooKeeper


def test_changed_reports_the_fence_going_up_and_down():
    f = fence(20.0, {"n1": 100.0, "n2": 100.0})
    assert f.changed(RING) and f.up
    assert not f.changed(RING)
    cast(Knowledge, f.coordinator).silent = 0.0
    assert f.changed(RING) and not f.up
