"""What a team whose producers speak only HTTP met following docs/http.md
with curl (newcomer2, 2026-12-07): each test names the mistake a newcomer
makes and holds the gateway's answer to one that says what is wrong and
what to do, in the shape the other endpoints use for the same fault.

* ``curl -d '{...}'`` labels the body ``application/x-www-form-urlencoded``.
  A typo in that JSON (a trailing comma) was a 415 about the Content-Type,
  without the ``field`` every other 415 names and without the JSON
  parser's words, so the user hunted for a header problem.
* The same ``curl -d '{"url": ...}'`` on ``POST /queue`` was read as a form
  with one field named after the whole JSON text, and answered "field
  'task.url' is required" -- about a field the user had sent.
* Arguments (``args``/``kwargs``, a webhook's ``params``) over the node's
  ``max_payload`` were a 400 naming ``body``: a field the HTTP caller never
  sends, and the name the gateway gives the request body itself.
"""
from __future__ import annotations

import json

import pytest
from gateway_harness import FIXTURES, Http

_, api, make_http_node, _ = FIXTURES   # pytest finds fixtures in module globals

FORM = "application/x-www-form-urlencoded"   # what curl -d puts on any body


@pytest.fixture
def http_node(make_http_node):
    """A node whose webhooks may name this machine (the tests deliver none:
    every webhook here waits on a long countdown)."""
    return make_http_node(webhook_allow_private=True)


def live_tasks(api: Http) -> int:
    status, answer, _ = api.get("/status")
    assert status == 200, answer
    return answer["totals"]["live"]


@pytest.mark.parametrize("method,path", [
    ("POST", "/tasks"), ("POST", "/receive"), ("POST", "/dead/retry"), ("PUT", "/queues/emails/limits"),
])
def test_a_typo_in_json_sent_with_curl_d_is_named_with_the_parsers_words(api, method, path):
    """Mistake: ``curl -d '{"name": "add",}'`` (a trailing comma), no -H.
    Before: 415 "expected a JSON body (Content-Type application/json); got
    a application/x-www-form-urlencoded body that is not JSON", no
    ``field``, nothing about where the JSON breaks."""
    status, answer, _ = api.request(method, path, raw=b'{"name": "add",}', content_type=FORM)
    assert status == 415, answer
    error = answer["error"]
    assert error["code"] == "unsupported_media_type"
    assert error["field"] == "Content-Type"           # as every other 415 of docs/http.md, "Content types"
    assert "is not valid JSON" in error["message"]
    assert "line 1 column 16" in error["message"]     # the parser's own words: where it breaks
    assert "-H 'Content-Type: application/json'" in error["message"]
    assert live_tasks(api) == 0


def test_a_form_that_is_not_json_is_still_refused_by_a_json_endpoint(api):
    """What an HTML form sends stays a 415 (the cross-site rule of
    docs/http.md): the message says so without claiming a JSON typo."""
    status, answer, _ = api.post("/tasks", raw=b"name=add&args=1", content_type=FORM)
    assert status == 415, answer
    assert answer["error"]["field"] == "Content-Type"
    assert "form" in answer["error"]["message"]
    assert live_tasks(api) == 0


def test_queue_reads_json_that_curl_d_labelled_a_form(api):
    """Mistake: the JSON body of docs/http.md's "Enqueue a webhook" sent
    with ``curl -d`` and no -H. Before: 400 "field 'task.url' is required"
    (the form parser took the whole text for one field's name)."""
    body = {"url": "http://127.0.0.1:9/hook", "params": {"user": 7}, "countdown": 3600,
            "queue": "hooks", "id": "hook-json-as-form"}
    status, answer, _ = api.post("/queue", raw=json.dumps(body).encode(), content_type=FORM)
    assert status == 200, answer
    assert answer == {"status": "scheduled", "id": "hook-json-as-form"}
    status, info, _ = api.get("/tasks/hook-json-as-form")
    assert status == 200, info
    assert info["task"]["url"] == "http://127.0.0.1:9/hook" and info["task"]["queue"] == "hooks"


def test_queue_still_reads_a_real_form(api):
    status, answer, _ = api.post("/queue", raw=b"task.url=http://127.0.0.1:9/w&task.countdown=3600&task.id=f1",
                                 content_type=FORM)
    assert status == 200, answer
    assert answer["id"] == "f1"


