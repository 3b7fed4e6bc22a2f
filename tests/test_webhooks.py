"""Webhook delivery against a real local HTTP server: success, retries (5xx,
429 with Retry-After, timeouts, refused connections), dead letters (other
4xx, allow-list), keep-alive pooling and per-queue concurrency. Each fault
test's docstring names the fault the worker server simulates."""
from __future__ import annotations

import email.utils
import logging
import time

import pytest
from gateway_harness import FIXTURES, Http, free_port, wait_for

from miyaq import Client
from miyaq.gateway.outbound import Outbound, classify, parse_retry_after, request_target

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

FORM = "application/x-www-form-urlencoded"


def enqueue(api: Http, url: str, **options: object) -> str:
    body = {"url": url, "params": {"n": 1}, **options}
    status, answer, _ = api.post("/queue", body)
    assert status == 200, answer
    return answer["id"]


def task_of(api: Http, task_id: str) -> dict:
    return api.get(f"/tasks/{task_id}")[1]["task"]


def state_is(api: Http, task_id: str, state: str) -> bool:
    return task_of(api, task_id)["state"] == state


def open_node(make_http_node, **settings):
    """A node delivering to this machine's web workers (loopback: webhook_allow_private)."""
    settings.setdefault("default_backoff", 0.01)
    settings.setdefault("webhook_allow_private", True)
    node = make_http_node(**settings)
    return node, Http(node.url)


def test_2xx_completes_with_status_and_body_as_result(make_http_node, make_web_worker):
    worker = make_web_worker()
    _, api = open_node(make_http_node)
    try:
        task_id = enqueue(api, f"{worker.url}/ok")
        wait_for(lambda: state_is(api, task_id, "done"), "the task to be done")
        result = api.get(f"/tasks/{task_id}/result")[1]
        assert result["result"] == {"status": 200, "body": "ok"} and result["done"] is True
        assert worker.count() == 1
    finally:
        api.close()


def test_500_is_retried_then_succeeds(make_http_node, make_web_worker):
    """Fault: the worker answers 500 once."""
    worker = make_web_worker(script={1: (500, {}, 0.0)})
    _, api = open_node(make_http_node)
    try:
        task_id = enqueue(api, f"{worker.url}/flaky")
        wait_for(lambda: state_is(api, task_id, "done"), "the retry to succeed")
        assert [r.headers["X-Task-Retry-Count"] for r in worker.requests] == ["0", "1"]
        assert {r.headers["X-Task-Id"] for r in worker.requests} == {task_id}
        task = task_of(api, task_id)
        assert task["attempt"] == 2 and task["error"]["status"] == 500
    finally:
        api.close()


def test_429_retry_after_sets_the_next_attempt(make_http_node, make_web_worker):
    """Fault: the worker answers 429 with Retry-After: 30 (the node's own backoff is 10 ms)."""
    worker = make_web_worker(script={1: (429, {"Retry-After": "30"}, 0.0)})
    _, api = open_node(make_http_node)
    try:
        task_id = enqueue(api, f"{worker.url}/slow-down")
        wait_for(lambda: state_is(api, task_id, "retrying"), "the task to wait for its retry")
        error = task_of(api, task_id)["error"]
        assert (error["status"], error["retry_after"]) == (429, 30.0)
        assert 30.0 <= error["retry_at"] - error["failed_at"] < 31.0
        assert worker.count() == 1
        assert api.request("DELETE", f"/tasks/{task_id}")[1]["cancelled"] is True
    finally:
        api.close()


def test_503_with_retry_after_zero_retries_at_once(make_http_node, make_web_worker):
    """Fault: the worker answers 503 with Retry-After: 0."""
    worker = make_web_worker(script={1: (503, {"Retry-After": "0"}, 0.0)})
    _, api = open_node(make_http_node, default_backoff=3600.0)
    try:
        task_id = enqueue(api, f"{worker.url}/unavailable")
        wait_for(lambda: state_is(api, task_id, "done"), "the retry that Retry-After allowed")
        assert worker.count() == 2
    finally:
        api.close()


def test_retry_after_forms():
    now = time.time()
    assert parse_retry_after("7", now) == 7.0
    date = email.utils.formatdate(now + 120, usegmt=True)
    assert 118.0 <= parse_retry_after(date, now) <= 121.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    # Fault: a date whose zone offset is thousands of hours (OverflowError in
    # the standard library): ignored like any unreadable value, not raised.
    assert parse_retry_after("Mon 01 Jan 2030 00:00:00 +99999999999999", now) is None


