"""A task starts at most ``max_retries + 1`` times in a cluster too: a
standby copy that takes over from a holder lost during the task's last
attempt dead-letters it ``Lost`` (docs/semantics.md, "Retries";
docs/cluster.md), and a copy restarted from its log learns, in the
reconcile's resync, the attempt another holder started meanwhile
(docs/durability.md). In-process (miyaq.testing.inprocess), a log on every
node; the task's first holder is n1, its second n2."""
from __future__ import annotations

from typing import Any

import pytest

from miyaq.runtime import wall
from miyaq.store.records import transfer_record
from miyaq.store.task import DEAD, DONE, READY, revivals

pytestmark = pytest.mark.timeout(120)

NODES = ("n1", "n2", "n3")
ERROR = {"type": "Boom", "message": "first failure"}
LEASE = 60.0


def _held_by_n1_then_n2(cluster: Any) -> str:
    """A task id whose first holder is n1 and second n2."""
    for _ in range(200):
        task_id = cluster.task_led_by("n1")
        if cluster.holders(task_id)[1] == "n2":
            return task_id
    raise AssertionError("no task id held by n1 then n2 in 200 tries")


def _last_attempt_running(inproc: Any, tmp_path: Any) -> tuple[Any, str, Any]:
    """A 3-node cluster whose task (max_retries=1, holders n1 then n2, a
    lease of ``LEASE`` seconds) failed
    its first attempt on n1 and runs its second -- its last -- there, every
    other copy told so (the ``S`` event: attempt 2)."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    task_id = _held_by_n1_then_n2(cluster)
    # A lease that outlasts the test's waits (n1 must not lose it itself):
    # the take-over comes after the clocks are advanced past it.
    cluster.submit_accepted("n1", task_id, body=b"x", max_retries=1, timeout=LEASE)
    worker = cluster.worker("n1")
    cluster.wait_until(lambda: worker.runs(task_id), what="attempt 1")
    worker.fail(task_id, ERROR, retry=True, delay=0)        # put back at once: attempt 2 runs
    cluster.wait_until(lambda: worker.runs(task_id) and worker.times(task_id) == 2, what="attempt 2")
    cluster.wait_until(lambda: all(cluster[n].task(task_id).attempt == 2 for n in ("n2", "n3")),
                       what="the S event of attempt 2 at n2 and n3")
    return cluster, task_id, worker


def _restart(cluster: Any, node: str) -> None:
    cluster.stop_node(node)
    cluster.start_node(node)
    cluster.wait_until(lambda: all(cluster[n].role.not_coordinating() == "" for n in NODES), what="coordinating")


def _dead_lost(cluster: Any, task_id: str) -> None:
    """n1 dies during the last attempt: n2's copy takes over and must
    dead-letter the task ``Lost`` (never run it), n3's copy too (D event)."""
    standby = cluster.worker("n2")
    cluster.stop_node("n1")
    cluster.advance(LEASE + 2 * cluster.settings["replica_offset"])     # past n1's lease and n2's offset
    cluster.wait_until(lambda: standby.runs(task_id) or cluster["n2"].state(task_id) == DEAD, timeout=60,
                       what="n2 to take over")
    copy = cluster["n2"].task(task_id)
    assert standby.times(task_id) == 0, "a third start of a task of max_retries=1"
    assert (copy.state, copy.attempt, copy.error["type"]) == (DEAD, 2, "Lost")
    assert copy.error["message"] == ("the holder running this task's last attempt (2 of 2) was lost, "
                                     "and no other holder runs it")
    cluster.wait_until(lambda: cluster["n3"].state(task_id) == DEAD, what="n3's copy dead-lettered (D event)")
    assert cluster["n3"].task(task_id).error == copy.error
    assert cluster["n2"].role.standby.takeovers >= 1


def test_a_take_over_from_a_holder_lost_in_the_last_attempt_dead_letters_it_lost(inproc, tmp_path):
    """Fault (review39): n1 dies while attempt 2 of a task of
    ``max_retries=1`` runs; n2's standby copy heard the start (attempt 2),
    asks, hears no runner and took over: the task started a third time.
    It is dead-lettered ``Lost`` instead, as a lost lease on the last
    attempt ends on a single node. A late report of that attempt from its
    worker to n2 (its node is gone) is taken as a single node takes one
    after a lost lease: a FAILED is ignored (the task is dead already), a
    DONE finishes it -- on every holder."""
    cluster, task_id, worker = _last_attempt_running(inproc, tmp_path)
    _dead_lost(cluster, task_id)
    n2 = cluster["n2"]
    assert not worker.fail_at(n2.node, task_id, 2, ERROR, retry=True, delay=0)
    assert n2.state(task_id) == DEAD and n2.task(task_id).error["type"] == "Lost"
    assert worker.complete_at(n2.node, task_id, 2)
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == DONE for n in ("n2", "n3")),
                       what="the late DONE to finish the task on n2 and n3")
    assert not cluster.crashes()


