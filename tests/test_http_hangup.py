"""HTTP long-polls whose client hangs up (miyaq.gateway.hangup).

Before, a client that closed its connection while its ``/receive`` or
``/tasks/{id}/result`` long-poll waited kept its wait to the deadline (up to
an hour): a place among the node's ``max_waiters``, and for a receive, the
next task leased to nobody until its lease ran out, an attempt spent. Each
test here waits 60 s long-polls and closes the client's connection.
"""
from __future__ import annotations

import json
import socket

import pytest
from gateway_harness import FIXTURES, WAIT, Http, wait_for

from miyaq.gateway import pull_api

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)


def raw_request(url: str, method: str, path: str, body: object = None, *, then: bytes = b"") -> socket.socket:
    """Send one request on a connection of its own and return the socket
    (nothing read); ``then``: more bytes sent right after (a pipelined request)."""
    host, port = url.split("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    sock.sendall(head + data + then)
    return sock


def waiting(node) -> int:
    return node.call(lambda: node.node.core.waiters.count)


def answers_499(node) -> float:
    metric = node.node.part("metrics").http_requests
    return sum(sample.value for family in metric.collect() for sample in family.samples
               if sample.name.endswith("_total") and sample.labels.get("status") == "499")


def submit(api: Http, queue: str, **options: object) -> str:
    status, answer, _ = api.post("/tasks", {"name": "job", "queue": queue, **options})
    assert status == 202, answer
    return answer["id"]


@pytest.mark.parametrize("close", ["close", "reset"])
def test_a_receive_whose_client_hangs_up_is_dropped_and_the_next_task_goes_to_a_live_caller(http_node, api,
                                                                                             close):
    """Fault: a pull consumer's long-poll is abandoned (the process killed,
    its connection closed or reset). Its wait is dropped at once; the task
    submitted next goes to the next caller at its first attempt (before:
    leased to the dead connection until its lease ran out)."""
    sock = raw_request(http_node.url, "POST", "/receive", {"queues": ["hq"], "timeout": 60})
    wait_for(lambda: waiting(http_node) == 1, "the long-poll to wait")
    if close == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    wait_for(lambda: waiting(http_node) == 0, "the abandoned long-poll dropped")
    task_id = submit(api, "hq")
    task = api.post("/receive", {"queues": ["hq"]})[1]["task"]
    assert (task["id"], task["attempt"]) == (task_id, 1)
    wait_for(lambda: http_node.call(lambda: answers_499(http_node)) == 1, "the dropped long-poll counted as 499")


def test_a_result_wait_whose_client_hangs_up_is_dropped(http_node, api):
    """Fault: a caller waiting for a task's result goes away. Its place among
    ``max_waiters`` is free at once, and the task is untouched."""
    task_id = submit(api, "hr", countdown=3600)
    sock = raw_request(http_node.url, "GET", f"/tasks/{task_id}/result?timeout=60")
    wait_for(lambda: waiting(http_node) == 1, "the result long-poll to wait")
    sock.close()
    wait_for(lambda: waiting(http_node) == 0, "the abandoned result wait dropped")
    assert api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "scheduled"


def test_a_long_poll_whose_client_sends_more_is_not_taken_for_gone(http_node, api):
    """A client that pipelines its next request behind a long-poll has not
    hung up: the long-poll still gets the task, then the next answer comes."""
    sock = raw_request(http_node.url, "POST", "/receive", {"queues": ["hp"], "timeout": 60},
                       then=b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        wait_for(lambda: waiting(http_node) == 1, "the long-poll to wait")
        task_id = submit(api, "hp")
        received = b""
        while task_id.encode() not in received or b"/health" in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed; got {received!r}"
            received += chunk
            if received.count(b"HTTP/1.1 ") >= 2:
                break
        assert received.startswith(b"HTTP/1.1 200") and task_id.encode() in received, received[:300]
    finally:
        sock.close()


def test_a_task_leased_to_a_caller_found_gone_is_given_back_unspent(http_node, api, monkeypatch):
    """The race: the task is leased to a long-poll whose client hung up just
    then (before the wait could see it). The gateway looks once more before
    it answers: the task goes back to its queue, no attempt spent."""
    task_id = submit(api, "hg")
    monkeypatch.setattr(pull_api, "hung_up", lambda connection: connection is not None)
    status, answer, _ = api.post("/receive", {"queues": ["hg"], "timeout": 5})
    assert (status, answer["error"]["code"]) == (499, "client_closed_request")
    monkeypatch.undo()
    assert api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "ready"
    task = api.post("/receive", {"queues": ["hg"]})[1]["task"]
    assert (task["id"], task["attempt"]) == (task_id, 1)


def test_long_polls_waiting_when_the_node_stops_are_answered_shutting_down(make_http_node):
    """Fault: the node is stopped (SIGTERM) while HTTP long-polls wait -- a
    RECEIVE on an empty queue, a result of a task that has not run. Before
    2026-12-05 the gateway's server killed them at its stop timeout and
    gevent answered a bare ``500 Internal Server Error``; now each gets the
    documented 503 ``shutting_down`` with ``Retry-After``, at once."""
    node = make_http_node()
    api = Http(node.url)
    try:
        task_id = submit(api, "nobody-reads", countdown=3600)
    finally:
        api.close()
    receive = raw_request(node.url, "POST", "/receive", {"queues": ["empty"], "timeout": 30})
    result = raw_request(node.url, "GET", f"/tasks/{task_id}/result?timeout=30")
    wait_for(lambda: waiting(node) == 2, "both long-polls waiting")
    node.stop()
    for sock in (receive, result):
        with sock:
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head, answer
        assert json.loads(body)["error"]["code"] == "shutting_down"
