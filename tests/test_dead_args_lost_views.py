"""A dead letter whose arguments were lost -- an at-most-once task whose
runner's node died, its worker's FAILED taken by another holder's
``started-elsewhere`` placeholder (docs/cluster.md, "A task's life in a
cluster", item 6) -- as every view and retry of a real node's HTTP API,
console and command line sees it: listed and shown with ``args_lost`` (the
node they were lost with), never a crash on its empty payload, and every
retry refused with an error naming why, nothing changed. The dead letter
is made by the engine's own path in the node's hub (a placeholder of a
task the node held, then the lessee's FAILED)."""
from __future__ import annotations

from typing import Any

import pytest
from gateway_harness import FIXTURES
from test_console import page

from miyaq.cli.main import main
from miyaq.runtime import wall

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)

ERROR = {"type": "Boom", "message": "the handler failed"}


def _dead_without_args(node: Any, api: Any) -> str:
    """An at-most-once task that node ``n9`` ran (an ``S`` event's
    placeholder here) and whose worker ``w-lost`` reported a failure here
    after ``n9`` was lost: the id of the dead letter, arguments lost with n9."""
    task_id = api.post("/tasks", {"name": "tasks.charge", "at_most_once": True, "countdown": 600,
                                  "args": ["card"]})[1]["id"]

    def fail_elsewhere() -> bool:
        engine = node.node.core.engine
        now = wall()
        engine.start_elsewhere(engine.table.live[task_id], 1, "w-lost", now, "n9")
        return engine.fail(task_id, 1, ERROR, True, None, now, by="w-lost")

    assert node.call(fail_elsewhere)
    return task_id


def test_a_dead_letter_without_arguments_is_shown_as_such_and_every_retry_is_refused(http_node, api, capsys):
    """Fault: a dead letter with no payload (its arguments lost with node
    n9) is looked at and retried through every door. ``GET /tasks/{id}``,
    ``GET /dead``, the console's pages and ``miyaq dead list`` show it with
    ``args_lost`` n9 (the console without its Retry button); ``POST
    /dead/retry`` naming it is refused 400 with the reason, and the task
    stays dead; a retry of every dead letter leaves it out."""
    task_id = _dead_without_args(http_node, api)
    status, body, _ = api.get(f"/tasks/{task_id}")
    info = body["task"]
    assert status == 200 and info["state"] == "dead" and info["args_lost"] == "n9"
    assert info["error"]["type"] == "Boom" and info["name"] == "tasks.charge"
    listed = api.get("/dead")[1]["tasks"]
    assert [(t["id"], t["args_lost"]) for t in listed] == [(task_id, "n9")]

    status, body, _ = api.post("/dead/retry", {"ids": [task_id]})
    assert status == 400 and "arguments were lost with node n9" in body["error"]["message"]
    assert api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "dead"
    assert api.post("/dead/retry", {})[1] == {"retried": []}
    assert api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "dead"

    status, html, _ = page(api, f"/ui/tasks/{task_id}")
    assert status == 200 and 'id="task-args-lost"' in html and "lost with node n9" in html
    assert 'action="/ui/dead/retry"' not in html
    status, html, _ = page(api, "/ui/dead")
    assert status == 200 and "arguments lost with node n9" in html

    assert main(["dead", "list", "--connect", f"tcp://127.0.0.1:{http_node.config.port}"]) == 0
    out = capsys.readouterr().out
    assert task_id in out and "arguments lost with node n9: cannot be retried" in out
    assert main(["dead", "retry", task_id, "--connect", f"tcp://127.0.0.1:{http_node.config.port}"]) != 0
    assert "arguments were lost with node n9" in capsys.readouterr().err
    assert api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "dead"
