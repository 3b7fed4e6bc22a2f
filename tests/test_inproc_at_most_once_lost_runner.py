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
from miyaq.store.task import DONE
from tests.test_inproc_standby import _ask_result

pytestmark = pytest.mark.timeout(120)

NODES = ("n1", "n2", "n3")
ERROR = {"type": "Boom", "message": "the handler failed"}
LEASE = 60.0


def _runner_lost_while_it_runs(inproc: Any) -> tuple[Any, str, Any]:
    """A 3-node cluster whose at-most-once task runs on n1's worker, every
    other holder's copy a ``started-elsewhere`` placeholder; then n1 stops
    (its worker lives on): ``(cluster, task id, n1's worker)``."""
    cluster = inproc(3, replicas=3)
    task_id = cluster.task_led_by("n1")
    workers = {n: cluster.worker(n) for n in NODES}
    cluster.submit_accepted("n1", task_id, body=b"x", at_most_once=True, timeout=LEASE)
    cluster.wait_until(lambda: workers["n1"].runs(task_id), what="n1 to start the task")
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == STARTED_ELSEWHERE for n in ("n2", "n3")),
                       what="the placeholders on n2 and n3 (S event)")
    cluster.stop_node("n1")
    return cluster, task_id, workers["n1"]


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
    cluster, task_id, worker = _runner_lost_while_it_runs(inproc)
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