def test_queue_with_broken_json_labelled_a_form_says_it_is_not_json(api):
    """Mistake: a typo in that JSON. Before: "field 'task.url' is required"."""
    status, answer, _ = api.post("/queue", raw=b'{"url": "http://127.0.0.1:9/hook",}', content_type=FORM)
    assert status == 400, answer
    assert answer["error"]["field"] == "body"
    assert "is not valid JSON" in answer["error"]["message"]
    assert live_tasks(api) == 0


def test_args_over_max_payload_name_args_and_the_limit(make_http_node):
    """Mistake: a producer puts a 2 KB document in ``args`` on a node of
    ``max_payload`` 1000. Before: 400 "field 'body' exceeds 1000 bytes"."""
    node = make_http_node(max_payload=1000)
    client = Http(node.url)
    try:
        status, answer, _ = client.post("/tasks", {"name": "index", "args": ["x" * 2000]})
        assert status == 413, answer
        error = answer["error"]
        assert error["code"] == "too_large" and error["field"] == "args"
        assert "max_payload of 1000 bytes" in error["message"] and "--max-payload" in error["message"]
        assert live_tasks(client) == 0
    finally:
        client.close()


@pytest.mark.parametrize("as_form", [False, True], ids=["json", "form"])
def test_webhook_params_over_max_payload_name_params(make_http_node, as_form):
    node = make_http_node(max_payload=1000, webhook_allow_private=True)
    client = Http(node.url)
    try:
        if as_form:
            status, answer, _ = client.post("/queue", raw=b"task.url=http://127.0.0.1:9/w&doc=" + b"x" * 2000,
                                            content_type=FORM)
        else:
            status, answer, _ = client.post("/queue", {"url": "http://127.0.0.1:9/w", "params": {"doc": "x" * 2000}})
        assert status == 413, answer
        error = answer["error"]
        assert error["code"] == "too_large" and error["field"] == "params"
        assert "max_payload of 1000 bytes" in error["message"]
        assert live_tasks(client) == 0
    finally:
        client.close()


def test_an_ack_result_over_max_payload_names_result_and_what_to_do(make_http_node):
    """The pull consumer's ack: the same limit, the same shape (413 naming
    ``result``). Before: no ``field``, and nothing about what to do."""
    node = make_http_node(max_payload=1000)
    client = Http(node.url)
    try:
        assert client.post("/tasks", {"name": "r", "queue": "pull", "id": "p1"})[0] == 202
        task = client.post("/receive", {"queues": ["pull"]})[1]["task"]
        status, answer, _ = client.post("/tasks/p1/ack", {"attempt": task["attempt"], "result": "x" * 2000})
        assert status == 413, answer
        error = answer["error"]
        assert error["code"] == "too_large" and error["field"] == "result"
        assert "max_payload of 1000 bytes" in error["message"] and "keep large data elsewhere" in error["message"]
        assert client.get("/tasks/p1")[1]["task"]["state"] == "running"    # the ack changed nothing
    finally:
        client.close()


def test_queue_reads_json_sent_without_a_content_type(api):
    """docs/http.md, "Content types": ``POST /queue`` with no Content-Type
    is "read as JSON". Before: read as a form, "field 'task.url' is
    required"."""
    body = {"url": "http://127.0.0.1:9/hook", "countdown": 3600, "id": "hook-untyped"}
    status, answer, _ = api.post("/queue", raw=json.dumps(body).encode())
    assert status == 200, answer
    assert answer == {"status": "scheduled", "id": "hook-untyped"}


@pytest.mark.parametrize("as_form", [False, True], ids=["json", "form"])
def test_get_webhook_params_too_long_for_its_url_name_params(api, as_form):
    """Mistake: a GET webhook with a few KB of params, which go to the URL's
    query string. Before: "field 'url' must have 1 to 2048 characters" about
    a URL of 25 characters the user wrote."""
    if as_form:
        status, answer, _ = api.post("/queue", raw=b"task.url=http://127.0.0.1:9/g&task.method=GET&doc=" + b"x" * 3000,
                                     content_type=FORM)
    else:
        status, answer, _ = api.post("/queue", {"url": "http://127.0.0.1:9/g", "method": "GET",
                                                "params": {"doc": "x" * 3000}})
    assert status == 400, answer
    error = answer["error"]
    assert error["code"] == "invalid_field" and error["field"] == "params"
    assert "query string" in error["message"] and "POST" in error["message"]
    assert live_tasks(api) == 0


