"""Submits through a node that reconciles after a restart, in process
(miyaq.testing.inprocess).

A node restarted from its log reconciles with the other holders before it
dispatches (miyaq/cluster/reconcile.py); until then it does not know what
they stored or finished while it was down -- among them the tasks holding
a key of which it is the first holder. docs/cluster.md (Runbook: upgrade)
says such a node coordinates no submit until it reconciled: it refuses
with ``unavailable``, which a client resends to another node at once and
which says nothing was stored. A node whose ring lists no other member
has nobody to reconcile with and coordinates as before."""
from __future__ import annotations

from miyaq.core.gate import RECONCILING
from miyaq.protocol.commands import ACCEPTED, DUPLICATE, REJECTED


def _key_led_by(cluster, node_id: str) -> tuple[str, str]:
    """A key whose holders (replicas=2) are ``node_id`` first, then another node.
    Returns (key, the other holder)."""
    for i in range(10_000):
        key = f"k{i}"
        holders = cluster.holders("x", key=key, replicas=2)
        if holders[0] == node_id:
            return key, holders[1]
    raise AssertionError("no such key in 10,000")


def _start_reconciling(cluster, node_id: str):
    """Start the stopped ``node_id`` again from its log with its resync
    requests (SYNC) held: it stays reconciling. Returns (the node, the held rule)."""
    syncs = cluster.net.hold("SYNC", src=node_id)
    back = cluster.start_node(node_id)
    epoch = cluster.script.current.epoch
    cluster.wait_until(lambda: back.role.view.epoch == epoch, what=f"{node_id}'s ring after its restart")
    assert back.node.core.gate.holds(RECONCILING), "a node restarted from its log reconciles"
    return back, syncs


def test_a_reconciling_node_refuses_a_keyed_submit_whose_key_another_holder_took_while_it_was_down(inproc, tmp_path):
    """Fault: n1, the first holder of key K, is down (the ring still lists
    it: its old session has not expired) while task ``ida`` of K is
    submitted through K's other holder and stored there (min_acks=1); n1
    restarts from its log (a delayed task in it) and reconciles, its SYNCs
    unanswered for now. ``idb`` of K is then submitted through n1. Before
    the fix n1 coordinated it: first holder of K, with no task of K in its
    table, it stored ``idb`` and answered ``accepted`` (min_acks=1) -- two
    tasks of one key accepted; once n1 reconciled, ``ida``, accepted to its
    producer first, was cancelled on every holder without running and
    ``idb`` scheduled (/tmp/reconcilegate/test_harm.py). Now n1 refuses it ``unavailable`` and stores
    nothing; once n1 reconciled, the resend is answered ``duplicate`` of
    ``ida``."""
    cluster = inproc(3, replicas=2, min_acks=1, data_dir=str(tmp_path), fsync="never")
    key, other = _key_led_by(cluster, "n1")
    kept = cluster.submit("n1", cluster.task_led_by("n1", replicas=2), countdown=3600)
    cluster.wait_until(lambda: kept.result, what="a delayed task stored on n1")
    assert kept.status == ACCEPTED

    cluster.stop_node("n1")
    first = cluster.submit(other, "ida", key=key, countdown=3600)
    cluster.wait_until(lambda: first.result, what="ida answered")
    assert first.status == ACCEPTED, first.result
    back, syncs = _start_reconciling(cluster, "n1")
    assert back.task("ida") is None, "n1 has not re-learned ida yet"

    second = cluster.submit("n1", "idb", key=key, countdown=3600)
    cluster.wait_until(lambda: second.result, what="idb answered")
    assert second.result[1] == REJECTED and second.result[2]["code"] == "unavailable", second.result
    assert back.task("idb") is None and cluster[other].task("idb") is None, "a refusal stores nothing"

    syncs.release()
    cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n1's reconcile to end")
    again = cluster.submit("n1", "idb", key=key, countdown=3600)
    cluster.wait_until(lambda: again.result, what="idb's resend answered")
    assert again.result == ["idb", DUPLICATE, "ida"], again.result
    assert not cluster.crashes()


def test_a_reconciling_node_refuses_any_submit_until_it_reconciled(inproc, tmp_path):
    """Fault: n1 restarts from its log and its SYNCs go unanswered. A submit
    through it is refused ``unavailable`` (before the fix it was accepted)
    while another node takes it; once the resyncs come, n1 coordinates."""
    cluster = inproc(3, replicas=2, data_dir=str(tmp_path), fsync="never")
    kept = cluster.submit("n1", cluster.task_led_by("n1", replicas=2), countdown=3600)
    cluster.wait_until(lambda: kept.result, what="a delayed task stored on n1")
    cluster.stop_node("n1")
    back, syncs = _start_reconciling(cluster, "n1")

    refused = cluster.submit("n1", "t-refused")
    cluster.wait_until(lambda: refused.result, what="the submit through n1 answered")
    assert refused.result[1] == REJECTED and refused.result[2]["code"] == "unavailable", refused.result
    assert "reconcil" in refused.result[2]["message"]
    elsewhere = cluster.submit("n2", "t-refused")
    cluster.wait_until(lambda: elsewhere.result, what="the resend through n2 answered")
    assert elsewhere.status == ACCEPTED, elsewhere.result

    syncs.release()
    cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n1's reconcile to end")
    later = cluster.submit("n1", "t-later")
    cluster.wait_until(lambda: later.result, what="the later submit answered")
    assert later.status == ACCEPTED, later.result
    assert not cluster.crashes()


def test_a_single_node_cluster_restarted_from_its_log_takes_submits(inproc, tmp_path):
    """A node that is its ring's only member reconciles with nobody: it
    takes submits right after its restart, as before."""
    cluster = inproc(1, replicas=1, data_dir=str(tmp_path), fsync="never")
    kept = cluster.submit("n1", "t-kept", countdown=3600)
    cluster.wait_until(lambda: kept.result, what="a delayed task stored")
    cluster.stop_node("n1")
    back = cluster.start_node("n1")
    epoch = cluster.script.current.epoch
    cluster.wait_until(lambda: back.role.view.epoch == epoch, what="the ring after the restart")
    sub = cluster.submit("n1", "t-new")
    cluster.wait_until(lambda: sub.result, what="the submit answered")
    assert sub.status == ACCEPTED, sub.result
    assert back.task("t-kept") is not None
    assert not cluster.crashes()
