"""A delayed task whose submit was rejected keeps its eta on the coordinator's
copy (miyaq.cluster.replicated_intake, ``_demote``), in process."""
from __future__ import annotations

from miyaq.protocol.commands import REJECTED
from miyaq.runtime import wall
from miyaq.store.task import DONE

COUNTDOWN = 60.0


def test_a_rejected_submit_of_a_delayed_task_does_not_run_before_its_eta(inproc):
    """Fault (a ring change under way, as in a rolling restart): the other
    holder of a delayed task already has a ring without itself, so the
    coordinator -- the task's first holder, which stored its copy -- rejects
    the submit (not_enough_replicas) and turns its copy into a standby that
    asks the others before it runs. That copy must wait for the task's eta:
    before, its timer was set to now + an offset whatever the eta, the others
    answered that they did not know the task, and the copy ran at once (a
    rolling restart under load, /tmp/upgrade/run.py: a task due 131 s later
    ran 126 s early). The client never resends it here: the copy still runs,
    once, after its eta."""
    cluster = inproc(3, replicas=2, replication_timeout=60.0)
    coordinator = cluster.ids[0]
    tid = cluster.task_led_by(coordinator, 2)
    moved_on = cluster.holders(tid, 2)[1]
    worker = cluster.worker(coordinator)
    cluster.publish([n for n in cluster.ids if n != moved_on], to=[moved_on])
    cluster.wait_until(lambda: moved_on not in cluster[moved_on].role.view.members, what="the new ring on one node")

    sub = cluster.answered([cluster.submit(coordinator, tid, countdown=COUNTDOWN)])[0]
    assert sub.status == REJECTED and sub.error_code == "not_enough_replicas", sub.result
    copy = cluster[coordinator].task(tid)
    assert copy is not None and copy.standby
    assert copy.timer_at is not None and copy.timer_at >= copy.eta, (copy.timer_at, copy.eta)

    offset = cluster.settings["replica_offset"]
    cluster.advance(6 * offset)
    cluster.settle()
    assert worker.times(tid) == 0, "the delayed task ran before its eta"
    assert copy.eta - wall() > COUNTDOWN / 2

    for _ in range(int(COUNTDOWN + 8 * offset)):     # to eight offsets past the eta, a second a step
        if worker.runs(tid):
            break
        cluster.advance(1.0)
    cluster.wait_until(lambda: worker.runs(tid), what="the copy to run after its eta")
    started = copy.lease_end - copy.timeout      # the lease began when it was dispatched
    assert worker.times(tid) == 1 and started >= copy.eta, (started, copy.eta)
    worker.complete(tid)
    cluster.wait_until(lambda: cluster[coordinator].state(tid) == DONE, what="the task done")
    assert not cluster.crashes()
