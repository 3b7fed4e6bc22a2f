"""HEAD on the gateway's GET routes (RFC 9110, 9.3.2; docs/http.md, "HEAD").

Before 2026-12-05 every HEAD was answered 405 (and ``Allow`` never named
it). Now each GET route answers HEAD with the GET's status and headers --
``Content-Length`` the length of the body the GET carries -- and no body;
a long-poll answers at once, as the GET with ``timeout=0`` would; and
every ``Allow`` that lists GET lists HEAD.

Each client asks over one keep-alive connection: a HEAD answered with a
body would leave that body in the stream, where the next answer on the
connection is read from (``http.client`` then fails on it).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gateway_harness import FIXTURES, Http, NodeThread

from miyaq.constants import MAX_LONG_POLL

http_node, api, make_http_node, make_web_worker = FIXTURES

ADMIN = "head-admin-token-0123456789abcdef"
PRODUCER = "head-producer-token-0123456789ab"

#: Routes whose GET body is the same from one request to the next (no clock,
#: counter or session in it): their HEAD's Content-Length is compared with
#: the GET body's length exactly. Every route is compared on its status and
#: its headers but those of :data:`VARYING`.
STABLE = frozenset({"/openapi.json", "/tasks", "/tasks/{id}", "/tasks/{id}/result", "/queues/{queue}/limits",
                    "/dead", "/workers", "/ui/static/{name}"})
#: Headers that may differ between two answers of one route.
VARYING = frozenset({"date", "content-length", "set-cookie"})

Answer = tuple[int, bytes, dict[str, str]]


def ask(client: Http, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    """``method path`` on ``client``'s connection: status, the body as sent, headers (names lower-cased)."""
    hdrs = dict(headers or {})
    if client.token is not None:
        hdrs.setdefault("Authorization", f"Bearer {client.token}")
    client.conn.request(method, path, headers=hdrs)
    response = client.conn.getresponse()
    body = response.read()
    return response.status, body, {k.lower(): v for k, v in response.getheaders()}


def gateway(node: NodeThread) -> Any:
    assert node.node is not None
    return node.node.part("gateway")


def submit(client: Http) -> str:
    """A task that stays scheduled for an hour (its result is not there yet)."""
    status, answer, _ = client.post("/tasks", {"name": "add", "args": [1, 2], "queue": "q", "countdown": 3600})
    assert status == 202, answer
    return str(answer["id"])


def fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: values[m.group(1)], template)


def assert_head_is_the_get(head: Answer, get: Answer, what: str, *, exact: bool = True) -> None:
    """``head`` has ``get``'s status and headers (those of :data:`VARYING`
    aside), a Content-Length (``get``'s body's length if ``exact``) and no body."""
    (head_status, head_body, head_headers), (get_status, get_body, get_headers) = head, get
    assert head_status == get_status, (what, head_status, get_status)
    assert head_body == b"", (what, head_body[:200])
    assert ({k: v for k, v in head_headers.items() if k not in VARYING}
            == {k: v for k, v in get_headers.items() if k not in VARYING}), what
    assert "content-length" in head_headers, what
    if exact:
        assert int(head_headers["content-length"]) == len(get_body), what


def test_every_get_route_answers_head_as_the_get_without_a_body(http_node, api):
    """Fault: HEAD on a GET route was answered 405 (RFC 9110: a
    general-purpose server answers HEAD wherever it answers GET). Now every
    GET route of the router -- the JSON API and the console -- answers HEAD
    with the GET's status and headers and no body; where the GET's body
    does not change from one request to the next, the HEAD's
    Content-Length is its length exactly."""
    task_id = submit(api)
    templates = http_node.call(lambda: sorted(r.template for r in gateway(http_node).router.routes
                                              if r.method == "GET"))
    static = http_node.call(lambda: sorted(gateway(http_node).console.static.files))[0]
    values = {"id": task_id, "queue": "q", "name": static}
    assert {"/tasks/{id}/result", "/metrics", "/ui", "/ui/static/{name}"} <= set(templates)
    for template in templates:
        path = fill(template, values) + ("?ref=" + task_id if template == "/ui/task" else "")
        head = ask(api, "HEAD", path)
        get = ask(api, "GET", path)
        assert get[0] in (200, 303), (path, get[0])     # the answers the routes give when they work
        assert_head_is_the_get(head, get, path, exact=template in STABLE)


