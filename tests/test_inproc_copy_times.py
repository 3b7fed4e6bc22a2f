"""A replicated task's times as its copies move between nodes, in-process
(miyaq.testing.inprocess): a delayed task starts at its eta -- within one
offset -- however many ring changes moved its copies; every holder shows
the task's own eta; a copy that waits past its ttl wakes at its expiry
(docs/cluster.md, "Arming the copies" and "Handoff").

The clock is the cluster's own (``cluster.advance``): the tasks' minute of
countdown is never waited for in real time.
"""
from __future__ import annotations

import pytest

from miyaq.runtime import wall
from miyaq.store.task import EXPIRED, SCHEDULED

OFFSET = 5.0
COUNTDOWN = 60.0
STEP = 0.5       # the clock moves in steps this long while a test watches for a start


def _task_held_by(cluster, holders: list[str]) -> str:
    return next(t for t in (cluster.task_id() for _ in range(10_000)) if cluster.holders(t) == holders)


def _submitted(cluster, via: str, tid: str, **fields) -> float:
    """Submit ``tid`` through ``via``, wait until every holder stored its
    copy; returns the task's eta (as the node that took the submit has it)."""
    cluster.submit_accepted(via, tid, **fields)
    cluster.wait_until(lambda: all(cluster[h].task(tid) is not None for h in cluster.holders(tid)),
                       what="every holder's copy stored")
    return cluster[via].task(tid).eta


def _moved_to(cluster, ring: list[str], tid: str) -> None:
    """Publish ``ring`` and wait until the task's copies are on its holders by
    it, and every node's handoff is confirmed."""
    cluster.publish(ring)
    cluster.wait_until(lambda: sorted(n for n, h in cluster.nodes.items() if h.task(tid) is not None)
                       == sorted(cluster.holders(tid))
                       and all(h.role.handoff.pending() == 0 for h in cluster.nodes.values()),
                       what=f"the task's copies on its holders by ring {ring}, handoffs confirmed")
    cluster.advance(1.0)      # a second of the cluster's clock: nothing else is due
    cluster.settle(0.05)


def _etas(cluster, tid: str) -> dict[str, float]:
    """The ``eta`` of the TASK answer (engine.info) on every node that holds the task."""
    return {n: h.engine.info(tid)["eta"] for n, h in cluster.nodes.items() if h.task(tid) is not None}


def _first_start(cluster, tid: str, workers: dict, until: float) -> tuple[float, list[str]]:
    """Advance the clock a step at a time until a worker runs ``tid``: (when, on which nodes)."""
    while wall() < until:
        cluster.advance(STEP)
        cluster.settle(0.02)
        running = [n for n, w in workers.items() if w.times(tid)]
        if running:
            return wall(), running
    raise AssertionError(f"the task did not start by {until - wall():+.1f} s from now")


def test_a_delayed_task_handed_off_three_times_starts_within_one_offset_of_its_eta(inproc):
    """Fault: a task with a 60 s countdown on holders n1, n2 (offset 5 s) is
    moved by three routine ring changes, nothing failing: n1 leaves, n4
    joins, n2 leaves. Each copy stored its own armed time (eta + its
    rank's offset) as the task's eta, sent that on in the handoff, and the
    receiver added its own offset again: the copies' eta went 60 -> 65 ->
    70 and the task started at +70, two offsets late. Now the task's own
    eta travels, and a copy's wait is its timer only: it starts within one
    offset of its eta, and every holder's eta stays the one it was given."""
    cluster = inproc(["n1", "n2", "n3", "n4", "n5"], ring=["n1", "n2", "n3"], replicas=2, replica_offset=OFFSET)
    tid = _task_held_by(cluster, ["n1", "n2"])
    eta = _submitted(cluster, "n1", tid, countdown=COUNTDOWN)
    workers = {n: cluster.worker(n) for n in cluster.nodes}
    shown = {}
    for ring in (["n2", "n3"], ["n2", "n3", "n4"], ["n3", "n4"]):
        _moved_to(cluster, ring, tid)
        shown[",".join(ring)] = _etas(cluster, tid)
    started, on = _first_start(cluster, tid, workers, eta + 4 * OFFSET)
    assert started <= eta + OFFSET + 2 * STEP, f"started {started - eta:.2f} s after its eta on {on}"
    assert len(on) == 1
    assert all(set(etas.values()) == {eta} for etas in shown.values()), shown


