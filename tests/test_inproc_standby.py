"""Standby copies, in-process (miyaq.testing.inprocess): before a copy that
is not the runner's runs, it asks the other holders (QUERY), and only
silence lets it run. Each test sets up its fault on the in-memory network."""
from __future__ import annotations

from miyaq.cluster.holder_events import STARTED_ELSEWHERE
from miyaq.store.task import DONE, SCHEDULED


def test_lost_started_event_standby_asks_and_waits_for_the_runner(inproc):
    """Fault: the STARTED event of a running task is lost on its way to every
    other holder (and the runner's heartbeats with it, so no gap shows). Each
    standby copy's timer fires at its offset, it asks the runner (QUERY),
    hears "running until lease end" and waits past the lease: it never runs
    while the runner runs. The task ends done on every holder, run once."""
    cluster = inproc(3)
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    runner, standbys = holders[0], holders[1:]
    cluster.net.drop("EVENTS", src=runner, event="S")
    cluster.net.drop("HEARTBEAT", src=runner)
    workers = {h: cluster.worker(h) for h in holders}

    sub = cluster.submit(standbys[0], tid)
    cluster.wait_until(lambda: workers[runner].runs(tid), what="the runner to start the task")
    lease_end = cluster[runner].task(tid).lease_end
    for h in standbys:
        cluster.wait_until(lambda h=h: cluster.net.messages("ANSWER", src=runner, dst=h, answering="QUERY", task=tid),
                           what=f"{h}'s standby copy to ask the runner")
    cluster.settle(0.1)
    assert sub.status == "accepted"
    assert cluster.net.messages("EVENTS", src=runner, event="S")[0].fate == "dropped"
    for h in standbys:
        copy = cluster[h].task(tid)
        assert copy.state == SCHEDULED and copy.standby
        assert cluster[h].due_at(tid) >= lease_end, f"{h}'s copy would run before the runner's lease ends"
        assert workers[h].times(tid) == 0
        assert cluster[h].role.standby.deferrals >= 1 and cluster[h].role.standby.takeovers == 0

    workers[runner].complete(tid)
    cluster.wait_until(lambda: all(cluster[h].state(tid) == DONE for h in holders), what="done on every holder")
    assert [workers[h].times(tid) for h in holders] == [1, 0, 0]
    assert all(cluster[h].role.events.duplicates == 0 for h in holders)
    assert cluster[runner].state(tid) == DONE and not cluster.crashes()


def test_at_most_once_copy_told_by_query_that_the_task_started_never_runs(inproc):
    """Fault: the STARTED event of an at-most-once task is lost (heartbeats
    too), and its runner then dies while the task runs. The standby copy's
    QUERY hears that the task is running: for an at-most-once task that is
    the same news as the lost event, so the copy ends "started-elsewhere" at
    once -- it does not wait for the lease and then run the task a second
    time once the runner went silent."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    runner, standby = cluster.holders(tid, 2)
    cluster.net.drop("EVENTS", src=runner, event="S")
    cluster.net.drop("HEARTBEAT", src=runner)
    workers = {h: cluster.worker(h) for h in (runner, standby)}
    cluster.submit(runner, tid, at_most_once=True)
    cluster.wait_until(lambda: workers[runner].runs(tid), what="the runner to start the task")
    cluster.wait_until(lambda: cluster.net.messages("ANSWER", src=runner, dst=standby, answering="QUERY", task=tid),
                       what="the standby copy to ask the runner")
    cluster.stop_node(runner)
    cluster.advance(cluster[standby].config.default_timeout + 3 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: cluster[standby].state(tid) == STARTED_ELSEWHERE, what="the copy dropped")
    assert workers[standby].times(tid) == 0 and cluster[standby].role.standby.takeovers == 0


def test_a_copy_reranked_by_a_ring_change_asks_the_old_runner_too(inproc):
    """Fault: a ring change (the runner's weight drops) moves a running task
    off its runner, which has not heard of the new ring yet and goes on
    running it; the runner's STARTED event and heartbeats are lost. The
    other old holder, re-ranked beside a node that does not know the task,
    finds its copy due. Asking only its holders in the new ring it would
    hear "unknown" and run the task a second time (a chaos run's unexplained
    duplicate at a ring change); it asks every live member of the ring,
    hears from the old runner that the task runs, and waits."""
    ring = ["n1", "n2", "n3"]
    cluster = inproc(3, ring=ring, replicas=2)
    while True:
        tid = cluster.task_id()
        runner, other = cluster.holders(tid, 2)
        new_view = cluster.script.view(ring, weights={runner: 0.05})
        new = [m.node_id for m in new_view.holders(tid, 2)]
        if runner not in new and other in new:
            break
    third = next(n for n in ring if n not in (runner, other))
    cluster.net.drop("EVENTS", src=runner, event="S")
    cluster.net.drop("HEARTBEAT", src=runner)
    workers = {n: cluster.worker(n) for n in ring}
    cluster.submit(runner, tid, timeout=60)
    cluster.wait_until(lambda: workers[runner].runs(tid), what="the runner to start the task")

    epoch = cluster.publish(ring, weights={runner: 0.05}, withhold=[runner])
    cluster.wait_until(lambda: cluster[other].role.view.epoch == epoch, what=f"{other} on the new ring")
    cluster.advance(4.0)      # eight offsets: the re-ranked copy comes due and asks, more than once
    cluster.wait_until(lambda: cluster.net.messages("ANSWER", src=runner, dst=other, answering="QUERY", task=tid),
                       what=f"{other}'s copy to ask the old runner")
    cluster.settle(0.1)
    assert workers[runner].runs(tid)
    assert workers[other].times(tid) == 0 and workers[third].times(tid) == 0, cluster.describe([tid])
    assert cluster[other].role.standby.takeovers == 0 and not cluster.crashes()