TOKEN = "shop-7f3a9c2e41d8b6a0e5"


@pytest.mark.parametrize("header,says", [
    (None, "send the header 'Authorization: Bearer <token>'"),
    (f"Token {TOKEN}", "must be 'Bearer <token>', not 'Token ...'"),
    (TOKEN, "must be 'Bearer <token>', not another form"),
    ("Bearer", "names no token"),
    ("Bearer not-a-token-of-this-node", "unknown bearer token"),
], ids=["no-header", "other-scheme", "bare-token", "bearer-alone", "unknown-token"])
def test_a_401_says_what_to_send(make_http_node, tmp_path, header, says):
    """Mistake: a producer without its token, with another API's scheme
    (``Token``, ``Basic``), or with a token the node does not know. Before:
    "a bearer token is required" and "missing or wrong bearer token" alike
    for the last two -- nothing about the header's form."""
    tokens = tmp_path / "http-tokens"
    tokens.write_text(f"{TOKEN} producer\n")
    tokens.chmod(0o600)
    node = make_http_node(http_tokens=str(tokens))
    client = Http(node.url)
    try:
        status, answer, headers = client.post("/tasks", {"name": "bill"},
                                              headers={"Authorization": header} if header else None)
        assert status == 401, answer
        assert answer["error"]["code"] == "unauthorized" and headers["www-authenticate"].startswith("Bearer")
        assert says in answer["error"]["message"]
        assert TOKEN not in answer["error"]["message"]      # a token is never repeated back
        ok = Http(node.url, token=TOKEN)
        try:
            assert ok.get("/status")[1]["totals"]["live"] == 0
        finally:
            ok.close()
    finally:
        client.close()


def test_receive_with_an_empty_queue_list_is_refused_not_left_waiting(api):
    """Mistake: ``{"queues": []}`` (a consumer whose list of queues came out
    empty). Before: answered ``{"task": null}`` -- after waiting its whole
    ``timeout`` -- while tasks waited in every queue, as if none were ready."""
    assert api.post("/tasks", {"name": "resize", "queue": "default"})[0] == 202
    status, answer, _ = api.post("/receive", {"queues": [], "timeout": 30})
    assert status == 400, answer
    assert answer["error"]["field"] == "queues" and "names no queue" in answer["error"]["message"]
    status, answer, _ = api.post("/receive", {})                 # left out: ["default"], as documented
    assert status == 200 and answer["task"]["name"] == "resize"


def test_receive_over_zeromq_with_an_empty_queue_list_is_refused(http_node):
    """The same mistake over ZeroMQ (``client.receive([])``): before, the
    call waited its timeout and returned None."""
    import miyaq   # noqa: PLC0415 -- the one test here that speaks ZeroMQ
    with miyaq.Client(f"tcp://127.0.0.1:{http_node.config.port}") as client:
        with pytest.raises(miyaq.InvalidField, match="names no queue"):
            client.receive([], timeout=30)


def test_a_body_over_http_max_body_names_the_setting(make_http_node):
    """Mistake: a producer posts 2 KB to a gateway of ``http_max_body``
    1000. Before: "request body of 2017 bytes exceeds the limit of 1000",
    no setting named, so the operator did not know which one to raise."""
    node = make_http_node(http_max_body=1000)
    client = Http(node.url)
    try:
        status, answer, _ = client.post("/tasks", {"name": "index", "args": ["x" * 2000]})
        assert status == 413, answer
        assert answer["error"]["code"] == "too_large"
        assert "http_max_body" in answer["error"]["message"] and "--http-max-body" in answer["error"]["message"]
    finally:
        client.close()


