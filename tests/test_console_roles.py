"""The console's pages and actions follow the JSON API's roles (docs/http.md,
"Tokens and roles"; docs/console.md, "Who may do what").

Fault (an audit): the JSON API refused a producer token ``GET /dead``,
``GET /workers`` and ``GET /tasks``, but the console let any known token
open every page: a producer got ``/ui/dead`` (other tenants' dead task
ids), ``/ui/workers``, and through those ids ``/ui/tasks/<id>`` with the
task's payload. Now each console page and action needs the role its JSON
counterpart needs. The expectations below are asked of the JSON API itself,
with the same token, so the console and the API cannot drift apart."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from gateway_harness import FIXTURES, Http, NodeThread
from test_console import EVIL, cookie_of, csrf_of, page, post_form

from miyaq.runtime import wall

pytestmark = pytest.mark.timeout(60)

http_node, api, make_http_node, make_web_worker = FIXTURES

ADMIN = "console-admin-0123456789abcdef"
PRODUCER = "console-producer-0123456789abcdef"
WORKER = "console-worker-0123456789abcdef"
TOKENS = {"admin": ADMIN, "producer": PRODUCER, "worker": WORKER}
SECRET = "4111-1111-SECRET-of-tenant-b"
KEY = "tenant-b-invoice-77"


@pytest.fixture
def node(make_http_node, tmp_path: Path) -> NodeThread:
    path = tmp_path / "http-tokens"
    path.write_text(f"{ADMIN} admin\n{PRODUCER} producer\n{WORKER} worker\n")
    os.chmod(path, 0o600)
    return make_http_node(http_tokens=str(path))


@pytest.fixture
def clients(node: NodeThread):
    made = {role: Http(node.url, token=token) for role, token in TOKENS.items()}
    yield made
    for client in made.values():
        client.close()


def dead_task_of_tenant_b(admin: Http) -> str:
    """Another tenant's task, dead, with a secret in its payload and a key."""
    task_id = admin.post("/tasks", {"name": "bill", "queue": "tenant-b", "args": [SECRET], "key": KEY})[1]["id"]
    task = admin.post("/receive", {"queues": ["tenant-b"]})[1]["task"]
    assert admin.post(f"/tasks/{task_id}/nack", {"attempt": task["attempt"], "retry": False})[1]["ok"]
    assert [t["id"] for t in admin.get("/dead")[1]["tasks"]] == [task_id]
    return task_id


def json_allows(client: Http, method: str, path: str, body: Any = None) -> bool:
    """Does the JSON API let this token use ``method path``? (403 forbidden: no.)"""
    status, answer, _ = client.request(method, path, body)
    if status == 403:
        assert answer["error"]["code"] == "forbidden", answer
        return False
    assert status < 400, (method, path, status, answer)
    return True


def assert_refused_in_layout(status: int, html: str, headers: dict[str, str], role: str) -> None:
    """A console 403: an HTML page in the console's layout that says which token it needs."""
    assert status == 403, (status, html[:300])
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "<header>" in html and "403" in html
    assert f"not a {role} token" in html and "needs an admin token" in html, html


def page_pairs(task_id: str) -> list[tuple[str, tuple[str, str] | None]]:
    """Each console page (as a browser asks for it) and its JSON counterpart;
    None: no counterpart (periodic schedules are in no JSON answer), which
    needs admin, as any endpoint the roles table does not name."""
    return [("/ui", ("GET", "/status")), ("/ui/activity.json", ("GET", "/metrics")),
            ("/ui/queues", ("GET", "/queues")), ("/ui/workers", ("GET", "/workers")),
            ("/ui/ring", ("GET", "/status")), ("/ui/dead", ("GET", "/dead")),
            ("/ui/dead?queue=tenant-b", ("GET", "/dead?queue=tenant-b")),
            (f"/ui/tasks/{task_id}", ("GET", f"/tasks/{task_id}")),
            ("/ui/task?" + urlencode({"ref": task_id}), ("GET", f"/tasks/{task_id}")),
            ("/ui/task?" + urlencode({"ref": KEY}), ("GET", "/tasks")),     # a search by key is a listing
            ("/ui/periodic", None)]


@pytest.mark.parametrize("role", ["producer", "worker", "admin"])
def test_every_page_is_open_exactly_when_its_json_route_is(clients, role):
    """Fault: every console page opened for any known token, though the
    JSON API refuses a producer or worker token the dead-letter queue, the
    workers list and task listings. Now each page answers 403 (an HTML page
    in the console's layout naming the token it needs) exactly when the JSON
    API answers that token 403, and 200 (303 for the search box) otherwise."""
    task_id = dead_task_of_tenant_b(clients["admin"])
    client = clients[role]
    for path, json_route in page_pairs(task_id):
        expected = json_allows(client, *json_route) if json_route else role == "admin"
        status, html, headers = page(client, path)
        if expected:
            assert status in (200, 303), (role, path, status, html[:300])
        else:
            assert_refused_in_layout(status, html, headers, role)


