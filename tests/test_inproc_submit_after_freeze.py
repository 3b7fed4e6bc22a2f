"""A whole test process stalled past ``STALL`` (a loaded machine) does not
lose an in-process test's submits (miyaq.testing.inprocess,
``InProcessCluster.submit_accepted``; docs/architecture.md, "Testing the
cluster in-process").

Every node of an in-process cluster shares the test's process: when the
machine is loaded (a full suite run with ``-n 4`` on 2 cores, 2026-12-07)
the process can be descheduled for seconds, and every node then takes
itself for frozen -- it resyncs, holds dispatching until it reconciled (50
ms here) and coordinates no submit for ``SUSPECT_AFTER_FREEZE``: a submit
is refused ``unavailable`` and nothing is stored, for the client to send
again. That is the product working; a test that did not look at the
submit's answer waited for a task that was never stored.
"""
from __future__ import annotations

import pytest
from test_cancel_ahead_flood import _finished_with_keys

from miyaq.constants import STALL
from miyaq.errors import Timeout
from miyaq.runtime import clock
from miyaq.store.task import DONE

pytestmark = pytest.mark.timeout(90)


def _whole_process_stalled() -> None:
    """Move every clock ``STALL`` and a half on with no node passing
    between: what a descheduled test process looks like to its nodes."""
    clock.advance(STALL + 0.5)


def test_a_node_frozen_with_the_whole_process_dispatches_again_and_refuses_submits_meanwhile(inproc):
    """Fault: the test process stalls past ``STALL`` (every node with it).
    A submit right after is refused ``unavailable`` (nothing stored), the
    node reconciles and dispatches again, and the submit sent again once
    it coordinates is accepted and runs."""
    cluster = inproc(3, replicas=3)
    tid = cluster.task_led_by("n1")
    worker = cluster.worker("n1")
    _whole_process_stalled()
    refused = cluster.submit("n1", tid)
    cluster.wait_until(lambda: refused.status, what="the answer to the submit")
    assert (refused.status, refused.error_code) == ("rejected", "unavailable"), refused.result
    assert all(cluster[h].task(tid) is None for h in cluster.ids)
    cluster.wait_until(lambda: not any(cluster[n].role.reconciling for n in cluster.ids),
                       what="every node reconciled after the freeze")
    accepted = cluster.submit_accepted("n1", tid)
    assert accepted.status == "accepted"
    cluster.wait_until(lambda: worker.runs(tid), what="the task to run")
    assert not cluster.crashes()


def test_tasks_finished_with_keys_are_finished_when_the_process_stalled_before_their_submits(inproc):
    """Fault: the test process stalls past ``STALL`` just before
    ``_finished_with_keys`` submits its 40 tasks (the helper of the
    tombstone flood tests). Before 2026-12-07 it did not look at the
    submits' answers: all 40 were refused ``unavailable`` and "every task
    to run" was not reached within 30 s (the flake of
    tests/test_finished_elsewhere_flood.py under load). Now each refused
    submit is sent again once the node coordinates, and every task runs and
    finishes on every holder."""
    cluster = inproc(3, replicas=3, max_tombstones=50)
    _whole_process_stalled()
    tasks = _finished_with_keys(cluster, "n1", 40)
    assert len(tasks) == 40
    assert all(cluster[h].state(t) == DONE for t, _ in tasks for h in cluster.ids)
    assert not cluster.crashes()


def test_a_wait_that_times_out_names_the_submits_refused_unavailable(inproc):
    """Fault: a test waits for a task whose submit was refused ``unavailable``
    after a freeze. Before 2026-12-07 the timeout said only "every task to
    run not reached within 30s" (the flood tests' flake took a day to
    read); now it names the refused submits."""
    cluster = inproc(3, replicas=3)
    tid = cluster.task_led_by("n1")
    _whole_process_stalled()
    refused = cluster.submit("n1", tid)
    cluster.wait_until(lambda: refused.status, what="the answer to the submit")
    with pytest.raises(Timeout) as caught:
        cluster.wait_until(lambda: cluster["n1"].task(tid) is not None, timeout=0.2, what="the task stored")
    assert f"1 submit(s) refused unavailable, nothing stored: ['{tid}']" in str(caught.value)
    assert not cluster.crashes()
