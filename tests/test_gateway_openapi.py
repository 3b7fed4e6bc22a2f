"""docs/openapi.json is the document the node serves, lists exactly the
routes the node has, and every real response (success and error) of every
endpoint validates against it (jsonschema, draft 2020-12 as OpenAPI 3.1)."""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import jsonschema
import pytest
import zmq
from gateway_harness import FIXTURES, Http, wait_for

from miyaq.gateway.openapi import build
from miyaq.protocol import codec
from miyaq.protocol import commands as c

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

DOC_PATH = pathlib.Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return json.loads(DOC_PATH.read_text())


def test_docs_copy_is_the_served_document(make_http_node, doc):
    assert doc == build(), "docs/openapi.json is stale: python -m miyaq.gateway.openapi > docs/openapi.json"
    node = make_http_node()
    api = Http(node.url)
    try:
        status, served, _ = api.get("/openapi.json")
        assert status == 200 and served == doc
        routes = node.call(lambda: {(r.method.lower(), r.template) for r in node.node.part("gateway").router.routes
                                    if not r.template.startswith("/ui")})   # the HTML console: docs/console.md
    finally:
        api.close()
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert routes == documented


class Checker:
    """Calls endpoints by template and validates each answer against the document."""

    def __init__(self, api: Http, doc: dict[str, Any]) -> None:
        self.api = api
        self.doc = doc
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, method: str, template: str, body: Any = None, query: str = "", *,
                 raw: bytes | None = None, content_type: str | None = None, **params: str) -> tuple[int, Any]:
        path = template.format(**params) + (("?" + query) if query else "")
        status, answer, headers = self.api.request(method, path, body, raw=raw, content_type=content_type)
        responses = self.doc["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {template} answered {status}, not documented: {answer}"
        content = responses[str(status)]["content"]
        media = headers["content-type"].split(";")[0]
        assert media in content, f"{method} {template} {status} answered {media}"
        if media == "application/json":
            schema = {**content[media]["schema"], "components": self.doc["components"]}
            jsonschema.validate(answer, schema, cls=jsonschema.Draft202012Validator)
        self.seen.add((method.lower(), template, status))
        return status, answer


def test_every_operation_has_an_operation_id_a_generator_can_name_a_method_by(doc):
    """Fault: no operation had an ``operationId``. Client generators name
    their methods by it: some refuse a document without them (AutoRest:
    "OperationId is required for all operations"; openapi-python-generator:
    "OperationId is not defined for post"), others make names of the path
    (``QueuesQueueLimitsPut``) that change when a path does. Each operation
    now has one: unique, an identifier in every language (letters and
    digits, a lower-case letter first)."""
    ids = [(path, method, operation.get("operationId"))
           for path, item in doc["paths"].items() for method, operation in item.items()]
    missing = [(path, method) for path, method, op_id in ids if op_id is None]
    assert missing == [], f"operations without an operationId: {missing}"
    names = [op_id for _, _, op_id in ids]
    assert len(set(names)) == len(names), names
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", name) for name in names), names


def test_every_endpoint_answers_as_documented(make_http_node, make_web_worker, doc):
    worker = make_web_worker(script={1: (404, {}, 0.0)})
    node = make_http_node(webhook_allow_private=True)
    api = Http(node.url)
    call = Checker(api, doc)
    try:
        # webhooks
        _, sched = call("POST", "/queue", raw=f"task.url={worker.url}/w&a=1".encode(),
                        content_type="application/x-www-form-urlencoded")
        # The worker answers its first request 404: wait for that dead letter
        # before enqueueing the next webhook, so the two cannot race.
        wait_for(lambda: api.get(f"/tasks/{sched['id']}")[1]["task"]["state"] == "dead", "a dead letter")
        call("POST", "/queue/{queue}", {"url": f"{worker.url}/j", "params": {"b": 2}}, queue="jq")
        call("POST", "/queue", {"url": "ftp://x"})
        call("POST", "/queue", raw=b"x", content_type="text/plain")
        call("POST", "/queue/{queue}", {"url": f"{worker.url}/j"}, queue="bad@queue")
        # tasks
        _, sub = call("POST", "/tasks", {"name": "job", "queue": "oq", "args": [1]})
        call("POST", "/tasks", {"name": "job", "id": "held", "countdown": 600})
        call("POST", "/tasks", {"nope": 1})
        call("GET", "/tasks", query="queue=oq")
        call("GET", "/tasks", query="state=bogus")
        call("GET", "/tasks/{id}", id=sub["id"])
        call("GET", "/tasks/{id}", id=sched["id"])
        call("GET", "/tasks/{id}", id="missing")
        call("GET", "/tasks/{id}/result", id=sub["id"])
        call("GET", "/tasks/{id}/result", query="timeout=x", id=sub["id"])
        call("GET", "/tasks/{id}/result", id="missing")
        call("DELETE", "/tasks/{id}", id="held")
        call("DELETE", "/tasks/{id}", id="missing")
        # pull
        _, got = call("POST", "/receive", {"queues": ["oq"]})
        call("POST", "/receive", {"queues": "oq"})
        call("POST", "/receive_noblock", {"queues": ["oq"]})
        call("POST", "/receive_block", {"queues": ["oq"], "timeout": 0.1})
        call("POST", "/tasks/{id}/touch", id=got["task"]["id"])
        call("POST", "/tasks/{id}/ack", {"attempt": "x"}, id=got["task"]["id"])
        call("POST", "/tasks/{id}/ack", {"attempt": got["task"]["attempt"], "result": {"r": 1}}, id=sub["id"])
        call("GET", "/tasks/{id}/result", id=sub["id"])
        _, sub2 = call("POST", "/tasks", {"name": "job", "queue": "oq"})
        _, got2 = call("POST", "/receive", {"queues": ["oq"]})
        call("POST", "/tasks/{id}/nack", {"attempt": got2["task"]["attempt"], "retry": False}, id=sub2["id"])
        call("POST", "/tasks/{id}/nack", {"attempt": 1, "retry": 3}, id=sub2["id"])
        call("GET", "/tasks/{id}/result", id=sub2["id"])
        # operating
        call("GET", "/status")
        call("GET", "/queues")
        call("GET", "/queues/{queue}", queue="oq")
        call("GET", "/queues/{queue}", queue="a@b")
        call("PUT", "/queues/{queue}/limits", {"rate": 5, "max_concurrent": 2}, queue="oq")
        call("PUT", "/queues/{queue}/limits", {"burst": 5}, queue="oq")
        call("GET", "/queues/{queue}/limits", queue="oq")
        call("GET", "/queues", )
        call("GET", "/status")
        call("DELETE", "/queues/{queue}/limits", queue="oq")
        call("GET", "/queues/{queue}/limits", queue="oq")
        call("POST", "/queues/{queue}/pause", queue="oq")
        call("GET", "/queues/{queue}", queue="oq")
        call("POST", "/queues/{queue}/pause", queue="a@b")
        call("POST", "/queues/{queue}/resume", queue="oq")
        call("POST", "/queues/{queue}/resume", queue="a@b")
        call("GET", "/workers")
        call("GET", "/workers", query="limit=0")
        call("GET", "/dead")
        call("GET", "/dead", query="limit=0")
        call("POST", "/dead/retry", {"ids": [sub2["id"]]})
        call("POST", "/dead/retry", {"ids": 5})
        call("POST", "/dead/purge", {"queue": "default"})
        call("POST", "/dead/purge", {"queue": 5})
        call("GET", "/metrics")
        call("GET", "/openapi.json")
        call("GET", "/livez")
        call("GET", "/readyz")
    finally:
        api.close()
    # every documented success answer was produced and checked
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            ok = min(int(s) for s in operation["responses"])
            assert (method, path, ok) in call.seen, f"{method.upper()} {path} {ok} not exercised"


def test_auth_errors_match_the_document(make_http_node, doc):
    node = make_http_node(http_token="t0ken-0123456789abcdef")
    api = Http(node.url)
    call = Checker(api, doc)
    try:
        for path, item in doc["paths"].items():
            for method in item:
                params = {name: "x" for name in ("id", "queue") if "{" + name + "}" in path}
                status, _ = call(method.upper(), path, **params)
                # the health probes need no token (docs/http.md, "Health probes")
                assert status == (200 if path in ("/livez", "/readyz") else 401), path
    finally:
        api.close()


def test_worker_rows_with_their_task_names_answer_as_documented(make_http_node, doc):
    """``GET /workers`` rows say the task names each worker runs: ``"any"``
    (it declared none: an older worker) or its list and ``names_more``;
    both validate against the document, and a word other than ``any`` does not."""
    node = make_http_node()
    api = Http(node.url)
    ctx = zmq.Context()
    socks = []
    try:
        for ready in ({"worker": "w-list", "names": ["b", "a"], "names_only": True}, {"worker": "w-any"}):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{node.config.port}")
            sock.send_multipart(codec.encode(c.READY, {"capacity": 1, **ready}))
            socks.append(sock)
        wait_for(lambda: len(api.get("/workers")[1]["workers"]) == 2, "the workers to register")
        _, answer = Checker(api, doc)("GET", "/workers")
        rows = {w["worker"]: w for w in answer["workers"]}
        assert rows["w-list"]["names"] == ["a", "b"] and rows["w-list"]["names_more"] == 0
        assert rows["w-any"]["names"] == "any"
        schema = {**doc["components"]["schemas"]["Workers"], "components": doc["components"]}
        wrong = {**answer, "workers": [{**rows["w-any"], "names": "all"}]}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema, cls=jsonschema.Draft202012Validator)
    finally:
        api.close()
        for sock in socks:
            sock.close(0)
        ctx.term()


