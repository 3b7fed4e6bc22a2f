"""Structured HTTP fuzz: requests that follow the gateway's own OpenAPI
description (the one the node serves at ``/openapi.json``) except for one
to three fields, path parameters or query parameters given hostile values:
wrong types, out-of-range numbers, huge and odd strings (a lone UTF-16
surrogate, NUL, 70,000 characters), nested containers, extra fields.

The fault it simulates: a buggy or hostile HTTP client that speaks the API's
shape but not its rules. Every answer must be below 500, every 4xx in the
gateway's JSON error shape, and afterwards everything the node stored must
be whole (:func:`miyaq.core.invariants.problems`) and readable: the listing
of tasks, each listed task's status, the dead letters, the queues, the
workers, the metrics and the status page all answer 200.

A few hundred requests run in the suite; a long run is
``MIYAQ_HTTP_FUZZ_EXAMPLES=20000 MIYAQ_HTTP_FUZZ_SEED=N pytest tests/test_http_fuzz.py``.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import random
import socket
import urllib.parse
from typing import Any

import pytest

from gateway_harness import FIXTURES, Http, NodeThread
from miyaq.core import invariants

http_node, api, make_http_node, make_web_worker = FIXTURES

EXAMPLES = int(os.environ.get("MIYAQ_HTTP_FUZZ_EXAMPLES", "400"))
SEED = int(os.environ.get("MIYAQ_HTTP_FUZZ_SEED", "20261204"))

pytestmark = pytest.mark.timeout(max(120, EXAMPLES // 10))

#: Webhooks may go only to a loopback port nothing listens on: no request of
#: the fuzz leaves the machine, whatever URL it makes up.
ALLOWED_HOOK = "127.0.0.1:9"
#: Long-polls: a hostile timeout may make them wait; a wait is an answer.
LONG_POLLS = ("/receive", "/receive_block", "/tasks/{id}/result")
READ_TIMEOUT = 3.0

SCALARS: list[Any] = [
    None, True, False, 0, -1, 1, 7, 2**31, 2**53 + 1, 2**63, -2**63 - 1, 10**30, -10**30,
    0.5, -0.0, 1e308, -1e308, 5e-324, 86400.0 * 365 * 1000,
    "", "a", " ", "\n", "\x00", "\udc80", "\ud83d", "é" * 50, "../../etc", "%s%n", "{}", "[]",
    "null", "1e999", "-inf", "NaN", "2026-13-45T99:99:99", "2026-12-04T00:00:00Z", "0x10",
    "http://" + ALLOWED_HOOK + "/hook", "http://127.0.0.1:9/" + "p" * 3000, "http://[::1", "ftp://127.0.0.1:9/",
    "default", "dead", "ready", "running", "scheduled", "retrying", "done",
]


def hostile(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value a careless or hostile client might send."""
    roll = rng.random()
    if depth < 3 and roll < 0.12:
        return [hostile(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 200]))]
    if depth < 3 and roll < 0.22:
        return {rng.choice(["", "a", "\x00", "name", "args", "x" * 300, "1"]): hostile(rng, depth + 1)
                for _ in range(rng.choice([0, 1, 4]))}
    if roll < 0.27:
        return "x" * rng.choice([256, 5000, 70_000])
    return rng.choice(SCALARS)


