"""Replication streams and resync, in-process (miyaq.testing.inprocess): a
lost stream message is found by the sequence numbers or the heartbeats, and
repaired by a resync (SYNC) from its source."""
from __future__ import annotations

from miyaq.runtime import wall
from miyaq.store.task import DONE, RUNNING


def _started_everywhere(cluster, tid, holders, runner):
    cluster.wait_until(lambda: all(cluster[h].role.subscriber.caught_up(runner) for h in holders if h != runner)
                       and cluster[runner].state(tid) == RUNNING, what="the task running, streams caught up")


def test_lost_finish_event_is_repaired_by_the_heartbeat_gap(inproc):
    """Fault: the F (finished) event from the runner to one holder is lost. The
    runner's next heartbeat says a message is missing; the holder asks for a
    resync and finishes its copy from the runner's tombstones -- without
    waiting for its standby copy to ask (no QUERY) and without running it."""
    cluster = inproc(3)
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    runner, victim = holders[0], holders[1]
    worker = cluster.worker(runner)
    cluster.submit(runner, tid)
    _started_everywhere(cluster, tid, holders, runner)
    sub = cluster[victim].role.subscriber
    gaps, resyncs = sub.gaps, sub.resyncs
    lost = cluster.net.drop("EVENTS", src=runner, dst=victim, event="F", count=1)

    worker.complete(tid)
    cluster.wait_until(lambda: cluster[holders[2]].state(tid) == DONE, what="the other holder to hear F")
    assert lost.hits == 1 and cluster[victim].state(tid) != DONE
    cluster.advance(1.0)     # the next heartbeat
    cluster.wait_until(lambda: cluster[victim].state(tid) == DONE, what="the resync to finish the copy")
    assert sub.gaps == gaps + 1 and sub.resyncs == resyncs + 1
    assert cluster.net.messages("SYNC", src=victim, dst=runner)[-1].fate == "delivered"
    assert not cluster.net.messages("QUERY", src=victim, task=tid)
    assert worker.times(tid) == 1 and not cluster.crashes()


def test_gap_in_sequence_numbers_asks_for_a_resync_at_once(inproc):
    """Fault: one stream message (the STARTED event) is lost; the next event
    from the same source arrives with a sequence number one too far. The
    receiver applies it and asks for a resync at once; the resync tells it
    the task runs there, so its standby copy waits past the lease."""
    cluster = inproc(3)
    tid, other = cluster.task_id(), None
    holders = cluster.holders(tid)
    runner, victim = holders[0], holders[1]
    # A second task with the same runner and victim, to produce the next event.
    while other is None:
        candidate = cluster.task_id()
        if cluster.holders(candidate)[:2] == [runner, victim]:
            other = candidate
    sub = cluster[victim].role.subscriber
    cluster.submit(runner, other, countdown=30)
    cluster.wait_until(lambda: cluster[victim].task(other) is not None, what="the second copy on the victim")
    gaps, resyncs = sub.gaps, sub.resyncs
    lost = cluster.net.drop("EVENTS", src=runner, dst=victim, event="S", task=tid, count=1)
    worker = cluster.worker(runner)
    accepted = cluster.submit(runner, tid)
    cluster.wait_until(lambda: worker.runs(tid) and lost.hits and accepted.status, what="the task to start, its S lost")
    cluster.net.hold("SYNC", src=victim)   # see the state between the gap and the resync
    assert cluster[victim].due_at(tid) < cluster[runner].task(tid).lease_end

    assert cluster[runner].engine.cancel(other, wall())[0]
    cluster[runner].wake()
    cluster.wait_until(lambda: sub.gaps == gaps + 1, what="the gap to be seen")
    assert cluster[victim].state(other) == "cancelled"     # the event after the gap is applied
    cluster.net.clear()
    cluster.wait_until(lambda: sub.resyncs == resyncs + 1 and sub.caught_up(runner), what="the resync")
    cluster.wait_until(lambda: cluster[victim].due_at(tid) >= cluster[runner].task(tid).lease_end,
                       what="the victim's copy pushed past the runner's lease")
    worker.complete(tid)
    cluster.wait_until(lambda: all(cluster[h].state(tid) == DONE for h in holders), what="done everywhere")
    assert worker.times(tid) == 1 and not cluster.crashes()


def test_a_resync_tells_a_copy_that_missed_the_started_event_whom_the_attempt_was_leased_to(inproc):
    """Fault: the STARTED event to the other holder is lost, then its
    runner's node dies while the worker runs the task. The next heartbeat
    showed the gap and the resync (SYNC) brought the runner's record, which
    now names the lessee: the worker, reporting its DONE to the other holder
    as a worker whose node was lost does, is taken there. Before, the record
    had no lessee, the DONE was refused (not leased) and the standby copy
    ran the task a second time after the lease."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    runner, victim = cluster.holders(tid, 2)
    worker = cluster.worker(runner)
    cluster.worker(victim)
    sub = cluster[victim].role.subscriber
    resyncs = sub.resyncs
    cluster.net.drop("EVENTS", src=runner, dst=victim, event="S", task=tid, count=1)
    cluster.submit(runner, tid, timeout=2.0)
    cluster.wait_until(lambda: worker.runs(tid), what="the runner to start the task")
    cluster.advance(1.0)     # the next heartbeat shows the gap
    cluster.wait_until(lambda: sub.resyncs > resyncs and sub.caught_up(runner), what="the resync")
    attempt = worker.delivered[-1][1]
    assert cluster[victim].task(tid).lessees == [(attempt, worker.principal)]
    cluster.stop_node(runner)

    assert worker.complete_at(cluster[victim].node, tid, attempt)
    assert cluster[victim].state(tid) == DONE
    assert cluster[victim].node.core.engine.not_leased == 0 and not cluster.crashes()
