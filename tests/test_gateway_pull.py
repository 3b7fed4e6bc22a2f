"""Pull consumers over HTTP: receive (non-blocking and long-poll), ack,
nack, touch, and their errors."""
from __future__ import annotations

import base64
import threading
import time

import msgpack
from gateway_harness import FIXTURES, WAIT, Http, wait_for

from miyaq.gateway import pull_api
from miyaq.store.task import Task

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals


def submit(api: Http, queue: str, *args: object) -> str:
    status, answer, _ = api.post("/tasks", {"name": "job", "queue": queue, "args": list(args)})
    assert status == 202
    return answer["id"]


def test_noblock_on_an_empty_queue_answers_null(api):
    for path in ("/receive", "/receive_noblock"):
        assert api.post(path, {"queues": ["empty"]})[1] == {"task": None}
    assert api.post("/receive_noblock")[1] == {"task": None}      # no body: queue "default"


def test_receive_then_ack(api):
    task_id = submit(api, "p1", 1, "two")
    task = api.post("/receive", {"queues": ["other", "p1"]})[1]["task"]
    assert (task["id"], task["queue"], task["state"], task["attempt"]) == (task_id, "p1", "running", 1)
    assert (task["args"], task["kwargs"]) == ([1, "two"], {})
    assert task["lease_end"] > time.time()
    assert api.post(f"/tasks/{task_id}/ack", {"attempt": 1, "result": [1, 2]})[1] == {"ok": True}
    assert api.get(f"/tasks/{task_id}/result")[1]["result"] == [1, 2]
    assert api.post("/tasks/unknown-id/ack", {"attempt": 1})[1]["ok"] is False


def test_receive_block_waits_for_a_task(http_node, api):
    got: dict = {}

    def receive() -> None:
        other = Http(http_node.url)
        try:
            got["answer"] = other.post("/receive_block", {"queues": ["blk"], "timeout": WAIT})[1]
        finally:
            other.close()

    waiter = threading.Thread(target=receive)
    waiter.start()
    wait_for(lambda: http_node.call(lambda: http_node.node.core.waiters.count) == 1, "the receive to wait")
    task_id = submit(api, "blk", "x")
    waiter.join(WAIT)
    assert got["answer"]["task"]["id"] == task_id


def test_receive_timeout_answers_null(http_node, api):
    assert api.post("/receive", {"queues": ["never"], "timeout": 0.2})[1] == {"task": None}
    wait_for(lambda: http_node.call(lambda: http_node.node.core.waiters.count) == 0, "the waiter to be released")
    assert http_node.call(lambda: len(http_node.node.core.dispatcher.hungry)) == 0


def test_nack_retries_or_dead_letters(api):
    task_id = submit(api, "nk")
    first = api.post("/receive", {"queues": ["nk"]})[1]["task"]
    assert api.post(f"/tasks/{task_id}/nack", {"attempt": 1, "error": "try later", "delay": 0})[1]["ok"]
    second = api.post("/receive", {"queues": ["nk"]})[1]["task"]
    assert (second["id"], second["attempt"], second["error"]["message"]) == (task_id, 2, "try later")
    assert api.post(f"/tasks/{task_id}/nack", {"attempt": 2, "retry": False})[1]["ok"]
    assert api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "dead"
    assert first["attempt"] == 1
    assert api.post(f"/tasks/{task_id}/nack", {"attempt": 2})[1]["ok"] is False   # stale: already dead


def test_touch_extends_the_lease(api):
    task_id = submit(api, "tch")
    task = api.post("/receive", {"queues": ["tch"]})[1]["task"]
    touched = api.post(f"/tasks/{task_id}/touch")[1]
    assert touched["ok"] is True and touched["lease_end"] >= task["lease_end"]
    assert api.post("/tasks/unknown-id/touch")[1]["ok"] is False


