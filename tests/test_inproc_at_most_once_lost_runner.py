"""An at-most-once task whose runner's node dies after its worker started
it: the worker reports to another holder (docs/cluster.md, "A task's life
in a cluster", items 6 and 7). Every other holder dropped its copy for a
``started-elsewhere`` placeholder when the task started, so the report
finds no copy there: the placeholder keeps the attempt and the lessee the
``S`` event named, and takes that lessee's report -- and only that one. In
process (miyaq.testing.inprocess): the task's first holder is n1."""
from __future__ import annotations

from typing import Any

import pytest

from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.runtime import wall
from miyaq.store.task import DONE
from tests.test_inproc_standby import _ask_result

pytestmark = pytest.mark.timeout(120)

NODES = ("n1", "n2", "n3")
LEASE = 60.0


def _runner_lost_while_it_runs(inproc: Any) -> tuple[Any, str, dict[str, Any]]:
    """A 3-node cluster whose at-most-once task runs on n1's worker, every
    other holder's copy a ``started-elsewhere`` placeholder; then n1 stops
    (its worker lives on): ``(cluster, task id, a worker by node)``."""
    cluster = inproc(3, replicas=3)
    task_id = cluster.task_led_by("n1")
    workers = {n: cluster.worker(n) for n in NODES}
    cluster.submit_accepted("n1", task_id, body=b"x", at_most_once=True, timeout=LEASE)
    cluster.wait_until(lambda: workers["n1"].runs(task_id), what="n1 to start the task")
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == STARTED_ELSEWHERE for n in ("n2", "n3")),
                       what="the placeholders on n2 and n3 (S event)")
    cluster.stop_node("n1")
    return cluster, task_id, workers


def _stone(cluster: Any, node: str, task_id: str) -> Any:
    stone = cluster[node].tombstone(task_id)
    assert stone is not None, f"{node} has no tombstone of {task_id}"
    return stone


def test_a_done_reported_to_another_holder_after_the_runner_died_finishes_the_task_everywhere(inproc):
    """Fault: n1, running an at-most-once task, dies; its worker finishes
    the task and sends DONE to n2, as item 7 says. n2 had only the
    ``started-elsewhere`` placeholder and refused the report (the result
    lost, the task ``started-elsewhere`` on n2 and n3 until the tombstone
    aged out, RESULT ``not_found`` on both). The placeholder now takes the
    DONE of the lessee the S event named: ``done`` with its result on n2,
    and on n3 by the F event; nothing runs again."""
    cluster, task_id, workers = _runner_lost_while_it_runs(inproc)
    worker = workers["n1"]
    assert worker.complete_at(cluster["n2"].node, task_id, 1, result=b"\x2a")
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == DONE for n in ("n2", "n3")),
                       what="the DONE to finish the task on n2 and n3")
    for node in ("n2", "n3"):
        stone = _stone(cluster, node, task_id)
        assert (stone.state, stone.result, stone.attempt) == (DONE, b"\x2a", 1)
        kind, body = _ask_result(cluster[node], task_id)
        assert kind == "reply" and body["state"] == DONE and body["result"] == b"\x2a"
        assert cluster[node].engine.outcomes[("default", DONE)] == 1
    assert not cluster.crashes()


def test_a_placeholder_refuses_a_done_from_anyone_but_the_lessee_of_that_attempt(inproc):
    """Fault: after n1 died running an at-most-once task, a DONE reaches n2
    from a worker the task was never leased to, and one from the lessee
    but naming another attempt. Neither changes the placeholder (counted in
    ``not_leased``), as a live copy refuses them; the lessee's own DONE
    still finishes the task afterwards."""
    cluster, task_id, workers = _runner_lost_while_it_runs(inproc)
    worker = workers["n1"]
    n2 = cluster["n2"]
    stranger = workers["n2"]
    refused = n2.engine.not_leased
    assert not stranger.complete_at(n2.node, task_id, 1, result=b"forged")
    assert not worker.complete_at(n2.node, task_id, 2, result=b"forged")
    assert not n2.engine.complete(task_id, 1, b"forged", 0.0)        # by=None: nobody leased it here
    assert n2.engine.not_leased == refused + 3
    assert n2.state(task_id) == STARTED_ELSEWHERE and _stone(cluster, "n2", task_id).attempt == 1
    assert worker.complete_at(n2.node, task_id, 1, result=b"real")
    cluster.wait_until(lambda: cluster["n3"].state(task_id) == DONE, what="n3 to hear the finish")
    assert _stone(cluster, "n3", task_id).result == b"real"
    assert not worker.complete_at(n2.node, task_id, 1, result=b"again")    # over: a tombstone refuses it
    assert _stone(cluster, "n2", task_id).result == b"real"
    assert not cluster.crashes()


