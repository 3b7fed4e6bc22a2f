"""docs/openapi.json lists the answers the gateway's server gives any
request, on every operation: 400, 401, 403 (a foreign Host, another site's
request), 408, 414, 431 and 503 (too many connections); and on every POST,
PUT and DELETE also 413 and 415 (a form body, docs/http.md "Content
types"). Each is checked here against a real answer: the status declared,
the body valid."""
from __future__ import annotations

import json
import socket
from typing import Any

import jsonschema
import pytest
from gateway_harness import FIXTURES, Http, NodeThread, connect_from, read_all, wait_for

from miyaq.gateway.openapi import COMMON, WITH_BODY, build
from miyaq.gateway.permissions import is_open

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

DOC = build()
OPERATIONS = [(path, method, operation) for path, item in DOC["paths"].items() for method, operation in item.items()]


def check(template: str, method: str, status: int, body: bytes) -> None:
    """``status`` is declared for the operation and ``body`` validates."""
    responses = DOC["paths"][template][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}, which it does not declare"
    schema = {**responses[str(status)]["content"]["application/json"]["schema"], "components": DOC["components"]}
    jsonschema.validate(json.loads(body), schema, cls=jsonschema.Draft202012Validator)


def split_answer(data: bytes) -> tuple[int, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("path,method,operation", OPERATIONS, ids=[f"{m} {p}" for p, m, _ in OPERATIONS])
def test_every_operation_lists_the_servers_own_answers(path, method, operation):
    """Fault: operations left out answers the server gives them: 415 on
    POST/PUT/DELETE endpoints that read no body, 403 on /openapi.json, 408
    and 503 nearly everywhere."""
    codes = set(COMMON) | (set(WITH_BODY) if method in ("post", "put", "delete") else set())
    if is_open(path):
        codes.discard(401)       # the health probes ask for no token
        assert 401 not in {int(code) for code in operation["responses"]}
    assert codes <= {int(code) for code in operation["responses"]}
    assert list(operation["responses"]) == sorted(operation["responses"])


def test_form_bodies_are_answered_415_as_documented(make_http_node):
    """Fault: a DELETE or a POST that reads no body answered 415 to a form
    body, which its operation did not declare."""
    node = make_http_node()
    client = Http(node.url)
    form = "application/x-www-form-urlencoded"
    try:
        for method, template, path, content_type in [
            ("DELETE", "/tasks/{id}", "/tasks/x", form),
            ("DELETE", "/queues/{queue}/limits", "/queues/q/limits", form),
            ("POST", "/queues/{queue}/pause", "/queues/q/pause", form),
            ("POST", "/queues/{queue}/resume", "/queues/q/resume", "text/plain"),
            ("POST", "/tasks/{id}/touch", "/tasks/x/touch", form),
            ("PUT", "/queues/{queue}/limits", "/queues/q/limits", "multipart/form-data; boundary=x"),
        ]:
            status, answer, _ = client.request(method, path, raw=b"a=1", content_type=content_type)
            assert status == 415, (method, path, answer)
            check(template, method, status, json.dumps(answer).encode())
    finally:
        client.close()


def test_a_foreign_host_is_answered_403_as_documented(make_http_node):
    """Fault: GET /openapi.json answered 403 to a Host an open gateway does
    not answer to (DNS rebinding), which its operation did not declare."""
    node = make_http_node()
    client = Http(node.url)
    try:
        for template in ("/openapi.json", "/metrics", "/status"):
            status, answer, _ = client.request("GET", template, headers={"Host": "evil.example"})
            assert status == 403, answer
            check(template, "GET", status, json.dumps(answer).encode())
    finally:
        client.close()


def test_one_connection_too_many_is_answered_503_as_documented(make_http_node, sockets):
    """Fault: the 503 ``busy`` of a client over http_max_client_connections
    was declared by few operations (not GET /status nor /openapi.json)."""
    node: NodeThread = make_http_node(http_max_client_connections=1)
    held = connect_from(node, "127.0.0.2", sockets)
    held.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")       # never finished
    server = node.call(lambda: node.node.part("gateway").server)
    wait_for(lambda: node.call(lambda: server.clients.get("127.0.0.2")) == 1, "the held connection counted")
    for template in ("/status", "/openapi.json"):
        extra: socket.socket = connect_from(node, "127.0.0.2", sockets)
        extra.sendall(f"GET {template} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status, body = split_answer(read_all(extra))
        assert status == 503 and b'"busy"' in body, body
        check(template, "GET", status, body)


def test_a_body_that_stops_arriving_is_answered_408_as_documented(make_http_node, sockets):
    """Fault: PUT /queues/{queue}/limits (and most operations) did not
    declare the 408 of a body that stops arriving."""
    node = make_http_node(http_body_timeout=0.3)
    sock = connect_from(node, "127.0.0.2", sockets)
    sock.sendall(b"PUT /queues/q/limits HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"rate\": ")
    status, body = split_answer(read_all(sock))
    assert status == 408, body
    check("/queues/{queue}/limits", "PUT", status, body)


#: The operations that wait for the node's log (docs/http.md, "What waits for
#: the log"; a submit's acknowledgement): (method, template, path, body).
WAIT_FOR_THE_LOG = [
    ("POST", "/tasks", "/tasks", {"name": "n", "id": "s1"}),
    ("POST", "/queue", "/queue", {"url": "http://127.0.0.1:9/hook", "id": "w1", "countdown": 3600}),
    ("POST", "/queue/{queue}", "/queue/hooks", {"url": "http://127.0.0.1:9/hook", "id": "w2", "countdown": 3600}),
    ("DELETE", "/tasks/{id}", "/tasks/c1", None),
    ("POST", "/tasks/{id}/ack", "/tasks/r1/ack", {"attempt": 1, "result": 5}),
    ("POST", "/tasks/{id}/nack", "/tasks/r2/nack", {"attempt": 1, "error": "boom"}),
    ("POST", "/dead/retry", "/dead/retry", {"ids": ["d1"]}),
    ("POST", "/dead/purge", "/dead/purge", {"ids": ["d2"]}),
]


def test_a_log_that_does_not_take_a_change_is_answered_504_as_documented(make_http_node, monkeypatch):
    """Fault: the 504 ``timeout`` of docs/http.md's error table (a submit
    not acknowledged, or a cancel, ack, nack, dead-letter retry or purge
    made but not in the node's log within 10 s: a slow or failing disk) was
    declared by no operation of docs/openapi.json, so a generated client
    met an answer its API did not have. Simulated: the node's log never
    confirms a write (its ``ack_gate`` holds every callback), the wait cut
    to 0.2 s."""
    for module in ("submit", "tasks_api", "pull_api", "admin_api"):
        monkeypatch.setattr(f"miyaq.gateway.{module}.HTTP_ACK_WAIT", 0.2)
    node = make_http_node(webhook_allow_private=True)
    endpoint = node.node.core.endpoint
    client = Http(node.url)
    held: list[Any] = []
    try:
        client.post("/tasks", {"name": "n", "id": "c1", "countdown": 3600})
        for task_id, queue in (("r1", "pull"), ("r2", "pull"), ("d1", "dead"), ("d2", "dead")):
            assert client.post("/tasks", {"name": "n", "id": task_id, "queue": queue, "max_retries": 0})[0] == 202
        for _ in range(4):
            status, answer, _ = client.post("/receive", {"queues": ["pull", "dead"]})
            assert status == 200 and answer["task"] is not None, answer
        for task_id in ("d1", "d2"):
            assert client.post(f"/tasks/{task_id}/nack", {"attempt": 1, "retry": False})[1] == {"ok": True}
        node.call(lambda: setattr(endpoint, "ack_gate", held.append))
        for method, template, path, body in WAIT_FOR_THE_LOG:
            status, answer, headers = client.request(method, path, body)
            assert (status, answer["error"]["code"]) == (504, "timeout"), (method, path, answer)
            check(template, method, status, json.dumps(answer).encode())
    finally:
        node.call(lambda: setattr(endpoint, "ack_gate", None))
        for release in held:
            node.call(release)
        client.close()
