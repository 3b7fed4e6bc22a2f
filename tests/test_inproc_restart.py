"""A holder restarted from its log or resumed from a freeze, in-process
(miyaq.testing.inprocess): the copies that came due while it was away are
standby copies until the other holders answered it. Its reconcile may end on its
timeout rather than on their answers; then a copy still asks (QUERY)
before it runs, and only silence lets it run."""
from __future__ import annotations

import logging

import gevent

from miyaq.cluster import standby as standby_module
from miyaq.constants import FROZEN_RESYNC_TIMEOUT, RESYNC_TIMEOUT, STALL
from miyaq.core.gate import RECONCILING
from miyaq.runtime import fairness
from miyaq.runtime import clock, monotonic, wall
from miyaq.store.task import DONE


def test_restarted_holder_whose_reconcile_times_out_asks_before_it_runs_a_restored_copy(inproc, tmp_path):
    """Fault: the first holder of a task is stopped before the task is due,
    the other holder runs and finishes it meanwhile (its standby copy hears
    silence), and the first holder restarts from its log while every resync
    it asks for (SYNC) is lost, so its reconcile ends on its timeout, not on
    the others' state. Its restored copy -- ready in the log -- must not be
    dispatched at that timeout: it asks the other holder, hears "done", and
    is finished without running a second time."""
    cluster = inproc(2, replicas=2, data_dir=str(tmp_path), fsync="always")
    tid = cluster.task_led_by("n2")
    cluster.submit_accepted("n1", tid, countdown=0.5)

    cluster.stop_node("n2")
    survivor = cluster.worker("n1")
    cluster.advance(0.5 + 2 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: survivor.runs(tid), what="n1's standby copy to run the task")
    survivor.complete(tid)
    cluster.wait_until(lambda: cluster["n1"].state(tid) == DONE, what="the task done on n1")

    lost = cluster.net.drop("SYNC", src="n2")
    back = cluster.start_node("n2")
    assert back.task(tid) is not None and back.task(tid).state != DONE      # replayed from its log
    late = cluster.worker("n2")
    cluster.advance(cluster.settings["reconcile_timeout"] + 0.5)
    cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n2's reconcile to time out")
    assert lost.hits >= 1
    cluster.wait_until(lambda: back.state(tid) == DONE or late.runs(tid), what="n2's restored copy to end")
    assert late.times(tid) == 0, "the restored copy ran again after the reconcile timed out"
    assert back.state(tid) == DONE
    assert cluster.net.messages("QUERY", src="n2", dst="n1", task=tid), "the restored copy ran without asking"
    cluster.advance(3 * cluster.settings["replica_offset"])
    assert late.times(tid) == 0 and survivor.times(tid) == 1
    assert back.role.standby.takeovers == 0
    assert not cluster.crashes()


def test_restarted_holder_runs_a_restored_copy_when_every_other_holder_is_silent(inproc, tmp_path):
    """Fault: both holders of a task stop before it is due; only its first
    holder restarts (from its log), after the task came due. Its reconcile
    times out (the other holder is not running), and the restored copy asks
    it and hears silence: a standby copy that finds every other holder
    silent takes over, so the restarted node still runs, once, what it holds."""
    cluster = inproc(2, replicas=2, data_dir=str(tmp_path), fsync="always")
    tid = cluster.task_led_by("n2")
    cluster.submit_accepted("n1", tid, countdown=0.5)
    cluster.stop_node("n2")
    cluster.stop_node("n1")
    cluster.advance(1.0)

    back = cluster.start_node("n2")
    copy = back.task(tid)
    assert copy is not None and copy.standby, "a restored copy that came due must come back as a standby copy"
    worker = cluster.worker("n2")
    cluster.advance(cluster.settings["reconcile_timeout"] + 2 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: worker.runs(tid), what="the restored copy to run on n2")
    assert back.role.standby.takeovers == 1
    assert worker.times(tid) == 1 and not cluster.crashes()


