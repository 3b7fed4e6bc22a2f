"""docs/openapi.json lists the answers the gateway's server gives any
request, on every operation: 400, 401, 403 (a foreign Host, another site's
request), 408, 414, 431 and 503 (too many connections); and on every POST,
PUT and DELETE also 413 and 415 (a form body, docs/http.md "Content
types"). Each is checked here against a real answer: the status declared,
the body valid."""
from __future__ import annotations

import json
import socket

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
