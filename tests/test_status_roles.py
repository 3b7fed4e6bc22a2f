"""STATUS (ZeroMQ) and ``GET /status`` list the registered workers -- their
ids, hosts, pids, queues -- to ``admin`` keys and tokens only, as ``GET
/workers``; a producer's or worker's key or token gets their number
(``totals.workers``). A node without keys, a gateway without tokens, has no
roles: everyone gets the list, as before."""
from __future__ import annotations

import json
import os
import urllib.request

import pytest
from secure_harness import Keys, Speaker, make_keys

from miyaq.cli.main import main
from miyaq.protocol import commands as c
from miyaq.testing.harness import free_port

TOKENS = {"producer": "shop-token-0123456789abcdef", "worker": "pull-token-0123456789abcdef",
          "admin": "ops-token-0123456789abcdef"}
WORKER = {"worker": "billing-worker-7", "queues": ["qa"], "capacity": 2, "host": "db-host-7", "pid": 4242}


@pytest.fixture
def keys(tmp_path) -> Keys:
    return make_keys(os.path.join(str(tmp_path), "keys"))


@pytest.fixture
def secured(ctx, make_node, keys, tmp_path):
    """A node with keys and HTTP tokens, and a worker a worker key registered
    (heartbeats every 5 s: the raw worker sends none while the test runs)."""
    tokens = tmp_path / "http-tokens"
    tokens.write_text("".join(f"{token} {role}\n" for role, token in TOKENS.items()))
    os.chmod(tokens, 0o600)
    node = make_node(keys=keys.dir, http_tokens=str(tokens), http_port=free_port(), heartbeat=5.0)
    worker = speaker(ctx, node, keys, "worker")
    worker.send(c.READY, WORKER)
    assert worker.recv()[0] == c.WELCOME
    return node


def speaker(ctx, node, keys: Keys, name: str) -> Speaker:
    public, secret = keys.pair(name)
    return Speaker(ctx, node.endpoint, (public, secret, keys.server_public))


def http_status(node, token: str | None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{node.config.http_port}/status")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


@pytest.mark.parametrize("role", ["producer", "worker"])
def test_status_gives_a_producer_or_worker_key_the_count_not_the_workers(ctx, secured, keys, role):
    """Fault: STATUS listed every worker -- id, host, pid, queues, last seen
    -- to any key, while ``GET /workers`` (and the console's workers page)
    refuse a producer or worker token; ``GET /status`` listed them to those
    tokens too. Now neither lists them to a producer or worker: the count
    is there, no worker's id or host is."""
    status = speaker(ctx, secured, keys, role).ok(c.STATUS)
    assert "workers" not in status and status["totals"]["workers"] == 1, status
    assert "billing-worker-7" not in json.dumps(status) and "db-host-7" not in json.dumps(status)
    status = http_status(secured, TOKENS[role])
    assert "workers" not in status and status["totals"]["workers"] == 1, status
    assert "billing-worker-7" not in json.dumps(status) and "db-host-7" not in json.dumps(status)


def test_status_lists_the_workers_to_an_admin(ctx, secured, keys):
    """An admin key and an admin token get the list, whoever spoke before
    (the producer's STATUS just before does not change the admin's)."""
    speaker(ctx, secured, keys, "producer").ok(c.STATUS)
    for status in (speaker(ctx, secured, keys, "admin").ok(c.STATUS), http_status(secured, TOKENS["admin"])):
        [row] = status["workers"]
        assert row["worker"] == "billing-worker-7" and row["host"] == "db-host-7" and row["pid"] == 4242, row
    speaker(ctx, secured, keys, "producer").ok(c.STATUS)
    assert http_status(secured, TOKENS["admin"])["workers"][0]["worker"] == "billing-worker-7"


def test_a_node_without_keys_or_tokens_lists_the_workers_to_everyone(ctx, make_node):
    """No roles, no change: STATUS and ``GET /status`` list the workers."""
    node = make_node(http_port=free_port(), heartbeat=5.0)
    worker = Speaker(ctx, node.endpoint)
    worker.send(c.READY, WORKER)
    assert worker.recv()[0] == c.WELCOME
    for status in (Speaker(ctx, node.endpoint).ok(c.STATUS), http_status(node, None)):
        assert [w["worker"] for w in status["workers"]] == ["billing-worker-7"], status


def test_miyaq_status_says_the_list_is_for_admins(secured, keys, capsys):
    """``miyaq status`` with a producer key shows the count and says the
    list is an admin's; with the admin key, the worker's row."""
    options = ["--connect", secured.endpoint, "--server-key", keys.server_key]
    assert main(["status", *options, "--key", keys.secret("producer")]) == 0
    out = capsys.readouterr().out
    assert "workers 1" in out and "the workers' list is shown to admin keys only" in out, out
    assert "billing-worker-7" not in out
    assert main(["status", *options, "--key", keys.secret("admin")]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("billing-worker-7") for line in out.splitlines()), out
    assert "admin keys only" not in out