def test_holder_resumed_from_a_freeze_asks_before_it_runs_a_copy_that_came_due(inproc):
    """Fault: the first holder of a task is frozen (SIGSTOP, a VM pause:
    here its links are cut and it dispatches nothing) while the task comes
    due; the other holder hears silence, takes over and runs it. The frozen
    node resumes, and every resync it asks for (SYNC) is lost, so it learns
    nothing before its reconcile times out. Its ready copy must not be
    dispatched then: it became a standby copy at the freeze, asks, hears the
    task running, and waits; the task runs once."""
    cluster = inproc(2, replicas=2, default_timeout=60.0)     # a lease that outlasts the reconcile
    tid = cluster.task_led_by("n2")
    cluster.submit_accepted("n1", tid, countdown=0.5)

    cluster.net.cut("n2")
    survivor = cluster.worker("n1")
    cluster.advance(0.5 + 2 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: survivor.runs(tid), what="n1's standby copy to run the task")
    frozen = cluster["n2"]
    assert frozen.state(tid) == "ready"

    cluster.net.drop("SYNC", src="n2")
    cluster.net.heal("n2")
    frozen.role.stalled(8.0)            # what its clockwork calls when it wakes from a freeze
    late = cluster.worker("n2")
    cluster.advance(FROZEN_RESYNC_TIMEOUT + 1.0)
    cluster.wait_until(lambda: not frozen.node.core.gate.holds(RECONCILING), what="n2's reconcile to time out")
    cluster.wait_until(lambda: late.runs(tid) or cluster.net.messages("ANSWER", src="n1", dst="n2",
                                                                        answering="QUERY", task=tid),
                       what="n2's copy to ask n1")
    cluster.settle(0.1)
    assert late.times(tid) == 0, "the frozen node ran the task again after its reconcile timed out"
    survivor.complete(tid)
    cluster.wait_until(lambda: frozen.state(tid) == DONE, what="n2's copy finished as n1 finished it")
    assert late.times(tid) == 0 and survivor.times(tid) == 1 and not cluster.crashes()