def plausible(schema: dict[str, Any], rng: random.Random) -> Any:
    """A value of the schema's type (the unmutated fields of a body)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    return {"string": "q", "integer": 1, "number": 0.01, "boolean": False, "array": [], "object": {}
            }.get(kind, rng.choice([1, "v", None]))


class Spec:
    """The operations the node describes, with their body fields."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.schemas = document.get("components", {}).get("schemas", {})
        self.operations: list[tuple[str, str, dict[str, Any], list[str], list[str]]] = []
        for path, ops in document["paths"].items():
            for method, op in ops.items():
                if method not in ("get", "post", "put", "delete") or path in ("/metrics", "/openapi.json"):
                    continue
                body = self.resolve(op.get("requestBody", {}).get("content", {})
                                    .get("application/json", {}).get("schema", {}))
                params = [self.resolve(p) for p in op.get("parameters", [])]
                self.operations.append((method.upper(), path, body,
                                        [p["name"] for p in params if p.get("in") == "path"],
                                        [p["name"] for p in params if p.get("in") == "query"]))

    def resolve(self, node: Any) -> dict[str, Any]:
        while isinstance(node, dict) and "$ref" in node:
            node = self.schemas[node["$ref"].rsplit("/", 1)[-1]]
        return node if isinstance(node, dict) else {}


def make_request(spec: Spec, rng: random.Random) -> tuple[str, str, str, Any]:
    """One request: (method, path template, path with parameters, JSON body or None)."""
    method, template, schema, path_params, query_params = rng.choice(spec.operations)
    path = template
    for name in path_params:
        value = rng.choice(["t1", "default", "q"]) if rng.random() < 0.5 else str(hostile(rng))
        path = path.replace("{" + name + "}", urllib.parse.quote(value[:9000], safe="", errors="surrogatepass"))
    query = {name: str(hostile(rng))[:2000] for name in query_params if rng.random() < 0.6}
    if template in LONG_POLLS and "timeout" in query_params:
        query.setdefault("timeout", "0.01")
    if query:
        path += "?" + urllib.parse.urlencode(query, errors="surrogatepass")
    if method not in ("POST", "PUT"):
        return method, template, path, None
    if rng.random() < 0.05:
        return method, template, path, hostile(rng)
    properties = {name: spec.resolve(s) for name, s in schema.get("properties", {}).items()}
    body = {name: plausible(s, rng) for name, s in properties.items()
            if name in schema.get("required", []) or rng.random() < 0.3}
    if "url" in body:
        body["url"] = "http://" + ALLOWED_HOOK + "/hook"
    if "timeout" in properties and template in LONG_POLLS:
        body["timeout"] = 0.01
    for _ in range(rng.choice([1, 1, 2, 3])):
        if properties and rng.random() < 0.85:
            body[rng.choice(list(properties))] = hostile(rng)
        else:
            body[rng.choice(["extra", "", "x" * 100, "__proto__"])] = hostile(rng)
    return method, template, path, body


#: Charsets a body is labelled with now and then: ASCII JSON reads the same in
#: most; utf-7 and unicode_escape can spell a lone surrogate of their own.
CHARSETS = ["", "", "", "; charset=utf-8", "; charset=latin-1", "; charset=utf-7", "; charset=unicode_escape"]


def send(node: NodeThread, method: str, path: str, body: Any, charset: str = "") -> tuple[int, Any] | None:
    """Send one request on a fresh connection and read its answer; None if
    none came within READ_TIMEOUT (a long-poll doing as it was asked)."""
    data = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n"
            + (f"Content-Type: application/json{charset}\r\n" if body is not None else "") + "\r\n").encode()
    response = exchange(node, head + data)
    if response is None:
        return None
    payload = response.read()
    if (response.getheader("Content-Type") or "").startswith("application/json"):
        return response.status, json.loads(payload)
    return response.status, payload


def exchange(node: NodeThread, request: bytes) -> http.client.HTTPResponse | None:
    """Send ``request`` on a fresh connection; its parsed answer, or None if
    none came within READ_TIMEOUT. A request the gateway refuses before
    reading it all (a 413, a 414) may close the connection under the send or
    reset it after the answer: the answer is read all the same."""
    with socket.create_connection(("127.0.0.1", node.config.http_port), timeout=READ_TIMEOUT) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (socket.timeout, TimeoutError):
            if not received:
                return None
        except ConnectionResetError:
            pass
    assert received, "the connection closed without an answer"
    response = http.client.HTTPResponse(_Replay(received))
    response.begin()
    return response