def test_the_runners_own_finish_drops_the_placeholders_lease(inproc):
    """The runner lives and finishes the at-most-once task: its F event
    replaces every placeholder, which lets go of the lease it kept (bounded,
    but not kept past its use), and keeps the attempt that ran."""
    cluster = inproc(3, replicas=3)
    task_id = cluster.task_led_by("n1")
    workers = {n: cluster.worker(n) for n in NODES}
    cluster.submit_accepted("n1", task_id, body=b"x", at_most_once=True, timeout=LEASE)
    cluster.wait_until(lambda: workers["n1"].runs(task_id), what="n1 to start the task")
    cluster.wait_until(lambda: all(task_id in cluster[n].engine.placeholder_leases for n in ("n2", "n3")),
                       what="the placeholders' leases on n2 and n3 (S event)")
    assert workers["n1"].complete(task_id, result=b"ok")
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == DONE for n in ("n2", "n3")),
                       what="the F event on n2 and n3")
    for node in ("n2", "n3"):
        assert task_id not in cluster[node].engine.placeholder_leases
        assert _stone(cluster, node, task_id).attempt == 1
    assert [workers[n].times(task_id) for n in NODES] == [1, 0, 0]
    assert not cluster.crashes()


def test_an_at_most_once_task_whose_runner_died_and_no_report_came_never_runs_again(inproc):
    """Fault: n1 dies running an at-most-once task and its worker's report
    never comes (the worker died too). The placeholders on n2 and n3 stay
    ``started-elsewhere`` past the lease and every offset (until their
    tombstone's ``result_ttl``): the task is never started a second time,
    and RESULT on them answers ``not_found``. (A FAILED from the worker
    dead-letters it: tests/test_inproc_at_most_once_failed.py.)"""
    cluster, task_id, workers = _runner_lost_while_it_runs(inproc)
    cluster.advance(LEASE + 4 * cluster.settings["replica_offset"])
    cluster.settle(0.2)
    for node in ("n2", "n3"):
        assert cluster[node].state(task_id) == STARTED_ELSEWHERE
        kind, body = _ask_result(cluster[node], task_id)
        assert kind == "error" and body["code"] == "not_found"
    assert workers["n2"].times(task_id) == 0 and workers["n3"].times(task_id) == 0
    assert not cluster.crashes()


def test_a_placeholder_finished_by_the_lessees_done_is_done_after_a_restart(inproc, tmp_path):
    """Fault: n2 restarts from its log after it took the lessee's DONE of
    an at-most-once task whose runner died. The DONE is logged like any
    end (an ``F`` record after the placeholder's): the task comes back
    ``done`` with its result, not ``started-elsewhere``."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    task_id = cluster.task_led_by("n1")
    worker = cluster.worker("n1")
    cluster.submit_accepted("n1", task_id, body=b"x", at_most_once=True, timeout=LEASE)
    cluster.wait_until(lambda: worker.runs(task_id), what="n1 to start the task")
    cluster.wait_until(lambda: cluster["n2"].state(task_id) == STARTED_ELSEWHERE, what="n2's placeholder")
    cluster.stop_node("n1")
    assert worker.complete_at(cluster["n2"].node, task_id, 1, result=b"\x2a")
    cluster.stop_node("n2")
    cluster.start_node("n2")
    stone = _stone(cluster, "n2", task_id)
    assert (stone.state, stone.result) == (DONE, b"\x2a")
    assert not cluster.crashes()


def test_a_placeholder_takes_the_done_of_the_worker_the_task_went_to_after_a_give_back(inproc):
    """Fault: n1's first worker gives an at-most-once task back unstarted
    (a RETURN, a refused or cancelled /receive) after n2 and n3 made their
    placeholders of its ``S`` event; n1's next worker takes it (a new ``S``
    event, the same attempt number), then n1 dies and that worker reports
    DONE to n2. The placeholder kept the first lessee: the new ``S`` event
    found only a tombstone and was dropped, so the DONE was refused
    (``not_leased``) and the result lost, as before the placeholder took
    reports. A placeholder now takes a later ``S`` event's lessee."""
    cluster = inproc(3, replicas=3)
    task_id = cluster.task_led_by("n1")
    first = cluster.worker("n1")
    cluster.submit_accepted("n1", task_id, body=b"x", at_most_once=True, timeout=LEASE)
    cluster.wait_until(lambda: first.runs(task_id), what="n1's first worker to get the task")
    cluster.wait_until(lambda: all(task_id in cluster[n].engine.placeholder_leases for n in ("n2", "n3")),
                       what="the placeholders' leases on n2 and n3 (S event)")
    first.stop()
    n1 = cluster["n1"]
    assert n1.node.core.engine.give_back(task_id, 1, first.principal, wall())
    n1.wake()
    second = cluster.worker("n1")
    cluster.wait_until(lambda: second.runs(task_id), what="n1's second worker to get the task")
    cluster.wait_until(lambda: all(cluster[n].engine.placeholder_leases[task_id].lessee == second.principal
                                   for n in ("n2", "n3")),
                       what="the placeholders on n2 and n3 to hear the second lease (S event)")
    cluster.stop_node("n1")
    assert second.complete_at(cluster["n2"].node, task_id, 1, result=b"\x2a")
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == DONE for n in ("n2", "n3")),
                       what="the DONE to finish the task on n2 and n3")
    for node in ("n2", "n3"):
        assert _stone(cluster, node, task_id).result == b"\x2a"
    assert first.delivered == [(task_id, 1)] and second.delivered == [(task_id, 1)]
    assert not cluster.crashes()
