"""HTTP pull consumers that report on an attempt they no longer hold (an
audit's finding, 2026-12-05): ``/tasks/<id>/touch`` names the attempt it
received, and extends only that attempt's lease while it is the task's
current one -- as a ZeroMQ TOUCH extends only the lease of the worker the
latest attempt went to. Each fault test's docstring names the fault."""
from __future__ import annotations

import time

import pytest
from gateway_harness import FIXTURES, Http, NodeThread, wait_for

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)


def submit(api: Http, queue: str) -> str:
    status, answer, _ = api.post("/tasks", {"name": "job", "queue": queue, "timeout": 300, "max_retries": 3})
    assert status == 202, answer
    return answer["id"]


def task_of(api: Http, task_id: str) -> dict:
    return api.get(f"/tasks/{task_id}")[1]["task"]


def run_out_leases(node: NodeThread) -> None:
    """Make every lease on the node run out now: the engine's timers fire as
    if their time had come (the tasks' timeout is 300 s: no waiting)."""
    engine = node.node.core.engine   # type: ignore[union-attr]
    node.call(lambda: engine.fire_due(time.time() + 400))


def test_a_touch_from_an_attempt_whose_lease_ran_out_extends_nothing(http_node, api):
    """Fault: consumer A receives attempt 1 and stalls; its lease runs out,
    the task goes back, and consumer B receives attempt 2. A comes back and
    touches with ``{"attempt": 1}``. Before the fix it got ``{"ok": true}``
    and pushed B's ``lease_end``, as often as it liked. Now it gets
    ``{"ok": false}`` and B's lease is as B received it; B's own touch
    (attempt 2) still extends it."""
    task_id = submit(api, "touchy")
    first = api.post("/receive", {"queues": ["touchy"]})[1]["task"]
    assert first["attempt"] == 1
    run_out_leases(http_node)
    wait_for(lambda: task_of(api, task_id)["state"] == "ready", "the task to be back in its queue")
    second = api.post("/receive", {"queues": ["touchy"]})[1]["task"]
    assert second["attempt"] == 2

    assert api.post(f"/tasks/{task_id}/touch", {"attempt": 1})[1]["ok"] is False
    assert task_of(api, task_id)["lease_end"] == second["lease_end"]
    touched = api.post(f"/tasks/{task_id}/touch", {"attempt": 2})[1]
    assert touched["ok"] is True and touched["lease_end"] >= second["lease_end"]


def test_a_touch_naming_an_attempt_not_yet_made_extends_nothing(api):
    """Fault: a consumer touches with an attempt the task has not reached
    (a number made up, or another task's): ``{"ok": false}``."""
    task_id = submit(api, "ahead")
    assert api.post("/receive", {"queues": ["ahead"]})[1]["task"]["attempt"] == 1
    assert api.post(f"/tasks/{task_id}/touch", {"attempt": 2})[1]["ok"] is False
    assert api.post(f"/tasks/{task_id}/touch", {"attempt": 1})[1]["ok"] is True


@pytest.mark.parametrize("attempt", ["1", 1.5, True, -1])
def test_a_touch_with_an_attempt_that_is_no_attempt_is_refused(api, attempt):
    """Fault: ``attempt`` is not a whole number of zero or more: 400 naming it."""
    task_id = submit(api, "badtouch")
    api.post("/receive", {"queues": ["badtouch"]})
    status, answer, _ = api.post(f"/tasks/{task_id}/touch", {"attempt": attempt})
    assert status == 400 and answer["error"]["field"] == "attempt", answer
