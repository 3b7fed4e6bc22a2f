"""Operating a node over HTTP: status, queues, limits, the dead-letter
queue, routing errors and bearer-token authentication."""
from __future__ import annotations

import zmq
from gateway_harness import FIXTURES, Http, wait_for

from miyaq.protocol import codec
from miyaq.protocol import commands as c

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals
TOKEN = "s3cret-token-0123456789"    # http_token: 16 characters or more


def make_dead(api: Http, queue: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        task_id = api.post("/tasks", {"name": "job", "queue": queue})[1]["id"]
        task = api.post("/receive", {"queues": [queue]})[1]["task"]
        assert api.post(f"/tasks/{task_id}/nack", {"attempt": task["attempt"], "retry": False})[1]["ok"]
        ids.append(task_id)
    return ids


def test_status_shows_node_ring_and_queues(http_node, api):
    ctx = zmq.Context()
    worker = ctx.socket(zmq.DEALER)
    worker.setsockopt(zmq.LINGER, 0)
    try:
        worker.connect(f"tcp://127.0.0.1:{http_node.config.port}")
        worker.send_multipart(codec.encode(c.READY, {"worker": "w1", "queues": ["st"], "capacity": 4}))
        api.post("/tasks", {"name": "job", "queue": "st", "countdown": 600})
        wait_for(lambda: "st" in api.get("/status")[1]["queues"]
                 and api.get("/status")[1]["queues"]["st"]["workers"] == 1, "the worker to register")
        status = api.get("/status")[1]
        assert (status["node"], status["accepting"]) == ("t1", True)
        assert status["ring"] == {"epoch": 1, "leader": "t1", "members": ["t1"], "is_leader": True,
                                  "http": {"t1": http_node.url}}
        row = status["queues"]["st"]
        assert (row["scheduled"], row["workers"], row["idle"], row["limits"]) == (1, 1, 4, None)
        assert status["totals"]["workers"] == 1
    finally:
        worker.close(0)
        ctx.term()


def test_one_queues_row_counts_the_idle_slots_of_its_workers_only(http_node, api):
    """``GET /queues/{q}`` counts idle slots over the workers that serve q
    alone (it read every worker's queues for every queue before: ~90 ms at
    10,000 workers) and says what the whole view says of q."""
    ctx = zmq.Context()
    sockets = []
    try:
        for wid, queues, capacity in (("w1", ["ia"], 4), ("w2", ["ia", "ib"], 3), ("w3", ["ib"], 5)):
            worker = ctx.socket(zmq.DEALER)
            worker.setsockopt(zmq.LINGER, 0)
            worker.connect(f"tcp://127.0.0.1:{http_node.config.port}")
            worker.send_multipart(codec.encode(c.READY, {"worker": wid, "queues": queues, "capacity": capacity}))
            sockets.append(worker)
        wait_for(lambda: api.get("/status")[1]["totals"]["workers"] == 3, "the workers to register")
        rows = {r["name"]: r for r in api.get("/queues")[1]["queues"]}
        assert (rows["ia"]["idle"], rows["ib"]["idle"]) == (7, 8)
        assert api.get("/queues/ia")[1] == rows["ia"]
        assert api.get("/queues/ib")[1] == rows["ib"]
        assert (api.get("/queues/ic")[1]["idle"], api.get("/queues/ic")[1]["workers"]) == (0, 0)
        workers = http_node.node.core.workers
        assert http_node.call(lambda: workers.idle_by_queue(only="ia")) == {"ia": 7}
        assert http_node.call(lambda: workers.idle_by_queue(only="ic")) == {}
    finally:
        for worker in sockets:
            worker.close(0)
        ctx.term()


def test_queues_and_one_queue(api):
    api.post("/tasks", {"name": "job", "queue": "qa"})
    api.post("/tasks", {"name": "job", "queue": "qb", "countdown": 600})
    api.request("PUT", "/queues/qc/limits", {"max_concurrent": 3})
    rows = {r["name"]: r for r in api.get("/queues")[1]["queues"]}
    assert set(rows) == {"qa", "qb", "qc"}
    assert (rows["qa"]["ready"], rows["qb"]["scheduled"], rows["qc"]["limits"]["max_concurrent"]) == (1, 1, 3)
    one = api.get("/queues/qa")[1]
    assert one == rows["qa"]
    assert api.get("/queues/unused")[1]["ready"] == 0
    assert api.get("/queues/bad@q")[1]["error"]["field"] == "queue"


def test_limits_get_put_delete_and_errors(api):
    assert api.get("/queues/lq/limits")[1] == {"queue": "lq", "limits": None}
    status, body, _ = api.request("PUT", "/queues/lq/limits", {"rate": 50, "burst": 10, "max_concurrent": 4})
    assert status == 200
    assert body["limits"] == {"rate": 50.0, "burst": 10.0, "max_concurrent": 4, "node_share": 1.0, "tokens": 10.0}
    assert api.get("/queues/lq/limits")[1] == body
    assert api.request("DELETE", "/queues/lq/limits")[1] == {"queue": "lq", "removed": True}
    assert api.request("DELETE", "/queues/lq/limits")[1] == {"queue": "lq", "removed": False}
    for limits, field in (({"burst": 3}, "burst"), ({"rate": -1}, "rate"), ({"rate": "fast"}, "rate"),
                          ({"max_concurrent": 1.5}, "max_concurrent"), ({}, "rate"), ({"speed": 1}, "speed")):
        status, body, _ = api.request("PUT", "/queues/lq/limits", limits)
        assert (status, body["error"]["field"]) == (400, field), limits


def test_dead_letters_list_retry_purge(api):
    ids = make_dead(api, "dl", 3)
    other = make_dead(api, "dl2", 1)
    listed = api.get("/dead?queue=dl")[1]["tasks"]
    assert [t["id"] for t in listed] == ids and all(t["state"] == "dead" for t in listed)
    assert len(api.get("/dead?limit=2")[1]["tasks"]) == 2
    assert api.post("/dead/retry", {"ids": [ids[0], "unknown"]})[1] == {"retried": [ids[0]]}
    assert api.get(f"/tasks/{ids[0]}")[1]["task"]["state"] == "ready"
    assert api.post("/dead/retry", {"queue": "dl2"})[1] == {"retried": other}
    assert api.post("/dead/purge", {"queue": "dl"})[1] == {"purged": 2}
    assert api.get("/dead")[1]["tasks"] == []
    assert api.post("/dead/purge", {"color": "red"})[1]["error"]["field"] == "color"
    assert api.post("/dead/retry", {"ids": "all"})[1]["error"]["field"] == "ids"
    assert api.get("/dead?queue=a/b")[1]["error"]["field"] == "queue"


def test_unknown_path_and_wrong_method(api):
    status, body, _ = api.get("/nowhere")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, headers = api.get("/queue")
    assert (status, body["error"]["code"], headers["allow"]) == (405, "method_not_allowed", "POST")
    status, body, headers = api.request("PATCH", "/tasks/abc")
    assert (status, headers["allow"]) == (405, "DELETE, GET, HEAD")


def test_bearer_token_guards_every_endpoint(make_http_node):
    node = make_http_node(http_token=TOKEN)
    anonymous, wrong, right = Http(node.url), Http(node.url, token="guess"), Http(node.url, token=TOKEN)
    try:
        for path in ("/status", "/metrics", "/openapi.json", "/nowhere"):
            status, body, headers = anonymous.get(path)
            assert (status, body["error"]["code"]) == (401, "unauthorized"), path
            assert headers["www-authenticate"].startswith("Bearer")
        assert wrong.post("/queue", raw=b"task.url=http://h/x",
                          content_type="application/x-www-form-urlencoded")[0] == 401
        assert right.get("/status")[0] == 200
        assert right.get("/metrics")[0] == 200
    finally:
        for client in (anonymous, wrong, right):
            client.close()


def test_no_access_log_line_is_formatted_for_a_request(http_node, api, monkeypatch):
    """Cost: the node keeps no access log (requests are counted in the
    metrics), yet pywsgi formatted a line for every request -- a datetime
    and a string -- only to throw it away: 3.5% of a busy node's CPU. No
    request formats one now."""
    from gevent.pywsgi import WSGIHandler

    formatted: list[str] = []
    real = WSGIHandler.format_request
    monkeypatch.setattr(WSGIHandler, "format_request", lambda self: formatted.append("line") or real(self))
    for _ in range(3):
        assert api.get("/status")[0] == 200
    assert api.post("/tasks", {"name": "job", "queue": "log"})[0] == 202
    assert formatted == []