def test_the_task_answer_shows_the_tasks_own_eta_on_every_holder(inproc):
    """Fault: the TASK answer (``miyaq status ID``) showed a copy's eta with
    its rank's offset added -- 60, 65 and 70 s for one task on three
    holders -- so the answer depended on which node replied (protocol.md:
    ``eta`` is when the task was due to run first). Every holder now
    answers the task's own eta, also after a ring change hands copies to
    new holders, while each copy's timer still waits its rank's offset."""
    cluster = inproc(4, ring=["n1", "n2", "n3"], replicas=3, replica_offset=OFFSET)
    tid = _task_held_by(cluster, ["n1", "n2", "n3"])
    eta = _submitted(cluster, "n1", tid, countdown=COUNTDOWN)
    assert _etas(cluster, tid) == {"n1": eta, "n2": eta, "n3": eta}
    assert [cluster[n].due_at(tid) for n in ("n1", "n2", "n3")] == [eta, eta + OFFSET, eta + 2 * OFFSET]

    _moved_to(cluster, ["n2", "n3", "n4"], tid)
    etas = _etas(cluster, tid)
    assert sorted(etas) == sorted(cluster.holders(tid)) and set(etas.values()) == {eta}, etas


def test_a_waiting_copy_keeps_the_tasks_eta_and_its_own_wait_across_a_restart(inproc, tmp_path):
    """Fault: as above, and the copy of rank 1 restarts from its log. The
    log keeps the task's eta and the copy's extra wait apart (``copy_wait``
    in its record): restarted, it still shows the task's eta and still
    waits its offset past it -- neither the wait lost nor added twice."""
    cluster = inproc(3, replicas=2, replica_offset=OFFSET, data_dir=str(tmp_path), fsync="always")
    tid = _task_held_by(cluster, ["n1", "n2"])
    eta = _submitted(cluster, "n1", tid, countdown=COUNTDOWN)
    assert cluster["n2"].due_at(tid) == eta + OFFSET
    cluster.stop_node("n2")
    back = cluster.start_node("n2")
    cluster.wait_until(lambda: back.task(tid) is not None and not back.role.reconciling,
                       what="n2 back from its log, reconciled")
    assert back.engine.info(tid)["eta"] == eta
    assert back.due_at(tid) == eta + OFFSET and back.task(tid).standby


@pytest.mark.parametrize("ttl", [COUNTDOWN + 3, COUNTDOWN / 2])
def test_a_task_with_a_ttl_whose_first_holder_was_drained_runs_or_expires_on_time(inproc, ttl):
    """Fault: a task with a 60 s countdown and a ttl, on holders n1, n2
    (offset 5 s); n1, its first holder, is drained 5 s in (it leaves the
    ring, nothing fails). Every copy was then a standby (n2's, now first,
    and the one handed to n3), and a standby copy never woke for its
    expiry: with a 63 s ttl both copies waited out their offset, and the
    task expired at +65 without ever running (it runs at +60 without the
    drain); with a 30 s ttl it expired at +65, shown ``scheduled`` 35 s
    past its deadline. Now the copy that became first asks at the task's
    eta (the 63 s task runs at +60), and a standby copy also wakes at its
    expiry, asks, and expires the task if no holder runs it (the 30 s
    task expires at +30)."""
    cluster = inproc(3, replicas=2, replica_offset=OFFSET, default_timeout=30.0)
    tid = _task_held_by(cluster, ["n1", "n2"])
    accepted = wall()
    eta = _submitted(cluster, "n1", tid, countdown=COUNTDOWN, ttl=ttl)
    workers = {n: cluster.worker(n) for n in cluster.nodes}
    cluster.advance(5.0)
    _moved_to(cluster, ["n2", "n3"], tid)
    assert {cluster[n].state(tid) for n in ("n2", "n3")} == {SCHEDULED}
    if ttl > COUNTDOWN:
        started, on = _first_start(cluster, tid, workers, eta + 3 * OFFSET)
        assert on == ["n2"] and started <= eta + 2 * STEP, f"started {started - eta:.2f} s after its eta on {on}"
        return
    while wall() < accepted + ttl + STEP:
        cluster.advance(STEP)
        cluster.settle(0.02)
    cluster.wait_until(lambda: all(cluster[n].state(tid) == EXPIRED for n in ("n2", "n3")),
                       what="the task expired on both holders at its ttl")
    assert not any(w.times(tid) for w in workers.values())
