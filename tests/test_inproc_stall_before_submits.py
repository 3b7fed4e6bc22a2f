"""The in-process tests' setup helpers survive a stall of the whole test
process just before their submits (miyaq.testing.inprocess,
``InProcessCluster.submit_accepted``, ``accepted`` and ``answered``;
docs/architecture.md, "Testing the cluster in-process").

Under a loaded machine the test process can be descheduled past ``STALL``;
every node of an in-process cluster then takes itself for frozen and
coordinates no submit for ``SUSPECT_AFTER_FREEZE``: a submit is refused
``unavailable`` and nothing is stored. Before 2026-12-07 these helpers sent
one submit and waited for "accepted" (or for the task to run) without
looking at the answer, and timed out. Each test here moves every clock
past a stall (as tests/test_inproc_submit_after_freeze.py does) before a
representative helper of another file, checks that its submit really was
refused, and that the helper still gets its task where it wants it.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
from test_cluster_cancel_standby import _running_on_its_first_holder as _running_after_a_cancel_setup
from test_inproc_copy_times import _submitted
from test_inproc_drain import _running_on_the_leaving_node
from test_inproc_handoff import _running
from test_inproc_peer_versions import _replicated
from test_inproc_resync import _dead_everywhere, _running_on_its_first_holder

from miyaq.constants import STALL
from miyaq.runtime import clock
from miyaq.store.task import DEAD, RUNNING

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def stalled(inproc) -> Callable[..., Any]:
    """As ``inproc``, but each cluster it starts then sees the whole test
    process stall past ``STALL`` (every clock moves ``STALL`` and a half on
    with no node passing between), as a descheduled process looks to it."""
    def make(*args: Any, **settings: Any) -> Any:
        cluster = inproc(*args, **settings)
        clock.advance(STALL + 0.5)
        return cluster
    return make


def _refused_then_taken(cluster) -> None:
    """The stall did what it is for: a submit was refused ``unavailable``,
    and the same task was taken when sent again."""
    subs = cluster.submissions()
    refused = {s.task_id for s in subs if s.error_code == "unavailable"}
    assert refused, "the stall refused no submit: the test proves nothing"
    taken = {s.task_id for s in subs if s.status in ("accepted", "duplicate") or s.error_code == "not_enough_replicas"}
    assert refused <= taken, [s.result for s in subs]


def test_resync_setup_runs_its_task_after_a_stall(stalled):
    """tests/test_inproc_resync.py ``_running_on_its_first_holder``."""
    cluster, tid, holders, worker = _running_on_its_first_holder(stalled)
    assert worker.runs(tid) and cluster[holders[0]].state(tid) == RUNNING
    _refused_then_taken(cluster)
    assert not cluster.crashes()


def test_resync_dead_letter_setup_after_a_stall(stalled):
    """tests/test_inproc_resync.py ``_dead_everywhere`` (a submit with the
    task's own ``timeout=``: ``accepted([submit(...)])``)."""
    cluster, tid, holders, _ = _dead_everywhere(stalled)
    assert all(cluster[h].state(tid) == DEAD for h in holders)
    _refused_then_taken(cluster)
    assert not cluster.crashes()


def test_handoff_setup_runs_its_task_after_a_stall(stalled):
    """tests/test_inproc_handoff.py ``_running``: its task's 60 s lease
    (the task's ``timeout``) is kept through the resend."""
    cluster = stalled(3, replicas=2)
    tid, runner, _, worker = _running(cluster)
    assert worker.runs(tid) and cluster[runner].task(tid).timeout == 60
    _refused_then_taken(cluster)
    assert not cluster.crashes()


def test_drain_setup_runs_its_task_on_the_leaving_node_after_a_stall(stalled):
    """tests/test_inproc_drain.py ``_running_on_the_leaving_node``."""
    cluster = stalled(3, replicas=2, replica_offset=5.0)
    tid, workers = _running_on_the_leaving_node(cluster)
    assert workers["n3"].runs(tid)
    _refused_then_taken(cluster)
    assert not cluster.crashes()


def test_copy_times_setup_stores_every_copy_after_a_stall(stalled):
    """tests/test_inproc_copy_times.py ``_submitted``."""
    cluster = stalled(3)
    tid = cluster.task_id()
    _submitted(cluster, "n1", tid, countdown=60)
    assert all(cluster[h].task(tid) is not None for h in cluster.holders(tid))
    _refused_then_taken(cluster)
    assert not cluster.crashes()


def test_peer_versions_setup_replicates_after_a_stall(stalled):
    """tests/test_inproc_peer_versions.py ``_replicated``."""
    cluster = stalled(3)
    tid = _replicated(cluster, "n1")
    assert all(cluster[n].task(tid) or cluster[n].tombstone(tid) for n in cluster.nodes)
    _refused_then_taken(cluster)
    assert not cluster.crashes()


def test_cancel_standby_setup_runs_its_task_after_a_stall(stalled):
    """tests/test_cluster_cancel_standby.py ``_running_on_its_first_holder``."""
    cluster = stalled(3)
    tid, _, holders, worker = _running_after_a_cancel_setup(cluster)
    assert worker.runs(tid) and all(cluster[h].task(tid).attempt == 1 for h in holders[1:])
    _refused_then_taken(cluster)
    assert not cluster.crashes()


def test_a_submit_held_back_from_one_holder_is_answered_not_enough_replicas_after_a_stall(stalled):
    """``answered`` (tests/test_holder_counts.py, test_finished_elsewhere_flood,
    test_inproc_resync hold a copy back on purpose): the refusal
    ``unavailable`` after the stall is sent again; the answer that then
    comes, ``not_enough_replicas`` with the task stored on the two holders
    it reached, stands (``accepted`` would raise on it)."""
    cluster = stalled(3)
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    cluster.net.hold("REPLICATE", dst=holders[2])
    [sub] = cluster.answered([cluster.submit(holders[0], tid)])
    assert (sub.status, sub.error_code) == ("rejected", "not_enough_replicas"), sub.result
    assert all(cluster[h].task(tid) is not None for h in holders[:2]) and cluster[holders[2]].task(tid) is None
    _refused_then_taken(cluster)
    assert not cluster.crashes()
