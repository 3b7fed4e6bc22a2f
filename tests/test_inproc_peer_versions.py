"""Peer protocol 2 in a cluster, in-process (miyaq.testing.inprocess): a
submit's copies go as rows (miyaq.protocol.recordrow) only to a peer whose
answers said it speaks version 2, as maps in version 1 to any other; a
rolling upgrade -- and its rollback -- mixes nodes of both versions, and
copies are replicated and stored both ways with nothing refused.

A node of a build before version 2 is played by a node that speaks only 1
(``PeerVersions(speaks=1)``): it refuses a request in version 2 with
``bad_version``, as such a build does, and its answers say it speaks 1 (a
build before version 2 says nothing, which a node reads as 1).
"""
from __future__ import annotations

from typing import Any

import pytest

from miyaq.cluster import peer_requests
from miyaq.cluster.peer_versions import PeerVersions

pytestmark = pytest.mark.timeout(60)
ALL = ["n1", "n2", "n3"]


def _layouts(cluster, tid: str, src: str, dst: str) -> list[tuple[Any, str]]:
    """``(proto, layout)`` of every REPLICATE ``src`` sent ``dst`` carrying ``tid``: ``row`` or ``map``."""
    out = []
    for m in cluster.net.messages("REPLICATE", src=src, dst=dst, task=tid):
        for r in m.body.get("tasks") or ():
            if isinstance(r, list) and r and r[0] == tid:
                out.append((m.body.get("proto"), "row"))
            elif isinstance(r, dict) and r.get("id") == tid:
                out.append((m.body.get("proto"), "map"))
    return out


def _replicated(cluster, via: str) -> str:
    """Submit a task led by ``via`` (every node holds it: replicas 3,
    min_acks all three) and wait until it is accepted and stored everywhere."""
    tid = cluster.task_led_by(via)
    cluster.submit_accepted(via, tid)
    cluster.wait_until(lambda: all(cluster[n].task(tid) or cluster[n].tombstone(tid) for n in cluster.nodes),
                       what=f"{tid} stored on every node")
    return tid


def _nothing_refused(cluster) -> None:
    for n, handle in cluster.nodes.items():
        assert handle.node.core.refusals.total() == 0, (n, dict(handle.node.core.refusals.counts))


def _start_speaking_1(cluster, node_id: str, monkeypatch):
    """Start ``node_id`` as a node of a build before peer protocol 2."""
    with monkeypatch.context() as patch:
        patch.setattr(peer_requests, "PeerVersions", lambda: PeerVersions(speaks=1))
        return cluster.start_node(node_id)


def _restart(cluster, node_id: str, start) -> Any:
    """The Runbook's rolling restart of ``node_id`` (started again by ``start()``)."""
    others = [n for n in ALL if n != node_id]
    cluster.stop_node(node_id, grace=0.2)
    cluster.publish(others)
    back = start()
    cluster.publish(ALL)
    cluster.wait_until(lambda: not back.role.reconciling and back.role.streams_ready(), timeout=30,
                       what=f"{node_id} reconciled")
    return back


def test_nodes_that_speak_version_2_send_a_submits_copies_as_rows(inproc):
    """Every node of this build: once a peer answered (the ring's first
    resync), a submit's copies go to it as rows in version-2 requests, and
    each holder stores the copy the coordinator holds."""
    cluster = inproc(3)
    cluster.wait_until(lambda: all(cluster[a].role.peer.versions.version_for(b) == 2
                                   for a in ALL for b in ALL if a != b), what="every node heard every other")
    tid = _replicated(cluster, "n1")
    assert _layouts(cluster, tid, "n1", "n2") == _layouts(cluster, tid, "n1", "n3") == [(2, "row")]
    mine = cluster["n1"].task(tid)
    for n in ("n2", "n3"):
        copy = cluster[n].task(tid)
        assert (copy.name, copy.queue, copy.body, copy.holders, copy.replicas, copy.spec) == (
            mine.name, mine.queue, mine.body, mine.holders, mine.replicas, mine.spec), n
        assert copy.standby and copy.rank == mine.holders.index(n)
    keyed = cluster.task_led_by("n1")
    cluster.submit_accepted("n1", keyed, key="k-" + keyed)
    assert _layouts(cluster, keyed, "n1", "n2") == [(2, "map")]     # not a submit's plain layout: a map
    _nothing_refused(cluster)


def test_a_rolling_upgrade_mixes_nodes_of_both_versions_and_replicates_both_ways(inproc, monkeypatch):
    """Fault: a rolling upgrade from a build that speaks only peer protocol 1
    (it refuses a request in version 2, ``bad_version``) to this one. With
    n2 still on the old build and n1, n3 upgraded, a submit through each
    node is stored on all three: n2 gets maps in version 1, n1 and n3 rows
    in version 2 from each other, and n2 writes maps in version 1 to both.
    Nothing is refused. Then n2 is upgraded (a rolling restart) and gets
    rows too; then n3 is rolled back to the old build: it left the ring
    and came back, so the others forgot what it spoke (its link made anew)
    and write to it in version 1 -- nothing is refused ``bad_version``
    (before 2026-12-07 the version its old process spoke stayed, and the
    first requests written to it were) -- a submit through n1 stored on it
    at the first try."""
    cluster = inproc(3, ring=False)
    cluster.stop_node("n2")
    _start_speaking_1(cluster, "n2", monkeypatch)
    cluster.publish(ALL)
    tids = {via: _replicated(cluster, via) for via in ALL}
    for via, tid in tids.items():
        for dst in ALL:
            if dst == via:
                continue
            expected = [(1, "map")] if "n2" in (via, dst) else [(2, "row")]
            assert _layouts(cluster, tid, via, dst) == expected, (via, dst)
    _nothing_refused(cluster)
    assert not any(cluster[n].role.peer.errors["bad_version"] for n in ALL)
    for tid in tids.values():
        for n in ALL:
            assert cluster[n].task(tid) is not None, (tid, n)

    _restart(cluster, "n2", lambda: cluster.start_node("n2"))        # n2 upgraded
    cluster.wait_until(lambda: cluster["n1"].role.peer.versions.version_for("n2") == 2, what="n1 hears n2 speaks 2")
    tid = _replicated(cluster, "n1")
    assert _layouts(cluster, tid, "n1", "n2") == [(2, "row")]

    _restart(cluster, "n3", lambda: _start_speaking_1(cluster, "n3", monkeypatch))     # n3 rolled back
    cluster.wait_until(lambda: cluster["n1"].role.peer.versions.version_for("n3") == 1, what="n1 hears n3 speaks 1")
    tid = _replicated(cluster, "n1")
    assert _layouts(cluster, tid, "n1", "n3") == [(1, "map")]
    assert _layouts(cluster, tid, "n1", "n2") == [(2, "row")]
    _nothing_refused(cluster)
    assert cluster["n3"].role.peer.errors["bad_version"] == 0       # nothing was written to it in version 2