def test_request_targets_are_what_the_wire_can_carry():
    """Hosts in other scripts go as their IDNA name, paths and queries
    outside ASCII percent-encoded; a host IDNA cannot name is a ValueError
    (the delivery's InvalidURL)."""
    assert request_target("https://bücher.example/a/café?q=ü&x=%20y") == (
        ("https", "xn--bcher-kva.example", 443), "/a/caf%C3%A9?q=%C3%BC&x=%20y")
    assert request_target("http://h:81") == (("http", "h", 81), "/")
    with pytest.raises(ValueError):
        request_target("http://" + "a" * 70 + "ü.example/")


def test_a_retry_after_of_digits_that_are_not_ascii_is_ignored():
    """Fault: a destination answers 503 with ``Retry-After: ²`` (latin-1
    superscript two; ``str.isdigit`` says yes, ``float`` says no). It raised
    ValueError, which the deliverer took for a request the HTTP client
    refused: the task was dead-lettered as ``InvalidRequest`` instead of
    retried. Now the header is ignored, as any other it cannot read."""
    now = time.time()
    for value in ("\xb2", "\xb9\xb2", "\u0661", "\uff17"):
        assert parse_retry_after(value, now) is None, value
    outcome = classify(503, "\xb2", b"busy", now)
    assert outcome.retryable and outcome.delay is None and outcome.kind == "5xx"


def test_404_goes_to_the_dead_letter_queue_without_retry(make_http_node, make_web_worker):
    """Fault: the worker answers 404."""
    worker = make_web_worker(script={1: (404, {}, 0.0)})
    _, api = open_node(make_http_node)
    try:
        task_id = enqueue(api, f"{worker.url}/gone")
        wait_for(lambda: state_is(api, task_id, "dead"), "the task to be dead")
        assert worker.count() == 1
        dead = api.get("/dead")[1]["tasks"]
        assert [t["id"] for t in dead] == [task_id] and dead[0]["error"]["status"] == 404
    finally:
        api.close()


def test_timeout_is_retried(make_http_node, make_web_worker):
    """Fault: the worker takes 1.5 s on the first request; the attempt timeout is 0.3 s."""
    worker = make_web_worker(script={1: (200, {}, 1.5)})
    _, api = open_node(make_http_node, webhook_timeout=0.3)
    try:
        task_id = enqueue(api, f"{worker.url}/sleepy")
        wait_for(lambda: state_is(api, task_id, "done"), "the second attempt")
        task = task_of(api, task_id)
        assert task["attempt"] == 2 and task["error"]["type"] == "Timeout"
        assert worker.count() == 2
    finally:
        api.close()


def test_connection_refused_is_retried_then_dead(make_http_node):
    """Fault: nothing listens on the worker's port."""
    _, api = open_node(make_http_node)
    try:
        task_id = enqueue(api, f"http://127.0.0.1:{free_port()}/nobody", max_retries=1)
        wait_for(lambda: state_is(api, task_id, "dead"), "both attempts to fail")
        task = task_of(api, task_id)
        assert task["attempt"] == 2 and task["error"]["type"] == "ConnectionError"
    finally:
        api.close()


def test_a_bug_in_delivery_fails_the_attempt_retryably_and_logs_a_few_lines_a_minute(make_http_node, monkeypatch,
                                                                                     caplog):
    """Fault: the deliverer itself raises (a bug: Outbound.send raises for
    every task). No task is lost: each attempt fails retryably as
    InternalError (here with no retries left: dead); the bug's traceback is
    logged at most five times a minute, not once a task."""
    def broken(self, task, timeout):
        raise RuntimeError("a deliverer's bug")

    monkeypatch.setattr(Outbound, "send", broken)
    caplog.set_level(logging.ERROR, logger="miyaq.gateway.webhooks")
    _, api = open_node(make_http_node)
    try:
        ids = [enqueue(api, f"http://127.0.0.1:{free_port()}/n{n}", max_retries=0) for n in range(12)]
        wait_for(lambda: all(state_is(api, i, "dead") for i in ids), "every attempt to fail")
        assert {task_of(api, i)["error"]["type"] for i in ids} == {"InternalError"}
    finally:
        api.close()
    logged = [r for r in caplog.records if r.name == "miyaq.gateway.webhooks"]
    assert len(logged) == 5 and all("failed unexpectedly" in r.getMessage() and r.exc_info for r in logged)