def test_head_of_an_error_is_the_errors_head(http_node, api):
    """A HEAD whose GET is an error gets the error's status and headers,
    Content-Length the error body's, and no body: an unknown task (404), a
    bad query parameter (400), an unknown path (404), a console page that
    does not exist (its HTML 404)."""
    for path in ("/tasks/no-such-task", "/tasks/no-such-task/result", "/tasks?limit=0", "/nowhere",
                 "/ui/nope", "/ui/dead?page=0"):
        assert_head_is_the_get(ask(api, "HEAD", path), ask(api, "GET", path), path)
    assert ask(api, "HEAD", "/tasks/no-such-task")[0] == 404


def test_allow_lists_head_wherever_get_is(http_node, api):
    """Fault: a 405's ``Allow`` listed GET but not HEAD (RFC 9110: HEAD is
    allowed wherever GET is). Now it lists both; a HEAD on a path without
    GET is a 405 itself, without a body."""
    assert ask(api, "PATCH", "/tasks/abc")[2]["allow"] == "DELETE, GET, HEAD"
    assert ask(api, "POST", "/status")[2]["allow"] == "GET, HEAD"
    assert ask(api, "DELETE", "/queues/q")[2]["allow"] == "GET, HEAD"
    assert ask(api, "POST", "/queues/q/limits")[2]["allow"] == "DELETE, GET, HEAD, PUT"
    assert ask(api, "PUT", "/ui/queues")[2]["allow"] == "GET, HEAD"
    for path, allow in (("/queue", "POST"), ("/tasks/abc/ack", "POST"), ("/ui/logout", "POST"),
                        ("/dead/retry", "POST")):
        status, body, headers = ask(api, "HEAD", path)
        assert (status, body, headers["allow"]) == (405, b"", allow), path
        assert int(headers["content-length"]) == len(ask(api, "GET", path)[1]), path


def test_a_long_poll_head_answers_at_once_as_timeout_0_would(http_node, api):
    """Fault: none before (HEAD was a 405); the rule decided with it: a HEAD
    of ``/tasks/<id>/result?timeout=`` never waits -- it would hold a waiter
    and its connection's slot for the poll's whole time for an outcome
    nobody reads. It is answered at once with the headers of the GET with
    ``timeout=0``, and holds no waiter; a bad ``timeout`` is still a 400."""
    task_id = submit(api)
    waiters = http_node.call(lambda: gateway(http_node).core.waiters)
    head = ask(api, "HEAD", f"/tasks/{task_id}/result?timeout={MAX_LONG_POLL:g}")
    assert http_node.call(lambda: waiters.count) == 0
    assert_head_is_the_get(head, ask(api, "GET", f"/tasks/{task_id}/result?timeout=0"), "result")
    bad = f"/tasks/{task_id}/result?timeout=-1"
    assert_head_is_the_get(ask(api, "HEAD", bad), ask(api, "GET", bad), bad)
    assert ask(api, "HEAD", bad)[0] == 400


def write_tokens(path: Path) -> Path:
    path.write_text(f"{ADMIN} admin\n{PRODUCER} producer\n")
    os.chmod(path, 0o600)
    return path


def test_head_checks_the_caller_as_the_get_does(make_http_node, tmp_path):
    """A HEAD needs what its GET needs: no token, 401 (with the challenge);
    a role without the GET's, 403; a console page not signed in, the GET's
    redirect to the sign-in form."""
    node = make_http_node(http_tokens=str(write_tokens(tmp_path / "tokens")))
    anonymous, producer = Http(node.url), Http(node.url, token=PRODUCER)
    try:
        for client, path, status in ((anonymous, "/status", 401), (producer, "/workers", 403),
                                     (producer, "/openapi.json", 200), (anonymous, "/ui/queues?x=1", 303)):
            head, get = ask(client, "HEAD", path), ask(client, "GET", path)
            assert head[0] == status, (path, head[0])
            assert_head_is_the_get(head, get, path)
        assert ask(anonymous, "HEAD", "/ui/queues?x=1")[2]["location"] == "/ui/login?next=%2Fui%2Fqueues%3Fx%3D1"
    finally:
        anonymous.close()
        producer.close()


def test_head_is_counted_under_its_own_method(http_node, api):
    """``miyaq_http_requests_total`` counts a HEAD as method HEAD on the GET's route."""
    assert ask(api, "HEAD", "/openapi.json")[0] == 200
    metrics = ask(api, "GET", "/metrics")[1].decode()
    assert re.search(r'miyaq_http_requests_total\{method="HEAD",route="/openapi.json",status="200"\} 1\.0',
                     metrics), metrics