def test_a_result_done_after_a_retry_keeps_its_error_as_documented(make_http_node, doc):
    """Fault: a task done after a retry answers its result *and* the failed
    attempt's ``error`` (the last failure it kept), and neither the
    document nor http.md said so: a generated client testing ``error !=
    nil`` read a success as a failure. The answer is as it was; the
    document's ``Result.error`` now says to read ``state``."""
    node = make_http_node()
    client = Http(node.url)
    try:
        client.post("/tasks", {"name": "n", "id": "retried", "queue": "pull"})
        first = client.post("/receive", {"queues": ["pull"]})[1]["task"]
        assert client.post("/tasks/retried/nack", {"attempt": first["attempt"], "error": "flaky", "delay": 0})[1]["ok"]
        second = wait_for(lambda: client.post("/receive", {"queues": ["pull"]})[1]["task"], "the retry")
        assert client.post("/tasks/retried/ack", {"attempt": second["attempt"], "result": 7})[1] == {"ok": True}
        status, answer, _ = client.get("/tasks/retried/result")
    finally:
        client.close()
    assert status == 200
    assert (answer["state"], answer["result"], answer["error"]["message"]) == ("done", 7, "flaky"), answer
    description = doc["components"]["schemas"]["Result"]["properties"]["error"].get("description", "")
    assert "earlier attempt" in description and "state" in description, description