def test_a_payload_that_is_not_args_and_kwargs_is_base64(http_node, api):
    def store() -> None:
        now = time.time()
        http_node.node.core.engine.submit(Task("raw-1", "rawq", "job", b"\xc1not msgpack", created=now, eta=now), now)

    http_node.call(store)
    task = api.post("/receive", {"queues": ["rawq"]})[1]["task"]
    assert task["body_base64"] == "wW5vdCBtc2dwYWNr" and "args" not in task


def test_pull_errors_name_the_field(api):
    cases = [
        ("/receive", {"queues": "default"}, "queues"),
        ("/receive", {"queues": ["bad queue"]}, "queues"),
        ("/receive", {"timeout": -1}, "timeout"),
        ("/receive", {"wait": True}, "wait"),
        ("/tasks/x1/ack", {}, "attempt"),
        ("/tasks/x1/ack", {"attempt": "one"}, "attempt"),
        ("/tasks/x1/nack", {"attempt": 1, "retry": "no"}, "retry"),
        ("/tasks/x1/nack", {"attempt": 1, "delay": "soon"}, "delay"),
        ("/tasks/bad%20id/ack", {"attempt": 1}, "id"),
    ]
    for path, body, field in cases:
        status, answer, _ = api.post(path, body)
        assert (status, answer["error"]["field"]) == (400, field), (path, body)


def test_too_many_waiting_receives_is_busy(make_http_node):
    node = make_http_node(max_waiters=1)
    api, other = Http(node.url), Http(node.url)
    waiter = threading.Thread(target=lambda: other.post("/receive", {"queues": ["w"], "timeout": 1.0}))
    try:
        waiter.start()
        wait_for(lambda: node.call(lambda: node.node.core.waiters.count) == 1, "the first receive to wait")
        status, answer, _ = api.post("/receive", {"queues": ["w"], "timeout": 1.0})
        assert (status, answer["error"]["code"]) == (503, "busy")
    finally:
        waiter.join(WAIT)
        api.close()
        other.close()


def _nested(depth: int) -> list:
    outer: list = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


def test_receive_500_a_payload_nested_1000_deep_is_received_as_base64(http_node, api, client_for):
    """The /receive of an unconvertible payload: a task submitted over
    ZeroMQ whose msgpack payload is nested 1,000 deep (JSON cannot show it)
    was leased by /receive and then answered 500, left running with an
    attempt spent. Now the answer carries the payload as body_base64, and the
    task is leased once and can be acked."""
    client = client_for(f"tcp://127.0.0.1:{http_node.config.port}")
    deep = _nested(1000)
    task_id = client.submit("deep", [deep], queue="deepq", wait=True).id
    status, answer, _ = api.post("/receive", {"queues": ["deepq"]})
    assert status == 200, answer
    task = answer["task"]
    assert task["id"] == task_id and task["attempt"] == 1 and "args" not in task
    assert base64.b64decode(task["body_base64"]) == msgpack.packb([[deep], {}], use_bin_type=True)
    assert api.post(f"/tasks/{task_id}/ack", {"attempt": 1, "result": "ok"})[1] == {"ok": True}


def test_a_task_whose_answer_cannot_be_built_is_left_unleased(http_node, api, monkeypatch):
    """A safety net for a bug: if the JSON answer of a received task cannot
    be built, the task is given back at once with no attempt spent (never
    left running until its lease runs out), and the request gets a 500 that
    names the task. A later receive gets it with attempt 1."""
    task_id = submit(api, "unshown", 1)

    def broken(info: dict) -> bytes:
        raise TypeError("simulated: a header JSON cannot hold")

    monkeypatch.setattr(pull_api, "_task_answer", broken)
    status, answer, _ = api.post("/receive", {"queues": ["unshown"]})
    assert status == 500 and task_id in answer["error"]["message"], answer
    task = api.get(f"/tasks/{task_id}")[1]["task"]
    assert (task["state"], task["attempt"]) == ("ready", 0), task
    monkeypatch.undo()
    task = api.post("/receive", {"queues": ["unshown"]})[1]["task"]
    assert (task["id"], task["attempt"]) == (task_id, 1)
