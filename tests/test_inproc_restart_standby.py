"""A node restarted from a log that holds no live task, in-process
(miyaq.testing.inprocess): the copies it stores after its restart, before it
has a ring or hears any stream, must not run on silence from peers it cannot
reach yet. It reconciles like a node that brought copies back from its log
(docs/cluster.md, "Before a standby copy runs"; docs/durability.md)."""
from __future__ import annotations

from miyaq.core.gate import RECONCILING
from miyaq.store.task import DONE

ALL = ["n1", "n2", "n3"]


def _restart_n1_with_only_ends_in_its_log(cluster) -> None:
    """n1's log gets a finished task (a tombstone, no live copy); n1 is
    stopped while the ring still lists it (its old ZooKeeper session has not
    expired) and restarted without a view of the ring yet."""
    first = cluster.task_led_by("n1", replicas=2)
    cluster.submit_accepted("n1", first, replicas=2)
    worker = cluster.worker("n1")
    cluster.wait_until(lambda: worker.runs(first), what="the first task to run on n1")
    worker.complete(first)
    cluster.wait_until(lambda: cluster["n1"].state(first) == DONE, what="the first task done on n1")
    assert not cluster["n1"].engine.table.live
    cluster.stop_node("n1")
    cluster.script.auto_deliver = False       # the ring reaches n1 later: its old session is still registered
    back = cluster.start_node("n1")
    assert back.role.view.epoch == 0 and not back.engine.table.live


def _task_with_n1_second(cluster) -> str:
    while True:
        tid = cluster.task_led_by("n2", replicas=2)
        if cluster.holders(tid, 2) == ["n2", "n1"]:
            return tid


def test_a_copy_stored_before_the_restarted_nodes_first_ring_view_does_not_run_on_silence(inproc, tmp_path):
    """Fault: n1 restarts from a log with only a finished task in it while
    the ring still lists it; a task whose holders are n2 then n1 is
    submitted to n2, which replicates it to n1 (stored, placed by n2's ring:
    n1 has none yet), runs and finishes it; n1 follows no stream yet and
    misses the end. n1 gets its ring just as its copy comes due, and its
    QUERYs and SYNCs are not answered for a while (the links it just made
    are not up: over CURVE the handshake takes some milliseconds, and the
    chaos run's QUERYs failed at once). Before the fix n1 did not reconcile
    (no live task in its log), its copy asked, heard silence and ran the task
    a second time (chaos seed 642261610: six tasks run twice 2 s after n0's
    restart). Now n1 reconciles from its restart: the copy is parked until
    the resyncs came, which bring the end, and it never runs."""
    cluster = inproc(3, replicas=2, data_dir=str(tmp_path), fsync="never")
    _restart_n1_with_only_ends_in_its_log(cluster)
    back = cluster["n1"]
    tid = _task_with_n1_second(cluster)
    runner = cluster.worker("n2")
    cluster.submit_accepted("n2", tid, replicas=2)
    copy = back.task(tid)
    assert copy is not None and copy.standby, "n1 stores its copy of rank 1 before it has a ring"
    cluster.wait_until(lambda: runner.runs(tid), what="the task to run on n2")
    runner.complete(tid)
    cluster.wait_until(lambda: cluster["n2"].state(tid) == DONE, what="the task done on n2")
    assert back.task(tid) is not None and back.state(tid) != DONE, "n1 heard the end without a stream"

    late = cluster.worker("n1")
    queries = cluster.net.hold("QUERY", src="n1")
    syncs = cluster.net.hold("SYNC", src="n1")
    cluster.script.deliver("n1")
    cluster.wait_until(lambda: back.role.view.epoch == cluster.script.current.epoch, what="n1's first ring")
    # The copy comes due (rank 1: an offset past its eta) and any QUERY it
    # sends gets no answer within QUERY_TIMEOUT.
    cluster.advance(2 * cluster.settings["replica_offset"] + 1.5)
    cluster.settle(0.2)
    assert late.times(tid) == 0, "n1's copy ran on silence from peers it could not reach yet"
    assert back.role.standby.takeovers == 0
    assert back.node.core.gate.holds(RECONCILING), "a restarted node reconciles before it dispatches"

    queries.release()
    syncs.release()
    cluster.wait_until(lambda: back.state(tid) == DONE, what="n1's copy to finish as on n2")
    cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n1's reconcile to end")
    cluster.advance(3 * cluster.settings["replica_offset"])
    cluster.settle(0.1)
    assert late.times(tid) == 0 and runner.times(tid) == 1
    assert not cluster.crashes()


def test_a_node_started_with_an_empty_log_does_not_reconcile(inproc, tmp_path):
    """A node whose log is empty (its first start) has nothing to reconcile:
    it dispatches as soon as it has a ring, as before."""
    cluster = inproc(2, replicas=2, data_dir=str(tmp_path), fsync="never")
    for handle in cluster.nodes.values():
        assert not handle.node.core.gate.holds(RECONCILING)
    tid = cluster.task_led_by("n1")
    worker = cluster.worker("n1")
    cluster.submit_accepted("n1", tid)
    cluster.wait_until(lambda: worker.runs(tid), what="the task to run on n1")
    assert not cluster.crashes()