@pytest.mark.parametrize("field,value", [
    ("id", "order.42:a-b_c"), ("id", "x" * 64), ("id", "x" * 65), ("id", "a b"), ("id", "a%2Eb"), ("id", "café"),
    ("id", ""), ("queue", "emails"), ("queue", "q" * 128), ("queue", "q" * 129), ("queue", "bad/queue"), ("queue", ""),
])
def test_a_submit_s_id_and_queue_are_checked_as_the_document_says(make_http_node, doc, field, value):
    """Fault: docs/openapi.json gave a submit's ``id`` and ``queue`` as any
    string, while the server takes 1 to 64 (128 for a queue) characters of
    ``A-Z a-z 0-9 _ . : -``: a client validating by the document sent ids
    the server refused (400). The document now has the server's pattern;
    each value here is taken by both or refused by both, for ``POST /tasks``
    and ``POST /queue`` alike. Their ``priority`` says which way it runs."""
    node = make_http_node(webhook_allow_private=True)
    client = Http(node.url)
    bodies = {"SubmitRequest": ("/tasks", {"name": "n", field: value}),
              "EnqueueJson": ("/queue", {"url": "http://127.0.0.1:9/hook", "countdown": 3600, field: value})}
    try:
        for schema_name, (path, body) in bodies.items():
            schema = {**doc["components"]["schemas"][schema_name], "components": doc["components"]}
            valid = jsonschema.Draft202012Validator(schema).is_valid(body)
            status, answer, _ = client.post(path, body)
            assert status in (200, 202, 400), answer
            assert (status != 400) == valid, (schema_name, value, status, answer)
            assert "lower runs first" in schema["properties"]["priority"].get("description", "")
    finally:
        client.close()