def test_a_copy_restarted_from_its_log_learns_the_started_attempt_in_the_resync(inproc, tmp_path):
    """Fault (review39): a copy's attempt from an ``S`` event is in memory
    only; n2 restarted from its log came back at an earlier attempt, and
    the resync did not take the attempt n1 (and n3) knew: when n1 then died
    during that last attempt, n2 took over and counted from there -- the
    task started a third time (attempt 1 again). The resync now adopts the
    higher attempt and its error, and the take-over dead-letters it."""
    cluster, task_id, _worker = _last_attempt_running(inproc, tmp_path)
    _restart(cluster, "n2")
    cluster.wait_until(lambda: cluster["n2"].task(task_id).attempt == 2, what="n2's resync to adopt attempt 2")
    copy = cluster["n2"].task(task_id)
    assert copy.error == ERROR and copy.standby
    _dead_lost(cluster, task_id)
    assert not cluster.crashes()


def _restarted_unsynced(cluster, node_id: str, task_id: str):
    """``node_id`` restarted from its log with every SYNC it asks lost: its
    copy of ``task_id`` as its log alone brought it back."""
    cluster.net.drop("SYNC", src=node_id)
    cluster.stop_node(node_id)
    cluster.start_node(node_id)
    return cluster[node_id].task(task_id)


def test_the_attempt_a_resync_taught_is_kept_across_a_second_restart(inproc, tmp_path):
    """Fault: the attempt a restarted copy adopted in its resync would live
    in memory only; restarted again while no resync answers (every SYNC
    lost), it would be back at an earlier attempt. It is written to the log
    (an ``R`` record, as another holder's retry is), so the second restart
    brings it back at attempt 2 with its error."""
    cluster, task_id, _worker = _last_attempt_running(inproc, tmp_path)
    _restart(cluster, "n2")
    cluster.wait_until(lambda: cluster["n2"].task(task_id).attempt == 2, what="n2's resync to adopt attempt 2")
    copy = _restarted_unsynced(cluster, "n2", task_id)
    assert (copy.attempt, copy.error) == (2, ERROR)
    assert not cluster.crashes()


def test_a_standby_copy_restored_from_its_log_keeps_a_put_back_heard_from_another_holder(inproc, tmp_path):
    """Fault (review39): another holder's put-back (an ``R`` event with eta
    0: a failure retried at once) changed a standby copy's attempt and error
    in memory only (a retry with a delay was logged, since review38): n2
    restarted from its log, every resync lost, came back at attempt 0
    without its error. It comes back at the put-back's attempt and error
    (the later start, attempt 2, is the resync's to teach: see above)."""
    cluster, task_id, _worker = _last_attempt_running(inproc, tmp_path)
    copy = _restarted_unsynced(cluster, "n2", task_id)
    assert (copy.attempt, copy.error) == (1, ERROR)
    assert not cluster.crashes()


def _last_attempt_given_back(inproc, tmp_path):
    """The last attempt (2 of 2) running on n1, then given back unstarted by
    its worker: ready on n1 at attempt 1 again, and n2 and n3 told so."""
    cluster, task_id, worker = _last_attempt_running(inproc, tmp_path)
    worker.stop()
    n1 = cluster["n1"]
    assert n1.node.core.engine.give_back(task_id, 2, worker.principal, wall())
    n1.wake()
    assert (n1.state(task_id), n1.task(task_id).attempt) == (READY, 1)
    cluster.wait_until(lambda: all(cluster[n].task(task_id).attempt == 1 for n in ("n2", "n3")),
                       what="n2 and n3 to hear the give-back (attempt 1 again)")
    return cluster, task_id


def _run_or_death_on(cluster, node_id: str, task_id: str, offsets: int) -> list:
    """A worker on ``node_id``, the clocks moved past the lease and
    ``offsets`` replica offsets: what it was delivered once the task ran
    there or died."""
    worker = cluster.worker(node_id)
    cluster.advance(LEASE + offsets * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: worker.runs(task_id) or cluster[node_id].state(task_id) == DEAD, timeout=60,
                       what=f"{node_id}'s copy to run or die")
    return worker.delivered


