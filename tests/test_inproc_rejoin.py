"""A holder that comes back, in-process (miyaq.testing.inprocess): a node
that was cut off, or stopped, while the ring went on without it returns
holding copies placed by an older ring. Its stale copies are reconciled with
the other holders before they can run again, and a ring older than the one
it holds is ignored."""
from __future__ import annotations

from miyaq.store.task import DONE

ALL = ["n1", "n2", "n3"]
REST = ["n1", "n2"]



def test_holder_cut_off_comes_back_with_an_old_epoch_and_does_not_run_a_finished_task(inproc):
    """Fault: the first holder of a task is cut off from the network and its
    session expires; the ring goes on without it (epoch 2) and the task runs
    and finishes on another holder. The node comes back still holding epoch 1
    and its ready copy. It is given the new ring (epoch 3), then the old ring
    of epoch 2 late, which it ignores. Its copy is finished as the others
    finished it; it does not run the task again."""
    cluster = inproc(3)
    tid = cluster.task_led_by("n3")
    cluster.submit_accepted("n1", tid, countdown=1.0)

    cluster.net.cut("n3")
    cluster.script.expire("n3")
    old = cluster.publish(REST, to=REST)
    cluster.wait_until(lambda: all(cluster[n].role.view.epoch == old for n in REST), what="the ring without n3")
    workers = {n: cluster.worker(n) for n in REST}
    cluster.advance(1.0 + 2 * cluster.settings["replica_offset"])
    runner = cluster.wait_until(lambda: next((n for n, w in workers.items() if w.runs(tid)), None),
                                what="another holder to run the task")
    workers[runner].complete(tid)
    cluster.wait_until(lambda: all(cluster[n].state(tid) == DONE for n in REST), what="done without n3")
    assert cluster["n3"].role.view.epoch == 1 and cluster["n3"].state(tid) != DONE

    cluster.script.restore("n3")
    cluster.net.heal("n3")
    new = cluster.publish(ALL, to=ALL)
    cluster.script.deliver("n3", cluster.script.published[old - 1])      # the old ring, late
    cluster.wait_until(lambda: cluster.settled(new), what=f"every node on epoch {new}")
    assert cluster["n3"].role.view.epoch == new
    late = cluster.worker("n3")
    cluster.wait_until(lambda: cluster["n3"].state(tid) == DONE, what="n3's stale copy finished")
    cluster.advance(3 * cluster.settings["replica_offset"])
    assert late.times(tid) == 0 and sum(w.times(tid) for w in workers.values()) == 1
    assert not cluster.crashes()


def test_holder_restarted_from_its_log_after_the_ring_moved_on(inproc, tmp_path):
    """Fault: a holder stops while the ring goes on without it; a task it
    held finishes elsewhere and a new task is submitted. It restarts from its
    log (copies of epoch 1) into a ring of epoch 3: it holds dispatching
    until it has heard from every other holder, finishes the stale copy,
    gets its copy of the new task by handoff, and runs nothing twice."""
    cluster = inproc(3, data_dir=str(tmp_path), fsync="never")
    tid = cluster.task_led_by("n3")
    cluster.submit_accepted("n1", tid, countdown=1.0)

    cluster.stop_node("n3")
    cluster.publish(REST)
    workers = {n: cluster.worker(n) for n in REST}
    cluster.advance(1.0 + 2 * cluster.settings["replica_offset"])
    runner = cluster.wait_until(lambda: next((n for n, w in workers.items() if w.runs(tid)), None),
                                what="another holder to run the task")
    workers[runner].complete(tid)
    cluster.wait_until(lambda: all(cluster[n].state(tid) == DONE for n in REST), what="done without n3")
    fresh = cluster.submit_accepted("n1", countdown=60)

    back = cluster.start_node("n3")
    assert back.task(tid) is not None and back.task(tid).state != DONE      # replayed from its log
    late = cluster.worker("n3")
    epoch = cluster.publish(ALL)
    cluster.wait_until(lambda: back.state(tid) == DONE, what="n3's stale copy finished")
    cluster.wait_until(lambda: back.task(fresh.task_id) is not None, what="n3's copy of the new task")
    cluster.advance(3 * cluster.settings["replica_offset"])
    assert cluster["n3"].role.view.epoch == epoch
    assert late.times(tid) == 0 and sum(w.times(tid) for w in workers.values()) == 1
    assert not cluster.crashes()


def test_older_ring_shown_right_after_a_newer_one_is_ignored(inproc):
    """Fault: a node is shown a new ring and, before its view loop has run,
    an older one (a coordinator that delivers out of order). It must end on
    the newer ring -- the older one neither replaces it while it waits nor
    is applied later -- and so must a node shown the older ring after it
    applied the newer."""
    cluster = inproc(3)
    first = cluster.script.current
    epoch = cluster.publish(ALL, weights={"n1": 2.0}, withhold=["n2", "n3"])
    cluster.script.deliver("n2")
    cluster.script.deliver("n2", first)           # before n2's view loop ran
    cluster.script.deliver("n3")
    cluster.wait_until(lambda: cluster["n3"].role.view.epoch == epoch, what="n3 on the new ring")
    cluster.script.deliver("n3", first)           # after n3 applied the new ring
    cluster.wait_until(lambda: cluster.settled(epoch), what=f"every node on epoch {epoch}")
    cluster.settle(0.1)
    assert [cluster[n].role.view.epoch for n in ALL] == [epoch] * 3
    assert cluster["n2"].role.view.ring == cluster["n1"].role.view.ring


def test_a_node_restarted_into_the_ring_is_linked_to_anew(inproc):
    """Fault (chaos --rolling: submits stalled for about two seconds after
    a node came back): a node is stopped, the ring goes on without it, and
    it starts again into the ring. The other nodes' peer links to it lost
    their connection when it went down and back off (up to 2 s) before
    retrying; every REPLICATE to it fails meanwhile. Each other node makes
    its link to it anew as soon as the ring holds it again (once, and not
    for a node that never left)."""
    cluster = inproc(3)
    cluster.stop_node("n3")
    cluster.publish(REST)
    cluster.start_node("n3")
    cluster.publish(ALL)
    links = {n: cluster[n].role.peer for n in REST}
    assert all(link.relinked == {"n3": 1} for link in links.values()), {n: link.relinked for n, link in links.items()}
    assert not cluster.crashes()
