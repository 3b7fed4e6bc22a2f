"""The JSON task API: named tasks submitted over HTTP, run by Python
consumers, their status, result and cancellation, and every error."""
from __future__ import annotations

import threading
import time

import msgpack
from gateway_harness import FIXTURES, WAIT, Http, wait_for

from miyaq import Client

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals


def submit(api: Http, **body: object) -> dict:
    status, answer, _ = api.post("/tasks", body)
    assert status == 202, answer
    return answer


def test_http_task_runs_on_a_python_consumer_and_its_result_is_json(http_node, api):
    """Any language feeds Python workers: the body is msgpack [args, kwargs]."""
    answer = submit(api, name="add", queue="math", args=[2, 3], kwargs={"scale": 10})
    assert answer["status"] == "accepted" and answer["task_id"] == answer["id"]
    client = Client(f"tcp://127.0.0.1:{http_node.config.port}")
    try:
        received = client.receive("math", timeout=5)
        assert received is not None and received.id == answer["id"] and received.name == "add"
        assert (received.args, received.kwargs) == ([2, 3], {"scale": 10})
        assert received.ack({"sum": 50, "parts": [2, 3]})
    finally:
        client.close()
    status, result, _ = api.get(f"/tasks/{answer['id']}/result")
    assert status == 200
    assert result == {"id": answer["id"], "state": "done", "done": True, "result": {"sum": 50, "parts": [2, 3]}}


def test_result_long_poll_answers_when_the_task_ends(http_node, api):
    task_id = submit(api, name="slow", queue="lp")["id"]
    got: dict = {}

    def poll() -> None:
        other = Http(http_node.url)
        try:
            got["answer"] = other.get(f"/tasks/{task_id}/result?timeout={WAIT}")[1]
        finally:
            other.close()

    poller = threading.Thread(target=poll)
    poller.start()
    wait_for(lambda: http_node.call(lambda: http_node.node.core.waiters.count) == 1, "the long-poll to wait")
    task = api.post("/receive", {"queues": ["lp"]})[1]["task"]
    api.post(f"/tasks/{task_id}/ack", {"attempt": task["attempt"], "result": "fine"})
    poller.join(WAIT)
    assert got["answer"]["state"] == "done" and got["answer"]["result"] == "fine"


def test_result_before_the_end_and_after_timeout(api):
    task_id = submit(api, name="later", countdown=600)["id"]
    assert api.get(f"/tasks/{task_id}/result")[1] == {"id": task_id, "state": "scheduled", "done": False}
    assert api.get(f"/tasks/{task_id}/result?timeout=0.2")[1]["done"] is False


def test_every_submit_option_is_stored(api):
    eta = "2030-01-02T03:04:05+00:00"
    answer = submit(api, name="opts", id="my-id-1", queue="q1", priority=-5, eta=eta, ttl=3600, max_retries=7,
                    backoff=2, backoff_max=60, timeout=42, key="user:1", replicas=1, at_most_once=True)
    task = api.get("/tasks/my-id-1")[1]["task"]
    assert answer["id"] == "my-id-1"
    assert (task["queue"], task["priority"], task["max_retries"], task["timeout"], task["key"]) == \
        ("q1", -5, 7, 42.0, "user:1")
    assert task["eta"] == 1893553445.0 and task["expires"] > time.time()
    dup = submit(api, name="opts", queue="q1", key="user:1", countdown=5)
    assert dup["status"] == "duplicate" and dup["task_id"] == "my-id-1" and dup["id"] != "my-id-1"


def test_cancel_and_list(api):
    a = submit(api, name="a", queue="lst", countdown=600)["id"]
    b = submit(api, name="b", queue="lst", countdown=600)["id"]
    assert api.request("DELETE", f"/tasks/{a}")[1] == {"id": a, "cancelled": True, "state": "scheduled"}
    assert api.request("DELETE", f"/tasks/{a}")[1] == {"id": a, "cancelled": False, "state": "cancelled"}
    listed = api.get("/tasks?queue=lst&state=scheduled&limit=10")[1]["tasks"]
    assert [t["id"] for t in listed] == [b]
    assert api.get(f"/tasks/{a}")[1]["task"]["state"] == "cancelled"


