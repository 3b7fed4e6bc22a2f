"""HTTP pull leases belong to the token that received them: ``/tasks/{id}/ack``,
``/nack`` and ``/touch`` with another worker token change nothing, as ZeroMQ
refuses an ACK from a key that did not RECEIVE the task. Without tokens every
caller is the same consumer (``http``), as before."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from gateway_harness import FIXTURES, Http, NodeThread

from miyaq.gateway.pull_api import HTTP_PULL
from miyaq.gateway.tokens import TokenTable

http_node, api, make_http_node, make_web_worker = FIXTURES

FIRST = "pull-token-a-0123456789abcdef"
SECOND = "pull-token-b-0123456789abcdef"
PRODUCER = "shop-token-0123456789abcdef"
ADMIN = "ops-token-0123456789abcdef"


@pytest.fixture
def node(make_http_node, tmp_path: Path) -> NodeThread:
    path = tmp_path / "http-tokens"
    path.write_text(f"{FIRST} worker\n{SECOND} worker\n{PRODUCER} producer\n{ADMIN} admin\n")
    os.chmod(path, 0o600)
    return make_http_node(http_tokens=str(path))


@pytest.fixture
def clients(node: NodeThread):
    made = {name: Http(node.url, token=token) for name, token in
            (("first", FIRST), ("second", SECOND), ("producer", PRODUCER), ("admin", ADMIN))}
    yield made
    for client in made.values():
        client.close()


def received(clients, task_id: str, queue: str) -> dict:
    """``task_id`` submitted by the producer and received by the first worker token."""
    status, answer, _ = clients["producer"].post("/tasks", {"name": "resize", "queue": queue, "id": task_id})
    assert status in (200, 202), answer
    status, answer, _ = clients["first"].post("/receive", {"queues": [queue]})
    assert status == 200 and answer["task"]["id"] == task_id, answer
    return answer["task"]


def test_another_worker_token_cannot_finish_or_extend_a_lease(clients):
    """Fault: every HTTP pull consumer was one principal (``http``), so a
    second worker token acked a task the first had received (and touched
    it, or nacked it): its forged result stood and the receiver's own ack
    answered ``{"ok": false}``. docs/security.md promises a pull consumer
    ACKs and NACKs only what it received. Now the other token's ack, nack
    and touch answer ``{"ok": false}`` and change nothing; the receiver's
    ack is the result."""
    task = received(clients, "order-17", "h")
    second = clients["second"]
    for path, body in (("touch", {"attempt": 1}), ("touch", {}), ("ack", {"attempt": 1, "result": "forged"}),
                       ("nack", {"attempt": 1, "retry": False, "error": "forged"})):
        status, answer, _ = second.post(f"/tasks/order-17/{path}", body)
        assert status == 200 and answer["ok"] is False, (path, body, answer)
        assert "leased to another consumer" in answer["reason"], answer
    status, answer, _ = clients["admin"].get("/tasks/order-17")
    assert answer["task"]["state"] == "running" and answer["task"]["attempt"] == task["attempt"], answer
    status, answer, _ = clients["first"].post("/tasks/order-17/touch", {"attempt": 1})
    assert answer["ok"] is True, answer
    status, answer, _ = clients["first"].post("/tasks/order-17/ack", {"attempt": 1, "result": "real"})
    assert answer == {"ok": True}, answer
    status, answer, _ = clients["producer"].get("/tasks/order-17/result")
    assert answer["result"] == "real", answer


def test_the_lease_is_named_by_a_hash_never_the_token_and_the_same_on_every_node(node, clients):
    """What the engine records (and tells other holders) as the lessee is
    ``http:`` and a name of the token that every node computes alike (a
    consumer behind a load balancer acks through another node that holds
    the task); the token itself appears nowhere."""
    received(clients, "order-18", "h")
    gateway = node.node.part("gateway")
    lessees = node.call(lambda: list(gateway.core.engine.table.live["order-18"].lessees))
    another_node = TokenTable("", "")      # another process: another key for its own fingerprints
    assert lessees == [(1, f"{HTTP_PULL}:{another_node.lessee_name(FIRST)}")]
    assert another_node.lessee_name(FIRST) != another_node.lessee_name(SECOND)
    assert FIRST not in repr(lessees)


def test_without_tokens_every_caller_is_the_same_consumer(http_node, api):
    """A gateway without tokens has no callers to tell apart: a lease is
    ``http``'s, and another connection acks it (as before)."""
    assert api.post("/tasks", {"name": "resize", "queue": "h", "id": "order-19"})[0] in (200, 202)
    assert api.post("/receive", {"queues": ["h"]})[1]["task"]["id"] == "order-19"
    other = Http(http_node.url)
    try:
        assert other.post("/tasks/order-19/ack", {"attempt": 1, "result": 1})[1] == {"ok": True}
    finally:
        other.close()