@pytest.mark.parametrize("role", ["producer", "worker", "admin"])
def test_every_action_is_allowed_exactly_when_its_json_route_is(clients, role):
    """Fault class: a console action checked by a rule of its own rather
    than by the role of its JSON route (the actions were refused to non-admin
    tokens already, by ``can_operate``; this keeps them tied to the API).
    Pause, resume, retry and purge (the console's only actions: it has no
    cancel) are each refused with 403, a page naming the token needed,
    exactly when the JSON route refuses the token, and a refused one
    changes nothing: the other tenant's dead letter stays, no queue is paused."""
    admin = clients["admin"]
    task_id = dead_task_of_tenant_b(admin)
    client = clients[role]
    html, headers = page(client, "/ui")[1:]             # the overview: every role may open it
    form = {"csrf": csrf_of(html)}
    cookie = cookie_of(headers)
    actions = [("/ui/queues/spare/pause", {}, ("POST", "/queues/spare/pause", None)),
               ("/ui/queues/spare/resume", {}, ("POST", "/queues/spare/resume", None)),
               ("/ui/dead/retry", {"queue": "spare"}, ("POST", "/dead/retry", {"queue": "spare"})),
               ("/ui/dead/purge", {"queue": "spare"}, ("POST", "/dead/purge", {"queue": "spare"}))]
    for path, fields, json_route in actions:
        expected = json_allows(client, *json_route)
        status, body, out = post_form(client, path, {**form, **fields}, cookie)
        if expected:
            assert status == 303, (role, path, status, body)
        else:
            assert_refused_in_layout(status, body.decode(), out, role)
    if role != "admin":                                  # a refused action on the real dead letter
        for path in ("/ui/dead/retry", "/ui/dead/purge"):
            status, body, out = post_form(client, path, {**form, "id": task_id}, cookie)
            assert_refused_in_layout(status, body.decode(), out, role)
    assert [t["id"] for t in admin.get("/dead")[1]["tasks"]] == [task_id]
    assert admin.get("/queues/spare")[1]["paused"] is False


@pytest.mark.parametrize("role", ["producer", "worker"])
def test_a_producer_reads_no_other_tenants_task_through_the_console(clients, role):
    """Fault: a producer token listed the dead letters on /ui/dead, took
    another tenant's task id from there and read that task's payload on
    /ui/tasks/<id>; the search box found a task by its key, a listing the
    JSON API keeps for admin. Now no page such a token may open shows the
    other tenant's id or payload, the search by key answers 403 (whether
    the key exists or not), and the admin still sees both."""
    admin = clients["admin"]
    task_id = dead_task_of_tenant_b(admin)
    client = clients[role]
    for path in ("/ui", "/ui/queues", "/ui/workers", "/ui/ring", "/ui/dead", "/ui/dead?queue=tenant-b",
                 "/ui/periodic", "/ui/activity.json", "/ui/task?" + urlencode({"ref": KEY})):
        status, html, headers = page(client, path)
        assert task_id not in html and SECRET not in html, (path, status)
        assert "location" not in headers, (path, headers)
    for ref in (KEY, "no-such-key", EVIL):               # no oracle for keys; the ref is shown escaped
        status, html, _ = page(client, "/ui/task?" + urlencode({"ref": ref}))
        assert status == 403 and "finds a task by its id only" in html, (ref, status)
        assert EVIL not in html
    assert page(client, "/ui/dead")[0] == 403 and page(client, "/ui/workers")[0] == 403
    # the admin sees what the producer may not: the test would see a leak
    assert task_id in page(admin, "/ui/dead")[1] and SECRET in page(admin, f"/ui/tasks/{task_id}")[1]
    assert page(admin, "/ui/task?" + urlencode({"ref": KEY}))[2]["location"] == f"/ui/tasks/{task_id}"


def test_a_producer_still_finds_its_own_task_by_its_id(clients):
    """The by-id rule of the JSON API (``GET /tasks/{id}`` is a producer's)
    holds in the console too: the producer's own task, found by its id,
    shows its state; no Retry button (operators only). Its payload is not
    shown: no JSON answer gives a task's payload to a producer, and the
    console cannot tell its own tasks from another tenant's (before
    2026-12-05 it showed every task's payload to any token)."""
    producer = clients["producer"]
    task_id = producer.post("/tasks", {"name": "mine", "args": ["my-own-args"], "countdown": 600})[1]["id"]
    status, html, _ = page(producer, f"/ui/tasks/{task_id}")
    assert status == 200 and 'id="task-state">scheduled<' in html and ">Retry</button>" not in html
    assert "my-own-args" not in html and 'id="task-internals"' in html
    status, _, headers = page(producer, "/ui/task?" + urlencode({"ref": task_id}))
    assert status == 303 and headers["location"] == f"/ui/tasks/{task_id}"


