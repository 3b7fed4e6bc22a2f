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

Two more passes: crafted links to the web console and sign-ins with a
hostile ``next`` (never a 5xx, a redirect never leaves the console), and
webhook destinations answering broken HTTP (:class:`GarbageDestination`:
every task ends done or dead, nothing stored breaks).

A few hundred requests run in the suite; a long run is
``MIYAQ_HTTP_FUZZ_EXAMPLES=20000 MIYAQ_HTTP_FUZZ_SEED=N pytest tests/test_http_fuzz.py``.
"""
from __future__ import annotations

import http.client
import io
import json
import logging
import os
import random
import socket
import threading
import urllib.parse
from typing import Any

import pytest

from gateway_harness import FIXTURES, Http, NodeThread, wait_for
from loopback_server import read_head
from miyaq.core import invariants

http_node, api, make_http_node, make_web_worker = FIXTURES

EXAMPLES = int(os.environ.get("MIYAQ_HTTP_FUZZ_EXAMPLES", "400"))
SEED = int(os.environ.get("MIYAQ_HTTP_FUZZ_SEED", "20261204"))

#: The webhook pass: attempts per task (max_retries 2), the longest one, and
#: deliveries in flight; its tasks may all take every attempt to its end.
HOOK_ATTEMPTS, HOOK_TIMEOUT, HOOK_CONCURRENCY = 3, 2.0, 16
HOOK_TASKS = max(60, EXAMPLES // 5)
HOOK_BUDGET = 30.0 + HOOK_TASKS * HOOK_ATTEMPTS * HOOK_TIMEOUT / HOOK_CONCURRENCY

pytestmark = pytest.mark.timeout(max(120, EXAMPLES // 10) + HOOK_BUDGET)

#: Webhooks may go only to a loopback port nothing listens on: no request of
#: the fuzz leaves the machine, whatever URL it makes up.
ALLOWED_HOOK = "127.0.0.1:9"
TOKEN = "s3cret-token-0123456789"    # http_token: 16 characters or more
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

        api.close()          # idle through a long run: the server may have closed it
        api = Http(node.url)
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
    node = make_http_node(webhook_allow_hosts=ALLOWED_HOOK, http_token=TOKEN)
    rng = random.Random(SEED)
    for n in range(max(200, EXAMPLES // 4)):
        if rng.random() < 0.3:
            what = {"token": rng.choice([TOKEN, "wrong"]), "next": "/ui" + str(hostile(rng))[:2000]}
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
                       f"Authorization: Bearer {TOKEN}\r\n\r\n").encode()
        response = exchange(node, request)
        assert response is not None, (n, what)
        response.read()
        location = response.getheader("Location")
        assert response.status < 500, (n, what, response.status)
        assert location is None or (location.startswith("/ui") and not location.startswith("//")), \
            (n, what, location)


class GarbageDestination:
    """A webhook destination answering every request with a response from a
    seeded generator of broken and hostile HTTP: status lines out of range
    or malformed, Content-Length negative, huge or wrong, chunked bodies
    with bad sizes, hostile ``Retry-After`` values (Unicode digits, huge
    numbers, dates out of range), bodies not UTF-8, a connection closed
    mid-answer. It reads each request's head (the body, if any, is small)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.answered = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while read_head(conn) is not None:
                    with self.lock:
                        answer, close = self._garbage()
                        self.answered += 1
                    conn.sendall(answer)
                    if close:
                        return
            except OSError:
                return

    def _garbage(self) -> tuple[bytes, bool]:
        rng = self.rng
        status = rng.choice([b"200", b"204", b"299", b"301", b"404", b"429", b"500", b"503", b"600", b"999",
                             b"099", b"-1", b"2OO", b"", b"20000000000000000000"])
        line = rng.choice([b"HTTP/1.1 %s OK\r\n", b"HTTP/1.0 %s\r\n", b"HTTP/9.9 %s x\r\n", b"%s\r\n",
                           b"HTTP/1.1 %s \xff\xfe\r\n"]) % status
        body = rng.choice([b"", b"ok", b"\xff\xfe\xfd", "é€".encode("utf-16"), b"\x00" * 100,
                           b"x" * rng.choice([10, 5000, 300_000])])
        headers = []
        length = rng.choice(["exact", "none", "negative", "huge", "short", "long", "junk", "chunked", "badchunk"])
        if length == "exact":
            headers.append(b"Content-Length: %d" % len(body))
        elif length == "negative":
            headers.append(b"Content-Length: -5")
        elif length == "huge":
            headers.append(b"Content-Length: 99999999999999999999")
        elif length == "short":
            headers.append(b"Content-Length: %d" % max(0, len(body) - 1))
        elif length == "long":
            headers.append(b"Content-Length: %d" % (len(body) + 10))
        elif length == "junk":
            headers.append(b"Content-Length: 1e3")
        elif length in ("chunked", "badchunk"):
            headers.append(b"Transfer-Encoding: chunked")
            size = b"%x" % len(body) if length == "chunked" else rng.choice([b"zz", b"-1", b"FFFFFFFFFFFFFFFFFF"])
            body = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
        if rng.random() < 0.5:
            headers.append(b"Retry-After: " + rng.choice(
                ["1", "0", "\xb2", "\xb9\xb2", "9" * 400, "-3", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT",
                 "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT", "\xff\xff", ""]).encode("latin-1"))
        if rng.random() < 0.2:
            headers.append(rng.choice([b"X-A: " + b"a" * 70_000, b"Bad Header", b": empty", b"X-Null: \x00"]))
        close = rng.random() < 0.3
        if close:
            headers.append(b"Connection: close")
        answer = line + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
        if rng.random() < 0.1:
            answer = answer[:rng.randrange(1, len(answer) + 1)]      # cut mid-answer
            close = True
        return answer, close

    def close(self) -> None:
        self.server.close()