def test_a_huge_answer_is_cut_and_its_connection_dropped(make_http_node, make_web_worker):
    """Fault: the worker answers 2xx with a 300 KB body."""
    worker = make_web_worker(script={1: (200, {}, 0.0, b"x" * 300_000)})
    _, api = open_node(make_http_node, webhook_concurrency=1)
    try:
        first = enqueue(api, f"{worker.url}/big")
        second = enqueue(api, f"{worker.url}/small")
        wait_for(lambda: state_is(api, first, "done") and state_is(api, second, "done"), "both deliveries")
        result = api.get(f"/tasks/{first}/result")[1]["result"]
        assert result["status"] == 200 and result["body"] == "x" * 1024
        assert worker.requests[0].peer_port != worker.requests[1].peer_port   # a fresh connection
    finally:
        api.close()


def test_connections_are_kept_alive(make_http_node, make_web_worker):
    worker = make_web_worker()
    _, api = open_node(make_http_node, webhook_concurrency=1)
    try:
        ids = [enqueue(api, f"{worker.url}/k") for _ in range(5)]
        wait_for(lambda: all(state_is(api, i, "done") for i in ids), "five deliveries")
        assert worker.count() == 5
        assert len({r.peer_port for r in worker.requests}) == 1   # one TCP connection for all five
    finally:
        api.close()


def test_concurrency_is_per_queue(make_http_node, make_web_worker):
    worker = make_web_worker(hold=0.3)
    _, api = open_node(make_http_node, webhook_concurrency=3)
    try:
        ids = [enqueue(api, f"{worker.url}/c", queue=q) for q in ("a", "b") for _ in range(6)]
        wait_for(lambda: all(state_is(api, i, "done") for i in ids), "twelve deliveries")
        assert worker.count() == 12
        assert worker.max_in_flight == 6    # 3 per queue, both queues at once
    finally:
        api.close()


def test_cancel_aborts_a_delivery_in_flight(make_http_node, make_web_worker):
    worker = make_web_worker(hold=3.0)
    _, api = open_node(make_http_node)
    try:
        task_id = enqueue(api, f"{worker.url}/long")
        wait_for(lambda: worker.count() == 1, "the delivery to start")
        assert api.request("DELETE", f"/tasks/{task_id}")[1] == {"id": task_id, "cancelled": True,
                                                                 "state": "running"}
        wait_for(lambda: api.get("/status")[1]["webhooks"]["in_flight"]["default"] == 0,
                 "the delivery greenlet to be killed")
        assert task_of(api, task_id)["state"] == "cancelled"
    finally:
        api.close()


def test_webhook_submitted_over_zeromq_keeps_its_headers(make_http_node, make_web_worker):
    worker = make_web_worker()
    node, api = open_node(make_http_node)
    client = Client(f"tcp://127.0.0.1:{node.config.port}")
    try:
        handle = client.submit_url(f"{worker.url}/zmq", body=b'{"a": 1}', method="PATCH", wait=True,
                                   headers={"Content-Type": "application/json", "X-Tenant": "t9",
                                            "Content-Length": "999", "Connection": "close"})
        wait_for(lambda: state_is(api, handle.id, "done"), "the delivery")
        req = worker.requests[0]
        assert (req.method, req.body, req.headers["X-Tenant"]) == ("PATCH", b'{"a": 1}', "t9")
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["Content-Length"] == "8"        # framing headers are the node's, not the task's
    finally:
        client.close()
        api.close()


def test_allow_list_is_checked_before_every_delivery(make_http_node, make_web_worker):
    """Fault: a producer on ZeroMQ (which bypasses the HTTP check) targets a host not allowed."""
    worker = make_web_worker()
    node, api = open_node(make_http_node, webhook_allow_hosts="*.example.org")
    client = Client(f"tcp://127.0.0.1:{node.config.port}")
    try:
        handle = client.submit_url(f"{worker.url}/internal", body=b"x", wait=True)
        wait_for(lambda: state_is(api, handle.id, "dead"), "the task to be refused")
        assert task_of(api, handle.id)["error"]["type"] == "ForbiddenDestination"
        assert worker.count() == 0
    finally:
        client.close()
        api.close()