def test_a_last_attempt_given_back_unstarted_runs_at_a_take_over(inproc, tmp_path):
    """Fault (review40): the last attempt's worker gives it back unstarted
    (a RETURN, a refused or cancelled /receive): n1 has the task ready at
    attempt 1 again, but n2 and n3 heard only the ``S`` event of attempt 2.
    n1 then dies before any consumer takes it: n2's take-over dead-lettered
    the task ``Lost`` -- "the holder running this task's last attempt was
    lost" -- though that attempt never ran. The give-back is told to the
    other holders (an ``R`` event, as a put-back), and n2 runs the task."""
    cluster, task_id = _last_attempt_given_back(inproc, tmp_path)
    cluster.stop_node("n1")
    assert _run_or_death_on(cluster, "n2", task_id, offsets=2) == [(task_id, 2)], cluster["n2"].task(task_id).error
    assert not cluster.crashes()


def test_a_last_attempt_given_back_then_its_holder_restarted_runs(inproc, tmp_path):
    """Fault (review40): n1 has the last attempt given back (ready again at
    attempt 1, its log says so) and is restarted -- a planned restart, no
    node lost. n2 had heard only the ``S`` event of attempt 2; n1's
    reconcile resync adopted that attempt, and n1's own copy, asking first
    and hearing only standby copies, dead-lettered the task ``Lost`` ("the
    holder running this task's last attempt was lost") though it never
    ran. The give-back's ``R`` event keeps n2 at attempt 1: the task runs."""
    cluster, task_id = _last_attempt_given_back(inproc, tmp_path)
    _restart(cluster, "n1")
    assert _run_or_death_on(cluster, "n1", task_id, offsets=4) == [(task_id, 2)], cluster["n1"].task(task_id).error
    assert not cluster.crashes()


def test_a_resync_does_not_adopt_an_attempt_of_an_earlier_revival(inproc, tmp_path):
    """Fault (a mutant of sync.py no test killed, review40): a resync source
    that missed the task's death and its retry from the dead letters still
    holds its copy of the earlier revival, at the attempt that ran then.
    Taken by the revived copy here (attempt 0 again), a take-over would
    count that old attempt -- the task's last -- and dead-letter it ``Lost``
    unrun. Only an attempt of the same revival is adopted."""
    cluster, task_id, worker = _last_attempt_running(inproc, tmp_path)
    stale = transfer_record(cluster["n3"].task(task_id))       # n3's copy, before the death and the retry
    assert (stale["attempt"], stale.get("meta")) == (2, None)
    worker.fail(task_id, ERROR, retry=True, delay=0)            # the last attempt: dead-lettered
    worker.stop()                                               # (after: a report grants it credit again)
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == DEAD for n in NODES), what="dead everywhere")
    assert cluster["n1"].engine.dead_retry([task_id], wall()) == [task_id]
    cluster["n1"].wake()
    n2 = cluster["n2"]
    cluster.wait_until(lambda: n2.state(task_id) not in (DEAD, None) and revivals(n2.task(task_id)) == 1,
                       what="n2's copy revived (V event)")
    assert n2.task(task_id).attempt == 0
    with n2.role.events.applying_remote():
        n2.role.resync._apply("n3", {"tasks": [stale], "stones": [], "next": None}, 0, 0)
    assert n2.task(task_id).attempt == 0, "an attempt of the earlier revival adopted"
    assert not cluster.crashes()


def test_an_at_most_once_task_learnt_running_in_a_resync_is_not_run_again_at_a_take_over(inproc, tmp_path):
    """Fault (a mutant of replicas.take_over no test killed, review40): n2
    and n3 never got the ``S`` event of an at-most-once task (lost), so
    their copies were not ended ``started-elsewhere``; a resync taught n2
    the attempt n1 runs. n1 then dies: n2's take-over must not start the task a second
    time -- it dead-letters it ``Lost``, as a node restarted while an
    at-most-once task ran does."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    task_id = _held_by_n1_then_n2(cluster)
    cluster.net.drop("EVENTS", src="n1", event="S")      # n3 never says "started elsewhere" either
    cluster.submit_accepted("n1", task_id, body=b"x", at_most_once=True, timeout=LEASE)
    worker = cluster.worker("n1")
    cluster.wait_until(lambda: worker.runs(task_id), what="the start on n1")
    n2 = cluster["n2"]
    assert n2.task(task_id).attempt == 0
    with n2.role.events.applying_remote():
        running = transfer_record(cluster["n1"].task(task_id))
        n2.role.resync._apply("n1", {"tasks": [running], "stones": [], "next": None}, 0, 0)
    assert n2.task(task_id).attempt == 1
    standby = cluster.worker("n2")
    cluster.stop_node("n1")
    cluster.advance(LEASE + 2 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: standby.runs(task_id) or n2.state(task_id) == DEAD, timeout=60,
                       what="n2 to take over")
    assert standby.times(task_id) == 0, "an at-most-once task started twice"
    assert n2.task(task_id).error["message"] == ("the holder running an at-most-once task was lost, "
                                                 "and no other holder runs it")
    assert not cluster.crashes()