def test_webhook_destinations_answering_garbage_end_every_task_and_break_nothing(make_http_node, caplog):
    """Fault: webhook destinations answering with broken and hostile HTTP
    (:class:`GarbageDestination`). Every delivery ends as an outcome the
    task can hold (done, retried, dead-lettered) and none as the deliverer's
    own failure; no task is left stuck, what the node stored stays whole and
    readable, and the node still serves."""
    caplog.set_level(logging.ERROR, logger="miyaq.gateway.webhooks")
    destination = GarbageDestination(SEED)
    node = make_http_node(webhook_allow_hosts=f"127.0.0.1:{destination.port}", default_backoff=0.01,
                          webhook_timeout=HOOK_TIMEOUT, webhook_concurrency=HOOK_CONCURRENCY)
    api = Http(node.url)
    try:
        tasks = HOOK_TASKS
        ids = []
        for n in range(tasks):
            status, answer, _ = api.post("/queue", {"url": f"http://127.0.0.1:{destination.port}/hook/{n}",
                                                    "max_retries": HOOK_ATTEMPTS - 1, "backoff": 0.01})
            assert status == 200, answer
            ids.append(answer["id"])

        def settled(task: dict[str, Any]) -> bool:
            """Done, dead, or parked by a long Retry-After (honoured up to a day)."""
            error = task.get("error") or {}
            return task["state"] in ("done", "dead") or (
                task["state"] == "retrying" and error.get("retry_after", 0) > HOOK_BUDGET)

        def ended() -> bool:
            return all(settled(api.get("/tasks/" + task_id)[1]["task"]) for task_id in ids)

        wait_for(ended, "every webhook task to end", timeout=HOOK_BUDGET)
        engine = node.node.core.engine
        assert node.call(lambda: invariants.problems(engine)) == []
        for task_id in ids:
            status, result, _ = api.get(f"/tasks/{task_id}/result")
            assert status == 200, result
        for path in ("/status", "/dead?limit=1000", "/metrics"):
            assert api.get(path)[0] == 200, path
        assert destination.answered >= tasks
        assert [r.getMessage() for r in caplog.records if r.name == "miyaq.gateway.webhooks"] == []
    finally:
        api.close()
        destination.close()