def test_a_copy_that_arrives_just_after_a_freeze_asks_before_it_runs(inproc):
    """Fault (seen in a chaos CI run): a REPLICATE waited in a frozen node's
    socket while the client resent the task elsewhere and another holder ran
    it. Read just after the freeze, it must not become a copy that runs
    without asking, even as the rank-0 holder: it is a standby copy."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    first, second = cluster.holders(tid, 2)
    cluster.settle(0.3)
    cluster[first].role.stalled(4.0)          # what its clockwork calls when it wakes from a freeze
    sub = cluster.submit(second, tid)
    cluster.wait_until(lambda: cluster[first].task(tid) is not None, what="the copy on the first holder")
    assert cluster[first].task(tid).rank == 0 and cluster[first].task(tid).standby
    cluster.wait_until(lambda: sub.status, what="the submit's answer")


def test_a_holder_whose_session_ended_does_not_take_over_a_standby_copy(inproc):
    """Fault (seen in a chaos CI run): a holder was frozen past its ZooKeeper
    session's timeout while its copy came due. Resumed with its old view of
    the ring, its copy asked the other holder, whose copy was a standby with
    a larger node id: by the tie-break between standbys the resumed node
    would run it -- while the ring had gone on without it and the other
    holder ran it too. A node whose session ended takes over nothing until
    it has a session again: its reconcile does not end while the
    coordinator cannot confirm its ring, so the copy does not even ask."""
    cluster = inproc(2, replicas=2, replica_offset=5.0, default_timeout=60.0)
    tid = cluster.task_led_by("n1")
    cluster.submit_accepted("n2", tid, countdown=0.5)
    resumed = cluster["n1"]
    cluster.net.cut("n1")
    cluster.script.expire("n1")
    cluster.advance(1.0)                       # n1's copy comes due; n2's waits an offset more
    cluster.net.heal("n1")
    base = resumed.role.resync.completed
    resumed.role.stalled(4.0)                  # what its clockwork calls when it wakes from a freeze
    late = cluster.worker("n1")
    cluster.wait_until(lambda: resumed.role.resync.completed > base, what="n1's resync answered")
    cluster.settle(0.2)
    assert resumed.node.core.gate.holds(RECONCILING), "reconciled without a session"
    assert late.times(tid) == 0, "a node without a session ran a copy on its old view of the ring"
    assert resumed.task(tid).standby and cluster["n2"].task(tid).standby
    other = cluster.worker("n2")
    cluster.script.restore("n1")
    cluster.advance(2 * 5.0 + 1.0)
    cluster.wait_until(lambda: late.times(tid) + other.times(tid) >= 1, what="the task to run once the session is back")
    cluster.settle(0.2)
    assert late.times(tid) + other.times(tid) == 1 and not cluster.crashes()


def test_a_node_resumed_from_a_freeze_waits_for_its_ring_to_be_confirmed(inproc):
    """Fault: a node is frozen past its ZooKeeper session's timeout; the ring
    goes on without it, and it resumes before it has noticed (its session's
    end and the new ring are not delivered yet). Its resyncs come back at
    once, but it must not end its reconcile -- and let its copies that came
    due run as the rank it no longer has -- until the coordinator confirms
    its ring; here only once the new ring reaches it. (A chaos run saw such
    a node finish its resync 60 ms after the freeze and run a task the new
    holders had just started.)"""
    cluster = inproc(3, replicas=2, default_timeout=60.0)
    frozen = cluster["n3"]
    cluster.net.cut("n3")
    epoch = cluster.publish(["n1", "n2"], withhold=["n3"])     # its session expired: the ring goes on
    cluster.wait_until(lambda: all(cluster[n].role.view.epoch == epoch for n in ("n1", "n2")),
                       what="n1 and n2 on the new ring")
    cluster.net.heal("n3")

    base = frozen.role.resync.completed
    frozen.role.stalled(8.0)          # what its clockwork calls when it wakes from a freeze
    cluster.wait_until(lambda: frozen.role.resync.completed >= base + 2, what="n3's resyncs answered")
    cluster.settle(0.3)
    assert frozen.node.core.gate.holds(RECONCILING), "reconciled on a ring ZooKeeper no longer has"
    assert frozen.role.view.epoch < epoch

    cluster.script.deliver("n3")      # it notices: the newest ring reaches it, and is confirmed
    cluster.wait_until(lambda: not frozen.node.core.gate.holds(RECONCILING), what="n3's reconcile to end")
    assert frozen.role.view.epoch == epoch and not cluster.crashes()


def test_a_resync_begun_before_a_freeze_does_not_count_for_the_reconcile_after_it(inproc):
    """Fault: a node resumes from a freeze while a resync it asked before the
    freeze (from n2) is still under way; after the freeze it asks every peer
    again. n2 answers both resyncs; n3's answer is lost. The resync asked
    before the freeze says nothing of what happened during it: the
    reconcile (dispatching held) goes on until n3's state is fetched, n3 is
    asked again when its resync fails, and the reconcile ends on that
    answer, before its timeout. Before, the reconcile counted completed
    resyncs: n2's two answers stood for both peers, and it ended the moment
    n3's resync failed, without n3's state."""
    cluster = inproc(3, replicas=2, default_timeout=60.0)
    resumed = cluster["n1"]
    cluster.settle(0.3)
    sub = resumed.role.subscriber
    before = cluster.net.hold("ANSWER", src="n2", dst="n1", answering="SYNC")
    sub._ask_resync("n2", "test: a gap before the freeze")
    cluster.wait_until(lambda: before.held, what="n2's answer to the resync asked before the freeze (held)")
    before.remove()                     # what it holds waits for release(); later answers pass
    lost = cluster.net.drop("ANSWER", src="n3", dst="n1", answering="SYNC", count=1)

    done = resumed.role.resync.completed
    asked = len(cluster.net.messages("SYNC", src="n1", dst="n3"))
    resumed.role.stalled(8.0)           # what its clockwork calls when it wakes from a freeze
    cluster.wait_until(lambda: lost.hits == 1, what="n3's answer to the resync after the freeze (lost)")
    cluster.wait_until(lambda: resumed.role.resync.completed == done + 1, what="n2's answer after the freeze")
    before.release()
    cluster.wait_until(lambda: resumed.role.resync.completed == done + 2, what="n2's answer from before it")
    cluster.settle(0.3)
    assert resumed.node.core.gate.holds(RECONCILING), "reconciled while n3's resync was under way"

    cluster.advance(RESYNC_TIMEOUT + 0.5)      # n3's resync fails; the reconcile's timeout is further
    cluster.wait_until(lambda: not resumed.node.core.gate.holds(RECONCILING), what="the reconcile to end")
    answers = cluster.net.messages("ANSWER", src="n3", dst="n1", answering="SYNC")
    assert [m.fate for m in answers][-2:] == ["dropped", "delivered"], "reconciled without n3's state"
    assert len(cluster.net.messages("SYNC", src="n1", dst="n3")) == asked + 2
    assert not cluster.crashes()


def test_making_due_copies_standby_after_a_freeze_lets_the_hub_run_between_slices(inproc, monkeypatch):
    """A node resumed from a freeze (or restarted) makes each due copy a
    standby copy that asks first. With a million ready copies that pass takes
    seconds; it now yields the hub between slices (FairShare), so the node's
    heartbeats, readers and timers run meanwhile. Here a slice is one task
    and every check yields: a greenlet spawned before the pass runs while it
    is under way (before, only after it ended), and every copy is made a
    standby copy all the same."""
    monkeypatch.setattr(standby_module, "ASK_FIRST_SLICE", 1)
    monkeypatch.setattr(fairness, "HUB_SLICE", 0.0)
    cluster = inproc(2, replicas=2, default_timeout=60.0)
    node = cluster["n1"]
    tids = [cluster.task_led_by("n1") for _ in range(5)]
    cluster.accepted([cluster.submit("n1", tid) for tid in tids])
    assert all(node.state(tid) == "ready" for tid in tids)         # no worker: they wait ready

    seen: list[int] = []
    gevent.spawn(lambda: seen.append(sum(node.task(tid).standby for tid in tids)))
    made = node.role.standby.ask_first(list(node.role.engine.table.live.values()), wall())
    assert seen and seen[0] < len(tids), "the pass held the hub until it ended"
    assert made == len(tids) and all(node.task(tid).standby for tid in tids) and not cluster.crashes()


def test_a_task_cancelled_while_its_first_holder_restarted_does_not_run_after_it(inproc, tmp_path, monkeypatch):
    """Fault: the first holder of a task due in a minute is stopped; the task
    is cancelled on another holder meanwhile, and more tasks end there than a
    resync brings back (``RESYNC_STONES``, here 10 instead of 5,000); the
    first holder restarts from its log. Before 2026-12-05 its copy, not due
    at the restart, kept rank 0 and ran at its eta without asking: the
    cancelled task ran. Now it asks at its eta, hears "cancelled", and ends so."""
    from miyaq.cluster import sync as sync_module
    monkeypatch.setattr(sync_module, "RESYNC_STONES", 10)
    cluster = inproc(3, data_dir=str(tmp_path), min_acks=1, fsync="never")
    tid = cluster.task_led_by("n3")
    holders = cluster.holders(tid)
    cluster.submit_accepted("n3", tid, countdown=60)
    cluster.wait_until(lambda: all(cluster[n].task(tid) for n in holders), what="every copy stored")
    cluster.stop_node("n3", grace=0.2)
    assert cluster["n1"].engine.cancel(tid, wall())[0]
    cluster["n1"].wake()
    for i in range(30):
        cluster.submit("n1", f"other{i}")
        cluster["n1"].engine.cancel(f"other{i}", wall())
    cluster["n1"].wake()
    cluster.wait_until(lambda: cluster["n2"].state(tid) == "cancelled", what="the cancel heard by n2")
    cluster.start_node("n3")
    cluster.wait_until(lambda: not cluster["n3"].role.reconciling and cluster["n3"].role.streams_ready(),
                       timeout=30, what="n3 reconciled")
    assert cluster["n3"].state(tid) == "scheduled"      # the resync did not bring the cancel back
    workers = {n: cluster.worker(n) for n in cluster.nodes}
    cluster.advance(62)
    cluster.wait_until(lambda: cluster["n3"].state(tid) == "cancelled", what="n3's copy to learn the cancel")
    assert workers["n3"].times(tid) == 0


def test_a_submit_read_after_a_freeze_is_refused_whichever_loop_wakes_first(inproc, caplog):
    """Fault: the process is frozen (SIGSTOP, a VM pause) past ``STALL``. On
    resuming, the cluster ticker's round may run before the housekeeping's
    pass that notices the freeze. Before 2026-12-07 that round stamped
    itself fresh, and a SUBMIT read between the two (one that waited in the
    socket while the client resent it elsewhere) was coordinated with the
    ring as it was before the freeze. Now the round notices the freeze
    itself; the housekeeping's pass then notices the same freeze and
    starts no second resync."""
    cluster = inproc(3, replicas=2)
    cluster.settle(0.3)
    role = cluster["n1"].role
    assert role.not_coordinating() == ""
    clock.advance(STALL + 0.5)            # the freeze, as both loops see it when they wake
    role.ticker.round(monotonic())        # the ticker's greenlet happens to run first
    assert "catching up" in role.not_coordinating()
    resyncs = cluster.net.messages("SYNC", src="n1")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="miyaq.cluster.role"):
        role.stalled(STALL + 0.6)         # the housekeeping's pass, the same freeze
    assert "was frozen" not in caplog.text
    assert cluster.net.messages("SYNC", src="n1") == resyncs
    assert "catching up" in role.not_coordinating()


def test_a_second_freeze_just_after_the_first_was_noticed_is_noticed_too(inproc, caplog):
    """Fault: the process is frozen past ``STALL``, the ticker's round notices
    it, and the process is frozen again past ``STALL`` before either loop
    runs again (SIGSTOP twice in a row, a VM paused again as it resumed).
    Each loop's gap then began before the first notice: taken for the same
    freeze, the second was said by nobody -- no resync, and the node
    dispatched on what the peers said before it (review38). A gap that also
    holds more than ``STALL`` since the last notice is a freeze of its own."""
    cluster = inproc(3, replicas=2)
    cluster.settle(0.3)
    role = cluster["n1"].role
    clock.advance(STALL + 0.5)
    role.ticker.round(monotonic())        # the first freeze, noticed
    assert "catching up" in role.not_coordinating()
    resyncs = cluster.net.messages("SYNC", src="n1")
    clock.advance(STALL + 0.5)            # frozen again before either loop ran
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="miyaq.cluster.role"):
        role.ticker.round(monotonic())
    assert "was frozen" in caplog.text
    assert len(cluster.net.messages("SYNC", src="n1")) > len(resyncs)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="miyaq.cluster.role"):
        role.stalled(2 * STALL + 1.1)     # the housekeeping's pass: both freezes in one gap, both said already
    assert "was frozen" not in caplog.text