def test_result_json_cannot_hold_is_base64(http_node, api):
    task_id = submit(api, name="bin", queue="bq")["id"]
    task = api.post("/receive", {"queues": ["bq"]})[1]["task"]
    raw = msgpack.packb({"blob": b"\x00\x01"}, use_bin_type=True)
    http_node.call(lambda: http_node.node.core.engine.complete(task_id, task["attempt"], raw, time.time()))
    result = api.get(f"/tasks/{task_id}/result")[1]
    assert "result" not in result and result["result_base64"] == __import__("base64").b64encode(raw).decode()


SUBMIT_ERRORS = [
    ({"args": [1]}, "name"),
    ({"name": "x", "colour": 1}, "colour"),
    ({"name": "x", "args": {"a": 1}}, "args"),
    ({"name": "x", "kwargs": [1]}, "kwargs"),
    ({"name": "x", "url": "http://h/"}, "url"),
    ({"name": "x", "id": "bad id"}, "id"),
    ({"name": "x", "priority": "high"}, "priority"),
    ({"name": "x", "countdown": -1}, "countdown"),
    ({"name": "x", "eta": "tomorrow"}, "eta"),
    ({"name": "x", "queue": "a/b"}, "queue"),
    ({"name": "x", "at_most_once": "yes"}, "at_most_once"),
]


def test_submit_errors_name_the_field(api):
    for body, field in SUBMIT_ERRORS:
        status, answer, _ = api.post("/tasks", body)
        assert (status, answer["error"]["field"]) == (400, field), body
    status, answer, _ = api.post("/tasks", raw=b"{nope", content_type="application/json")
    assert (status, answer["error"]["field"]) == (400, "body")
    status, answer, _ = api.post("/tasks", raw=b"[1]", content_type="application/json")
    assert (status, answer["error"]["field"]) == (400, "body")
    status, answer, _ = api.post("/tasks", raw=b"name=x", content_type="application/x-www-form-urlencoded")
    assert (status, answer["error"]["code"]) == (415, "unsupported_media_type")
    status, answer, _ = api.post("/tasks", raw=b"name=x", content_type="text/plain")
    assert (status, answer["error"]["code"]) == (415, "unsupported_media_type")


def test_a_json_body_labelled_as_a_form_is_read_as_json(api):
    """Fault: `curl -d '{...}'` labels a JSON body application/x-www-form-urlencoded (or a client sends no type)."""
    for content_type in ("application/x-www-form-urlencoded", ""):
        status, answer, _ = api.post("/tasks", raw=b'{"name": "add", "args": [2, 3]}', content_type=content_type)
        assert (status, answer["status"]) == (202, "accepted"), (content_type, answer)


def test_unknown_tasks_and_bad_queries(api):
    for method, path in (("GET", "/tasks/nope"), ("DELETE", "/tasks/nope"), ("GET", "/tasks/nope/result")):
        status, answer, _ = api.request(method, path)
        assert (status, answer["error"]["code"]) == (404, "not_found")
    assert api.get("/tasks/bad%20id")[1]["error"]["field"] == "id"
    task_id = submit(api, name="x", countdown=600)["id"]
    assert api.get(f"/tasks/{task_id}/result?timeout=soon")[1]["error"]["field"] == "timeout"
    assert api.get("/tasks?state=sleeping")[1]["error"]["field"] == "state"
    assert api.get("/tasks?limit=0")[1]["error"]["field"] == "limit"


def test_submit_is_refused_while_busy(make_http_node):
    node = make_http_node(max_tasks=1)
    api = Http(node.url)
    try:
        assert api.post("/tasks", {"name": "x", "countdown": 600})[0] == 202
        status, answer, headers = api.post("/tasks", {"name": "x", "countdown": 600})
        assert (status, answer["error"]["code"], headers["retry-after"]) == (503, "busy", "1")
    finally:
        api.close()