OLD_TRACEBACK = 'Traceback (most recent call last):\n  File "billing.py", line 7\nValueError: card 4111-OLD-ATTEMPT'
RESULT = "receipt-of-tenant-b-42"


def failed_then_dead(node: NodeThread, admin: Http) -> str:
    """Another tenant's task with a secret payload: its first attempt fails
    with a traceback (kept only in the console's attempt log: the task's
    last error is the second attempt's), its second is nacked for good."""
    task_id = admin.post("/tasks", {"name": "bill", "queue": "tenant-b", "args": [SECRET]})[1]["id"]
    engine = node.node.part("gateway").core.engine
    task = admin.post("/receive", {"queues": ["tenant-b"]})[1]["task"]
    error = {"type": "ValueError", "message": "first attempt failed", "traceback": OLD_TRACEBACK}
    lessee = node.call(lambda: engine.table.live[task_id].lessees[-1][1])    # the admin token's (http:...)
    assert node.call(lambda: engine.fail(task_id, task["attempt"], error, True, 0.0, wall(), by=lessee))
    task = admin.post("/receive", {"queues": ["tenant-b"], "timeout": 10})[1]["task"]
    assert admin.post(f"/tasks/{task_id}/nack", {"attempt": task["attempt"], "retry": False,
                                                 "error": "second attempt failed"})[1]["ok"]
    return task_id


@pytest.mark.parametrize("role", ["producer", "worker", "admin"])
def test_the_task_page_shows_what_get_tasks_id_answers_the_token(node, clients, role):
    """Fault: /ui/tasks/{id} stands for ``GET /tasks/{id}``, which a producer
    may use by id, but the page showed more than that endpoint answers:
    the task's payload and every failed attempt's message and traceback. A
    producer (or worker) token that knew another tenant's task id read
    them. Now the page shows such a token what the JSON endpoints give it
    -- the task's state and its last error, a finished task's result (as
    ``GET /tasks/{id}/result``) -- and the payload and the attempt log to
    admin tokens only."""
    admin, client = clients["admin"], clients[role]
    task_id = failed_then_dead(node, admin)
    answer = client.get(f"/tasks/{task_id}")[1]
    assert SECRET not in str(answer) and "OLD-ATTEMPT" not in str(answer)
    assert answer["task"]["error"]["message"] == "second attempt failed"
    status, html, _ = page(client, f"/ui/tasks/{task_id}")
    assert status == 200 and 'id="task-state">dead<' in html and "second attempt failed" in html
    if role == "admin":
        assert SECRET in html and "OLD-ATTEMPT" in html and "first attempt failed" in html
    else:
        assert SECRET not in html and "OLD-ATTEMPT" not in html and "first attempt failed" not in html
        assert 'id="task-internals"' in html and "admin tokens only" in html
    # a finished task's result: every role that may GET /tasks/{id}/result sees it
    done_id = admin.post("/tasks", {"name": "sum", "queue": "tenant-b", "args": [SECRET]})[1]["id"]
    task = admin.post("/receive", {"queues": ["tenant-b"]})[1]["task"]
    assert admin.post(f"/tasks/{done_id}/ack", {"attempt": task["attempt"], "result": RESULT})[1]["ok"]
    assert client.get(f"/tasks/{done_id}/result")[1]["result"] == RESULT
    html = page(client, f"/ui/tasks/{done_id}")[1]
    assert RESULT in html and SECRET not in html


@pytest.mark.parametrize("role", ["producer", "worker", "admin"])
def test_links_lead_only_to_pages_the_token_may_open(clients, role):
    """Fault: the navigation and the overview's and queues' counts linked
    every token to the dead letters and the workers, pages it may not
    open. Now every console link on a page the token may open leads to a
    page it may open; an admin still gets every link."""
    dead_task_of_tenant_b(clients["admin"])
    client = clients[role]
    seen: set[str] = set()
    for path in ("/ui", "/ui/queues", "/ui/ring"):
        html = page(client, path)[1]
        links = set(re.findall(r'href="(/ui[^"]*)"', html)) - {"/ui/login"}
        seen |= {link for link in links if not link.startswith("/ui/static/")}
    for link in sorted(seen):
        assert page(client, link.replace("&amp;", "&"))[0] == 200, (role, link)
    admin_only = {"/ui/dead", "/ui/workers", "/ui/periodic", "/ui/dead?queue=tenant-b"}
    assert (admin_only <= seen) == (role == "admin") and (admin_only & seen == set()) == (role != "admin"), seen