class _Replay:
    """Bytes received, as the socket :class:`http.client.HTTPResponse` reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def test_requests_in_the_apis_shape_with_hostile_values_never_answer_500(make_http_node):
    """Fault: a client sending the API's shapes with hostile values (module
    docstring). No answer is 5xx, each 4xx is the JSON error shape, and what
    the node stored afterwards is whole and readable."""
    node = make_http_node(webhook_allow_hosts=ALLOWED_HOOK)
    api = Http(node.url)
    try:
        status, document, _ = api.get("/openapi.json")
        assert status == 200
        spec = Spec(document)
        assert len(spec.operations) >= 20, "the fuzz covers the API the node describes"
        rng = random.Random(SEED)
        answered: dict[int, int] = {}
        for n in range(EXAMPLES):
            method, template, path, body = make_request(spec, rng)
            answer = send(node, method, path, body, rng.choice(CHARSETS))
            if answer is None:
                assert template in LONG_POLLS, (n, method, path, body)
                continue
            status, payload = answer
            answered[status // 100] = answered.get(status // 100, 0) + 1
            assert status < 500, (n, method, path, body, status, payload)
            if status >= 400:
                assert isinstance(payload, dict) and isinstance(payload.get("error"), dict), \
                    (n, method, path, body, status, payload)
        assert answered.get(4, 0) and answered.get(2, 0), answered

        engine = node.node.core.engine
        assert node.call(lambda: invariants.problems(engine)) == []
        status, listing, _ = api.get("/tasks?limit=1000")
        assert status == 200, listing
        for task in listing["tasks"]:
            status, one, _ = api.get("/tasks/" + urllib.parse.quote(task["id"], safe=""))
            assert status == 200, (task, one)
        for path in ("/status", "/dead?limit=1000", "/queues", "/workers", "/metrics"):
            status, payload, _ = api.get(path)
            assert status == 200, (path, payload)
    finally:
        api.close()


#: The console's pages and the query parameters they read.
CONSOLE_PAGES = ["/ui", "/ui/activity.json", "/ui/queues", "/ui/workers", "/ui/ring", "/ui/task", "/ui/tasks/{id}",
                 "/ui/dead", "/ui/periodic", "/ui/login"]
CONSOLE_ARGS = ["page", "since", "ref", "queue", "next", "done", "n", "of", "q"]


def test_console_pages_and_sign_in_with_hostile_values_never_answer_500(make_http_node):
    """Fault: crafted links to the web console (hostile query and path
    parameters on every page) and sign-in forms with a hostile ``next``.
    No answer is 5xx; a redirect stays on the console."""
    node = make_http_node(webhook_allow_hosts=ALLOWED_HOOK, http_token="s3cret")
    rng = random.Random(SEED)
    for n in range(max(200, EXAMPLES // 4)):
        if rng.random() < 0.3:
            what = {"token": rng.choice(["s3cret", "wrong"]), "next": "/ui" + str(hostile(rng))[:2000]}
            form = urllib.parse.urlencode(what, errors="surrogatepass").encode()
            request = (b"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(form)) + form
        else:
            template = rng.choice(CONSOLE_PAGES)
            what = template.replace("{id}", urllib.parse.quote(str(hostile(rng))[:300], safe="",
                                                                errors="surrogatepass"))
            query = {name: str(hostile(rng))[:2000] for name in CONSOLE_ARGS if rng.random() < 0.3}
            if query:
                what += "?" + urllib.parse.urlencode(query, errors="surrogatepass")
            request = (f"GET {what} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                       "Authorization: Bearer s3cret\r\n\r\n").encode()
        response = exchange(node, request)
        assert response is not None, (n, what)
        response.read()
        location = response.getheader("Location")
        assert response.status < 500, (n, what, response.status)
        assert location is None or (location.startswith("/ui") and not location.startswith("//")), \
            (n, what, location)