@pytest.mark.parametrize("path,takes", [
    ("/tasks?key=sum-2-3", "queue, state, limit"),
    ("/tasks?stat=dead", "queue, state, limit"),
    ("/dead?state=dead", "queue, limit"),
    ("/workers?queue=emails", "limit"),
], ids=["tasks-by-key", "tasks-misspelt-state", "dead-by-state", "workers-by-queue"])
def test_a_listing_refuses_a_filter_it_does_not_have(api, path, takes):
    """Mistake: ``GET /tasks?key=sum-2-3`` (looking a keyed task up) or a
    misspelt ``?stat=dead``. Before: the parameter was ignored and every
    task listed, which reads as "these are the tasks of that key"."""
    assert api.post("/tasks", {"name": "add", "key": "sum-2-3", "countdown": 3600})[0] == 202
    assert api.post("/tasks", {"name": "add", "key": "other", "countdown": 3600})[0] == 202
    status, answer, _ = api.get(path)
    assert status == 400, answer
    name = path.split("?")[1].split("=")[0]
    assert answer["error"]["code"] == "invalid_field" and answer["error"]["field"] == name
    assert f"takes {takes}" in answer["error"]["message"]
    status, answer, _ = api.get("/tasks?queue=default&state=scheduled&limit=10")   # its own still work
    assert status == 200 and len(answer["tasks"]) == 2


def test_an_ack_that_changes_nothing_says_why(api):
    """Mistake: a pull consumer acks an attempt that no longer holds the
    task (the node restarted and leased it again, the lease ran out, it was
    already acked, a typo in the id). Before: a bare ``{"ok": false}`` in
    every case, nothing to tell them apart."""
    assert api.post("/tasks", {"name": "resize", "queue": "img", "id": "cat"})[0] == 202
    received = api.post("/receive", {"queues": ["img"]})[1]["task"]

    def refused(path: str, body: dict) -> str:
        status, answer, _ = api.post(path, body)
        assert status == 200 and answer["ok"] is False, answer
        return answer["reason"]

    stale = received["attempt"] + 1
    assert "is not the task's current one" in refused("/tasks/cat/ack", {"attempt": stale, "result": 1})
    assert "is not the task's current one" in refused("/tasks/cat/touch", {"attempt": stale})
    assert api.post("/tasks/cat/ack", {"attempt": received["attempt"], "result": 1})[1] == {"ok": True}
    assert "the task is done" in refused("/tasks/cat/ack", {"attempt": received["attempt"], "result": 1})
    assert "the task is done" in refused("/tasks/cat/nack", {"attempt": received["attempt"]})
    assert "no task dog" in refused("/tasks/dog/ack", {"attempt": 1})
    assert api.post("/tasks", {"name": "resize", "queue": "img", "id": "later", "countdown": 3600})[0] == 202
    assert "the task is scheduled" in refused("/tasks/later/ack", {"attempt": 1})
    # A touch names no attempt when it may (the current one): the reason names none either.
    # Fault (review33): it said "the lease of attempt None ended".
    reason = refused("/tasks/later/touch", {})
    assert "the task is scheduled" in reason and "None" not in reason, reason


@pytest.mark.parametrize("extra", [[], ["--token", "not-a-token-of-this-node"]], ids=["no-token", "unknown-token"])
def test_miyaq_queue_refused_401_says_how_to_give_it_the_token(make_http_node, tmp_path, monkeypatch, capsys, extra):
    """Mistake: an operator runs ``miyaq queue list`` against a node with
    tokens and none (or a wrong one) in its environment. The gateway's 401
    speaks of the Authorization header; the command adds how it is given
    one. Before: "miyaq: error: a bearer token is required", nothing about
    --token or MIYAQ_HTTP_TOKEN."""
    from miyaq.cli.main import main   # noqa: PLC0415 -- the one test here that runs the command
    tokens = tmp_path / "http-tokens"
    tokens.write_text(f"{TOKEN} admin\n")
    tokens.chmod(0o600)
    node = make_http_node(http_tokens=str(tokens))
    monkeypatch.delenv("MIYAQ_HTTP_TOKEN", raising=False)
    assert main(["queue", "list", "--http", node.url, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("miyaq: error: ") and "--token" in err and "MIYAQ_HTTP_TOKEN" in err, err
    assert main(["queue", "list", "--http", node.url, "--token", TOKEN]) == 0


def test_credentials_in_a_form_webhook_url_are_told_where_headers_go(api):
    """Mistake: ``task.url=http://user:pw@host/...`` in a form. The refusal
    says to put them in the task's headers -- which a form cannot set (only
    the JSON body's ``headers``). Before: that advice alone."""
    status, answer, _ = api.post("/queue", raw=b"task.url=http://user:pw@127.0.0.1:9/w", content_type=FORM)
    assert status == 400, answer
    error = answer["error"]
    assert error["field"] == "task.url" and "user:pw" not in error["message"]
    assert "JSON body" in error["message"] and '"headers"' in error["message"]
    assert live_tasks(api) == 0
