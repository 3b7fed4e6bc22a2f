"""HTTP tokens with roles (issue 9): ``--http-tokens FILE`` (one ``token
role`` per line) next to ``--http-token`` (admin). Each role is refused
what it may not do with 403 ``forbidden`` and changes nothing; the console
is read-only for every role but admin; the file is re-read on SIGHUP and
when it changes; tokens never appear in the logs."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import FIXTURES, Http, NodeThread, free_port, wait_for, write_tokens
from test_console import cookie_of, csrf_of, page, post_form
from test_gateway_admin import make_dead

from miyaq.errors import ConfigError
from miyaq.gateway.tokens import parse_tokens

http_node, api, make_http_node, make_web_worker = FIXTURES

ADMIN = "admin-token-0123456789abcdef"
PRODUCER = "producer-token-0123456789abcdef"
WORKER = "worker-token-0123456789abcdef"
OLD_ADMIN = "the-http-token-of-old-0123456789"
SECRETS = (ADMIN, PRODUCER, WORKER, OLD_ADMIN)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "http-tokens"
    write_tokens(path, f"# who may use the gateway\n{PRODUCER} producer   # the shop's backend\n\n"
                       f"{WORKER} worker\n{ADMIN} operator\n")
    return path


@pytest.fixture
def node(make_http_node, tokens_file: Path) -> NodeThread:
    return make_http_node(http_tokens=str(tokens_file), http_token=OLD_ADMIN)


@pytest.fixture
def clients(node: NodeThread):
    made = {name: Http(node.url, token=token) for name, token in
            (("producer", PRODUCER), ("worker", WORKER), ("admin", ADMIN), ("http_token", OLD_ADMIN))}
    made["anonymous"] = Http(node.url)
    yield made
    for client in made.values():
        client.close()


def forbidden(client: Http, method: str, path: str, body: Any = None) -> dict[str, Any]:
    status, answer, _ = client.request(method, path, body)
    assert status == 403, (method, path, status, answer)
    assert answer["error"]["code"] == "forbidden", answer
    return answer["error"]


ADMIN_ONLY = [("GET", "/tasks", None), ("GET", "/dead", None), ("POST", "/dead/retry", {}),
              ("POST", "/dead/purge", {}), ("PUT", "/queues/q/limits", {"rate": 1}),
              ("DELETE", "/queues/q/limits", None), ("POST", "/queues/q/pause", None),
              ("POST", "/queues/q/resume", None), ("GET", "/workers", None)]
WORKER_ONLY = [("POST", "/receive", {"queues": ["q"]}), ("POST", "/receive_noblock", {}),
               ("POST", "/receive_block", {"timeout": 0.1}), ("POST", "/tasks/t1/ack", {"attempt": 1}),
               ("POST", "/tasks/t1/nack", {"attempt": 1}), ("POST", "/tasks/t1/touch", {})]


def test_role_refusals_for_a_producer_token(clients):
    """A producer token overstepping: receiving and finishing tasks, listing
    tasks, the dead-letter queue, queue limits and pauses, the workers list.
    Each is 403 forbidden naming the role needed, and changes nothing; what a
    producer may do (submit, enqueue, status, result, cancel, metrics) works."""
    producer, admin = clients["producer"], clients["admin"]
    dead = make_dead(admin, "q", 1)
    status, answer, _ = producer.post("/tasks", {"name": "job", "queue": "q", "id": "p-1"})
    assert status == 202, answer
    assert producer.post("/queue", {"url": "http://hooks.example.test/x", "countdown": 600})[0] == 200
    for method, path in (("GET", "/tasks/p-1"), ("GET", "/tasks/p-1/result"), ("GET", "/status"),
                         ("GET", "/queues"), ("GET", "/queues/q"), ("GET", "/queues/q/limits"),
                         ("GET", "/metrics"), ("GET", "/openapi.json")):
        assert producer.request(method, path)[0] == 200, (method, path)
    for method, path, body in ADMIN_ONLY + WORKER_ONLY:
        error = forbidden(producer, method, path, body)
        assert "producer" in error["message"]
    assert admin.get("/queues/q")[1]["paused"] is False and admin.get("/queues/q/limits")[1]["limits"] is None
    assert [t["id"] for t in admin.get("/dead")[1]["tasks"]] == dead          # not retried, not purged
    assert admin.get("/tasks/p-1")[1]["task"]["state"] == "ready"               # not received
    assert producer.request("DELETE", "/tasks/p-1")[1]["cancelled"] is True


def test_role_refusals_for_a_worker_token(clients):
    """A worker token may do what a producer may and pull tasks; listing,
    dead letters, limits, pauses and the workers list are 403 forbidden."""
    worker, admin = clients["worker"], clients["admin"]
    dead = make_dead(admin, "q", 1)
    task_id = worker.post("/tasks", {"name": "job", "queue": "w"})[1]["id"]
    task = worker.post("/receive", {"queues": ["w"]})[1]["task"]
    assert task["id"] == task_id
    assert worker.post(f"/tasks/{task_id}/touch", {})[1]["ok"] is True
    assert worker.post(f"/tasks/{task_id}/ack", {"attempt": 1, "result": 3})[1] == {"ok": True}
    for method, path, body in ADMIN_ONLY:
        assert "worker" in forbidden(worker, method, path, body)["message"]
    assert [t["id"] for t in admin.get("/dead")[1]["tasks"]] == dead
    assert admin.get("/queues/q")[1]["paused"] is False


def test_admin_tokens_may_do_everything(clients):
    """An admin line of the file and --http-token are both admin."""
    for name in ("admin", "http_token"):
        client = clients[name]
        for method, path, body in ADMIN_ONLY:
            status, answer, _ = client.request(method, path, body)
            assert status < 400, (name, method, path, answer)


def test_without_a_known_token_it_is_401(clients, node):
    """No token, a wrong one, another scheme, and a role name as token: 401."""
    anonymous = clients["anonymous"]
    for headers in ({}, {"Authorization": "Bearer nope-nope-nope-nope"}, {"Authorization": f"Basic {ADMIN}"},
                    {"Authorization": "Bearer admin"}, {"Authorization": f"Bearer {ADMIN[:-1]}"}):
        status, answer, response_headers = anonymous.request("GET", "/status", headers=headers)
        assert status == 401 and answer["error"]["code"] == "unauthorized", headers
        assert response_headers["www-authenticate"].startswith("Bearer")
    assert anonymous.get("/status", headers={"Authorization": f"bearer  {ADMIN}"})[0] == 200   # scheme any case


def test_the_console_is_read_only_for_every_role_but_admin(clients):
    """A producer or worker token opens the console read-only: no action
    buttons, a 403 for a posted action, and -- as in the JSON API -- a 403
    for the dead-letter page (before 2026-12-05 it could list it:
    tests/test_console_roles.py); an admin token may act."""
    admin = clients["admin"]
    make_dead(admin, "c", 1)
    for name in ("producer", "worker"):
        client = clients[name]
        assert page(client, "/ui/dead")[0] == 403, name
        status, html, headers = page(client, "/ui/queues")
        assert status == 200 and "read-only" in html and ">Pause</button>" not in html, name
        status, body, _ = post_form(client, "/ui/dead/retry", {"all": "1", "csrf": csrf_of(html)},
                                    cookie_of(headers))
        assert status == 403 and b"admin token" in body, (name, body)
        status, html, headers = page(client, "/ui/queues")
        assert post_form(client, "/ui/queues/c/pause", {"csrf": csrf_of(html)}, cookie_of(headers))[0] == 403
    assert len(admin.get("/dead")[1]["tasks"]) == 1 and admin.get("/queues/c")[1]["paused"] is False
    status, html, headers = page(admin, "/ui/dead")
    assert ">Retry</button>" in html
    status, _, _ = post_form(admin, "/ui/dead/retry", {"all": "1", "csrf": csrf_of(html)}, cookie_of(headers))
    assert status == 303 and admin.get("/dead")[1]["tasks"] == []


def test_a_console_session_carries_its_role_and_ends_with_its_token(node, clients, tokens_file):
    """Signing in with a producer token gives a read-only session; removing
    that token from the file ends the session at the reload."""
    anonymous = clients["anonymous"]
    status, _, headers = post_form(anonymous, "/ui/login", {"token": PRODUCER, "next": "/ui/queues"}, "")
    assert status == 303
    cookie = cookie_of(headers)
    status, html, _ = page(anonymous, "/ui/queues", headers={"Cookie": cookie})
    assert status == 200 and "read-only" in html
    write_tokens(tokens_file, f"{ADMIN} admin\n")
    assert node.call(lambda: node.node.part("gateway").reload_tokens("test")) is True
    assert anonymous.get("/ui/queues", headers={"Cookie": cookie})[0] == 303     # back to sign-in


def test_sighup_reloads_the_tokens_file(node, clients, tokens_file):
    """SIGHUP (Node.reload, what the signal runs) adds and revokes tokens
    without a restart; a file that no longer parses keeps the tokens loaded."""
    new = "a-token-added-later-0123456789"
    write_tokens(tokens_file, f"{ADMIN} admin\n{new} producer\n")
    node.call(node.node.reload)
    assert clients["producer"].get("/status")[0] == 401                        # revoked
    fresh = Http(node.url, token=new)
    try:
        assert fresh.get("/status")[0] == 200                                   # added
        write_tokens(tokens_file, f"{ADMIN} admin\n{new} superuser\n")          # broken
        node.call(node.node.reload)
        assert fresh.get("/status")[0] == 200                                   # kept
        assert clients["http_token"].get("/dead")[0] == 200                     # --http-token untouched
    finally:
        fresh.close()


def test_a_changed_tokens_file_is_reloaded_without_a_signal(node, tokens_file):
    """The node watches the file: a token added to it works within seconds."""
    new = "another-token-added-0123456789"
    write_tokens(tokens_file, f"{ADMIN} admin\n{new} worker\n")
    client = Http(node.url, token=new)
    try:
        wait_for(lambda: client.get("/status")[0] == 200, "the new token to be accepted")
    finally:
        client.close()


def test_tokens_never_reach_the_logs(make_http_node, tokens_file, caplog):
    """Tokens are secrets: loading, reloading, a bad file, failed sign-ins and
    refused requests log none of them (a bad line is named by number)."""
    caplog.set_level(logging.DEBUG)
    node = make_http_node(http_tokens=str(tokens_file), http_token=OLD_ADMIN)
    client = Http(node.url, token=PRODUCER)
    try:
        client.get("/dead")
        client.get("/status", headers={"Authorization": f"Bearer {WORKER}x"})
        post_form(client, "/ui/login", {"token": PRODUCER + "x"}, "")
        write_tokens(tokens_file, f"{ADMIN} admin\n{PRODUCER} nobody\n")
        node.call(node.node.reload)
    finally:
        client.close()
    text = caplog.text
    assert "http-tokens:2" in text                          # the bad line, by number
    assert not any(secret in text for secret in SECRETS)


@pytest.mark.parametrize("text,message", [
    ("short producer\n", "16 to 512"),
    (f"{PRODUCER}\n", "expected 'TOKEN ROLE'"),
    (f"{PRODUCER} root\n", "unknown role 'root'"),
    (f"{PRODUCER} peer\n", "role peer is for nodes"),
    (f"{PRODUCER} producer\n{PRODUCER} admin\n", "the same token as line 1"),
])
def test_a_bad_tokens_file_names_the_line_never_the_token(text, message):
    with pytest.raises(ConfigError) as info:
        parse_tokens(text, "tokens")
    assert message in info.value.message and PRODUCER not in info.value.message


def test_a_node_with_an_unreadable_tokens_file_does_not_start(tmp_path):
    """A missing or broken --http-tokens file stops the node at start with one
    clear line (exit status 2), naming the file and the line."""
    broken = tmp_path / "broken"
    write_tokens(broken, "x y z\n")
    for path, message in ((tmp_path / "missing", "cannot read the HTTP tokens file"),
                          (broken, "broken:1: expected 'TOKEN ROLE'")):
        done = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(free_port()),
                               "--http-port", str(free_port()), "--http-tokens", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and done.stderr.startswith("miyaq: error: "), done.stderr
