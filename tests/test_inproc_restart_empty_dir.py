"""A node restarted with an EMPTY data dir (a lost or replaced disk, a new VM
with the same node id, or no ``--data-dir`` at all) while the ring still
lists it, in process (miyaq.testing.inprocess).

Its log brings nothing back, but the ring makes it a holder of its share of
every task: the others send it copies and ends, and what it held before
the restart is only on them. It reconciles as a node restarted from its log
does (docs/cluster.md, "Restarts"; docs/durability.md): dispatching held,
no submit coordinated while its ring lists another member, copies parked,
until each other member's first resync came. A node id new to the ring
joins as before. How the node tells the two apart: whether the ring listed
it when it registered (``Coordinator.listed_at_start``)."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace

from miyaq.core.gate import RECONCILING
from miyaq.protocol.commands import ACCEPTED, DUPLICATE, REJECTED
from miyaq.runtime import clock, green
from miyaq.store.task import DONE
from miyaq.testing.inprocess import InProcessCluster
from miyaq.testing.ports import free_port
from miyaq.testing.scripted import ScriptedCoordinator
from test_http_not_holder import call


def _stop_and_empty(cluster, tmp_path, node_id: str = "n1") -> None:
    """Stop ``node_id`` (the ring still lists it: its old session has not
    expired) and remove its data dir, as a lost disk does."""
    cluster.stop_node(node_id)
    shutil.rmtree(os.path.join(str(tmp_path), node_id))


def _task_with_n1_second(cluster) -> str:
    while True:
        tid = cluster.task_led_by("n2", replicas=2)
        if cluster.holders(tid, 2) == ["n2", "n1"]:
            return tid


def _key_led_by(cluster, node_id: str) -> tuple[str, str]:
    """A key whose holders (replicas=2) are ``node_id`` first, then another
    node. Returns (key, the other holder)."""
    for i in range(10_000):
        key = f"k{i}"
        holders = cluster.holders("x", key=key, replicas=2)
        if holders[0] == node_id:
            return key, holders[1]
    raise AssertionError("no such key in 10,000")


def test_a_copy_stored_before_the_emptied_nodes_first_ring_view_does_not_run_on_silence(inproc, tmp_path):
    """Fault: n1's data dir is lost while it is down and the ring still
    lists it; it restarts empty, without a view of the ring yet. A task
    whose holders are n2 then n1 is submitted to n2, which replicates it to
    n1 (stored), runs and finishes it; n1 follows no stream yet and misses
    the end. n1 gets its ring just as its copy comes due, and its QUERYs
    and SYNCs are not answered for a while (links not up yet). Before the
    fix n1 did not reconcile (its log was empty: it started as a new node),
    its copy asked, heard silence and ran the task a second time (one extra
    run, /tmp/emptydir/test_measure.py S2). Now the copy is parked until
    the resyncs came, which bring the end, and it never runs."""
    cluster = inproc(3, replicas=2, data_dir=str(tmp_path), fsync="never")
    _stop_and_empty(cluster, tmp_path)
    cluster.script.auto_deliver = False       # the ring reaches n1 later
    back = cluster.start_node("n1")
    assert back.role.view.epoch == 0 and not back.engine.table.live

    tid = _task_with_n1_second(cluster)
    runner = cluster.worker("n2")
    cluster.submit_accepted("n2", tid, replicas=2)
    assert back.task(tid) is not None, "n1 stores its copy before it has a ring"
    cluster.wait_until(lambda: runner.runs(tid), what="the task to run on n2")
    runner.complete(tid)
    cluster.wait_until(lambda: cluster["n2"].state(tid) == DONE, what="the task done on n2")
    assert back.state(tid) != DONE, "n1 heard the end without a stream"

    late = cluster.worker("n1")
    queries = cluster.net.hold("QUERY", src="n1")
    syncs = cluster.net.hold("SYNC", src="n1")
    cluster.script.deliver("n1")
    cluster.wait_until(lambda: back.role.view.epoch == cluster.script.current.epoch, what="n1's first ring")
    cluster.advance(2 * cluster.settings["replica_offset"] + 1.5)
    cluster.settle(0.2)
    assert late.times(tid) == 0, "n1's copy ran on silence from peers it could not reach yet"
    assert back.role.standby.takeovers == 0
    assert back.node.core.gate.holds(RECONCILING), "the ring lists n1: it reconciles from its start"

    queries.release()
    syncs.release()
    cluster.wait_until(lambda: back.state(tid) == DONE, what="n1's copy to finish as on n2")
    cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n1's reconcile to end")
    cluster.advance(3 * cluster.settings["replica_offset"])
    cluster.settle(0.1)
    assert late.times(tid) == 0 and runner.times(tid) == 1
    assert not cluster.crashes()


def test_an_emptied_node_refuses_a_keyed_submit_until_it_reconciled(inproc, tmp_path):
    """Fault: task ``ida`` of key K (first holder n1) is stored on both its
    holders; n1's data dir is lost and n1 restarts empty while the ring
    lists it, its SYNCs unanswered for now. ``idb`` of K is submitted
    through n1. Before the fix n1 coordinated it: first holder of K, with
    no task of K in its table, it answered ``accepted`` (min_acks=1), and
    ``ida``, accepted to its producer first, ended cancelled on every holder
    without running (/tmp/emptydir/test_measure.py S3). Now n1 refuses
    ``unavailable`` and stores nothing; once it reconciled it holds ``ida``
    again, and the resend is answered ``duplicate`` of ``ida``."""
    cluster = inproc(3, replicas=2, min_acks=1, data_dir=str(tmp_path), fsync="never")
    key, other = _key_led_by(cluster, "n1")
    first = cluster.submit(other, "ida", key=key, countdown=3600)
    cluster.wait_until(lambda: first.result, what="ida answered")
    assert first.status == ACCEPTED, first.result
    cluster.wait_until(lambda: cluster["n1"].task("ida") is not None, what="ida's copy on n1")

    _stop_and_empty(cluster, tmp_path)
    syncs = cluster.net.hold("SYNC", src="n1")
    back = cluster.start_node("n1")
    cluster.wait_until(lambda: back.role.view.epoch == cluster.script.current.epoch, what="n1's ring")
    assert back.task("ida") is None, "n1 lost its copy of ida with its disk"

    second = cluster.submit("n1", "idb", key=key, countdown=3600)
    cluster.wait_until(lambda: second.result, what="idb answered")
    assert second.result[1] == REJECTED and second.error_code == "unavailable", second.result
    assert back.task("idb") is None and cluster[other].task("idb") is None, "a refusal stores nothing"
    assert back.node.core.gate.holds(RECONCILING)

    syncs.release()
    cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n1's reconcile to end")
    assert back.task("ida") is not None, "the resync brought ida's copy back"
    again = cluster.submit("n1", "idb", key=key, countdown=3600)
    cluster.wait_until(lambda: again.result, what="idb's resend answered")
    assert again.result == ["idb", DUPLICATE, "ida"], again.result
    assert cluster[other].state("ida") == "scheduled" and back.state("ida") == "scheduled"
    assert not cluster.crashes()


def test_a_node_without_a_data_dir_restarted_in_the_ring_gets_its_copies_back_before_it_dispatches(inproc):
    """A node with no data dir restarted while the ring lists it is the same
    case: it reconciles, its first resync from each other member brings
    back every task it is a holder of (none is left a copy short), and only
    then does it dispatch its first-holder copies -- once each."""
    cluster = inproc(3, replicas=2)
    subs = cluster.answered([cluster.submit(f"n{1 + i % 3}", f"d{i}", countdown=0.5, replicas=2) for i in range(30)])
    assert all(s.status == ACCEPTED for s in subs)
    mine = [s.task_id for s in subs if "n1" in cluster.holders(s.task_id, 2)]
    led = [t for t in mine if cluster.holders(t, 2)[0] == "n1"]
    assert led and len(mine) > len(led)

    cluster.stop_node("n1")
    syncs = cluster.net.hold("SYNC", src="n1")
    back = cluster.start_node("n1")
    worker = cluster.worker("n1")
    cluster.wait_until(lambda: back.role.view.epoch == cluster.script.current.epoch, what="n1's ring")
    cluster.advance(1.0)                      # the tasks come due; n1 still reconciles
    cluster.settle(0.1)
    assert back.started() == 0, "n1 dispatched before it reconciled"
    assert back.node.core.gate.holds(RECONCILING)

    syncs.release()
    cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n1's reconcile to end")
    held = [t for t in mine if back.task(t) is not None or back.tombstone(t) is not None]
    assert held == mine, f"copies n1 did not get back: {sorted(set(mine) - set(held))}"
    cluster.advance(3 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: all(worker.runs(t) for t in led if back.task(t) is not None
                                   and not back.task(t).standby), what="n1's first-holder copies to run")
    assert all(worker.times(t) <= 1 for t in mine)
    assert not cluster.crashes()


def test_a_node_new_to_the_ring_with_an_empty_data_dir_does_not_reconcile(inproc, tmp_path):
    """A node id the ring did not list when it started (a node added to a
    running cluster) has nothing on the others to reconcile with: it
    dispatches and coordinates as soon as it is in the ring, as before."""
    cluster = inproc(["n1", "n2", "n3", "n4"], ring=["n1", "n2", "n3"], replicas=2,
                     data_dir=str(tmp_path), fsync="never")
    new = cluster["n4"]
    assert not new.node.core.gate.holds(RECONCILING)
    cluster.publish(["n1", "n2", "n3", "n4"])
    assert not new.node.core.gate.holds(RECONCILING)
    tid = cluster.task_led_by("n4", replicas=2)
    worker = cluster.worker("n4")
    sub = cluster.submit("n4", tid, replicas=2)
    cluster.wait_until(lambda: sub.result, what="the submit")
    assert sub.status == ACCEPTED, sub.result
    cluster.wait_until(lambda: worker.runs(tid), what="the task to run on n4")
    assert not cluster.crashes()


def test_a_reconcile_does_not_time_out_while_the_restarted_node_waits_to_register(inproc, tmp_path, monkeypatch):
    """Fault: n1, first holder of key K, restarts from its log while its old
    ZooKeeper session is still registered: registering waits that session
    out (up to twice the session timeout and 2 s, 22 s by default), here
    longer than ``reconcile_timeout``, with no ring and no peer's state
    meanwhile. Task ``ida`` of K was stored through K's other holder while
    n1 was down, and n1's SYNCs go unanswered for now. Before the fix the
    reconcile's timeout ran from the node's start: it ended while n1 was
    still registering, having waited for nothing, and once registered n1
    coordinated ``idb`` of K (accepted: a second task of the key). Now the
    timeout runs from the registration: n1 still reconciles and refuses
    ``idb`` ``unavailable``."""
    cluster = inproc(3, replicas=2, min_acks=1, data_dir=str(tmp_path), fsync="never")
    key, other = _key_led_by(cluster, "n1")
    cluster.submit_accepted("n1", cluster.task_led_by("n1", replicas=2), countdown=3600)
    cluster.stop_node("n1")
    cluster.submit_accepted(other, "ida", key=key, countdown=3600)

    registering = ScriptedCoordinator.start
    timeout = cluster.settings["reconcile_timeout"]

    def slow_registration(coordinator: ScriptedCoordinator) -> None:
        waited = 0.0
        while waited <= timeout + 1:        # in steps the tickers see: no freeze
            clock.advance(1.0)
            waited += 1.0
            green.sleep(0.1)
        registering(coordinator)

    syncs = cluster.net.hold("SYNC", src="n1")
    monkeypatch.setattr(ScriptedCoordinator, "start", slow_registration)
    back = cluster.start_node("n1")
    monkeypatch.setattr(ScriptedCoordinator, "start", registering)
    cluster.wait_until(lambda: back.role.view.epoch == cluster.script.current.epoch, what="n1's ring")
    second = cluster.submit("n1", "idb", key=key, countdown=3600)
    cluster.wait_until(lambda: second.result, what="idb answered")
    assert second.result[1] == REJECTED and second.error_code == "unavailable", second.result
    assert back.node.core.gate.holds(RECONCILING), "the reconcile timed out before n1 registered"

    syncs.release()
    cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n1's reconcile to end")
    assert cluster[other].state("ida") == "scheduled" and back.state("ida") == "scheduled"
    assert not cluster.crashes()


def test_an_emptied_node_the_ring_dropped_before_it_registered_joins_as_a_new_node_and_runs_nothing_twice(
        inproc, tmp_path, monkeypatch):
    """The other path (a chaos run: 2 of 5 wipes restarted 0.3 s after the
    kill took it): n1 restarts with an empty data dir and waits to
    register while its old session lives; its peer link is up, and n2,
    whose ring still lists it, replicates a task to it (holders n2 then
    n1). The old session expires and the ring drops n1 before n1
    registers: it finds itself unlisted and joins as a new node, without a
    reconcile. Meanwhile n2 runs and finishes the task. n1's first ring
    does not list it, so it hands its copy to the task's holders there,
    and their answer says the task finished: n1's copy ends as on n2 --
    before n1 is back in the ring and its QUERYs and SYNCs, held here,
    could matter -- and the task runs once."""
    cluster = inproc(3, replicas=2, data_dir=str(tmp_path), fsync="never")
    _stop_and_empty(cluster, tmp_path)
    tid = _task_with_n1_second(cluster)
    runner = cluster.worker("n2")
    registering = ScriptedCoordinator.start

    def registration_after_the_ring_dropped_it(coordinator: ScriptedCoordinator) -> None:
        cluster.submit_accepted("n2", tid, replicas=2)
        cluster.publish(["n2", "n3"])             # n1's old session expired: the leader drops it
        cluster.wait_until(lambda: runner.runs(tid), what="the task to run on n2")
        runner.complete(tid)
        cluster.wait_until(lambda: cluster["n2"].state(tid) == DONE, what="the task done on n2")
        registering(coordinator)

    monkeypatch.setattr(ScriptedCoordinator, "start", registration_after_the_ring_dropped_it)
    back = cluster.start_node("n1")
    monkeypatch.setattr(ScriptedCoordinator, "start", registering)
    assert back.role.coordinator.listed_at_start() is False
    assert not back.node.core.gate.holds(RECONCILING), "a node the ring does not list joins as a new one"
    assert back.task(tid) is not None, "n1 stored its copy before it registered"

    late = cluster.worker("n1")
    cluster.wait_until(lambda: back.state(tid) == DONE, what="n1's copy to end as on n2 (its handoff's answer)")
    queries = cluster.net.hold("QUERY", src="n1")
    syncs = cluster.net.hold("SYNC", src="n1")
    cluster.script.publish(["n1", "n2", "n3"])    # n1 registered: the leader adds it back
    cluster.wait_until(lambda: back.role.view.epoch == cluster.script.current.epoch, what="n1 back in the ring")
    cluster.advance(cluster.settings["reconcile_timeout"])
    cluster.settle(0.2)
    queries.release()
    syncs.release()
    cluster.settle(0.1)
    assert late.times(tid) == 0 and runner.times(tid) == 1
    assert not cluster.crashes()


def _start_with_gateway(cluster: InProcessCluster, node_id: str, port: int):
    """Start ``node_id`` with its gateway on ``port``, registered with its URL."""
    handle = cluster.start_node(node_id, http_port=port)
    member = cluster.script.registered[node_id]
    cluster.script.registered[node_id] = replace(member, http=f"http://127.0.0.1:{port}")
    return handle


def test_a_holder_restarted_empty_answers_unavailable_not_no_task_until_it_reconciled():
    """Fault: n1, a holder of a delayed task, restarts with no data (here:
    no data dir) while the ring lists it, and its SYNCs go unanswered for
    now. Asked for the task's status or result, it answered ``404 no
    task`` -- from a holder, "the cluster has no such task", while the task
    was scheduled on its other holder and n1 itself would have it back
    with its resyncs (/tmp/emptydir/test_measure_http.py). Now, while it
    reconciles, it answers ``503 unavailable`` naming the other holders'
    URLs (over ZeroMQ TASK and RESULT too: the Python client asks the
    other nodes); once reconciled, the task."""
    cluster = InProcessCluster(3, replicas=2)
    ports = {node_id: free_port() for node_id in cluster.ids}
    try:
        for node_id in cluster.ids:
            _start_with_gateway(cluster, node_id, ports[node_id])
        cluster.publish(cluster.ids)
        tid = cluster.task_led_by("n1", replicas=2)
        other = cluster.holders(tid, 2)[1]
        cluster.submit_accepted(other, tid, countdown=600, replicas=2)
        cluster.wait_until(lambda: cluster["n1"].task(tid) is not None, what="n1's copy")

        cluster.stop_node("n1")
        syncs = cluster.net.hold("SYNC", src="n1")
        back = _start_with_gateway(cluster, "n1", ports["n1"])
        cluster.wait_until(lambda: back.role.view.epoch == cluster.script.current.epoch, what="n1's ring")
        assert back.task(tid) is None
        for path in (f"/tasks/{tid}", f"/tasks/{tid}/result"):
            status, body = call(ports["n1"], "GET", path)
            assert status == 503 and body["error"]["code"] == "unavailable", (path, status, body)
            assert body["error"]["holders"] == [f"http://127.0.0.1:{ports[other]}"], body
        assert back.node.core.gate.holds(RECONCILING)

        syncs.release()
        cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n1's reconcile to end")
        status, body = call(ports["n1"], "GET", f"/tasks/{tid}")
        assert status == 200 and body["task"]["state"] == "scheduled", body
        unknown = cluster.task_led_by("n1", replicas=2)
        status, body = call(ports["n1"], "GET", f"/tasks/{unknown}")
        assert (status, body) == (404, {"error": {"code": "not_found", "message": f"no task {unknown}"}})
        assert not cluster.crashes()
    finally:
        cluster.close()
