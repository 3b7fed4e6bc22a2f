"""The clients against a real node with keys (``miyaq node --keys``): the
threaded client, the asyncio client and the CLI, each with its own key, and
what each sees when its keys are wrong or its role does not allow a command."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import miyaq
import miyaq.aio
from miyaq.security.keystore import KeyStore
from miyaq.testing.harness import wait_for

from secure_harness import Keys, make_keys


@pytest.fixture
def keys(tmp_path) -> Keys:
    return make_keys(os.path.join(str(tmp_path), "keys"))


@pytest.fixture
def secure_node(make_node, keys):
    return make_node(keys=keys.dir)


def test_producer_key_submits_reads_and_cancels(secure_node, keys):
    with miyaq.Client(secure_node.endpoint, key=keys.secret("producer"), server_key=keys.server_key) as client:
        handle = client.submit("echo", [1], countdown=600, wait=True)
        assert client.status(handle.id)["state"] == "scheduled"
        assert client.cancel(handle.id) is True
        with pytest.raises(miyaq.TaskCancelled):
            handle.result(timeout=5)


def test_a_command_outside_the_keys_role_is_forbidden(secure_node, keys):
    """Fault: a producer's key asks for the dead-letter queue (admin only): the
    node refuses with `forbidden`, raised as miyaq.errors.Forbidden; the
    client stays usable."""
    from miyaq.errors import Forbidden
    with miyaq.Client(secure_node.endpoint, key=keys.secret("producer"), server_key=keys.server_key) as client:
        with pytest.raises(Forbidden):
            client.dead("purge")
        assert client.submit("echo", [1], wait=True).accepted
    with miyaq.Client(secure_node.endpoint, key=keys.secret("admin"), server_key=keys.server_key) as admin:
        assert admin.dead("list")["tasks"] == []


def test_asyncio_client_with_keys(secure_node, keys):
    async def main() -> str:
        async with miyaq.aio.Client(secure_node.endpoint, key=keys.secret("producer"),
                                    server_key=keys.server_key) as client:
            handle = await client.submit("echo", [1], countdown=600, wait=True)
            return (await client.status(handle.id))["state"]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == "scheduled"


def test_wrong_server_key_against_a_node_fails_at_first_contact(secure_node, keys, tmp_path, short_first_contact):
    """Fault: the client has another cluster's public key: no answer, and the
    error says the node key is most likely wrong (the node counts the failed
    handshake: STATUS security.handshakes_failed)."""
    other = KeyStore(str(tmp_path / "other"))
    other.init()
    client = miyaq.Client(secure_node.endpoint, key=keys.secret("producer"),
                          server_key=os.path.join(other.dir, "node.key"), submit_timeout=600.0)
    try:
        with pytest.raises(miyaq.Unavailable, match=r"the node's public key given to this client \(--server-key\) "
                                                    r"is most likely not that node's"):
            client.submit("echo", [1], wait=True)
    finally:
        client.close(flush=False)
    failed = secure_node.node.status(0)["security"]["handshakes_failed"]
    assert failed["service"]["cryptographic error"] >= 1, failed


def test_a_client_without_keys_gets_no_answer_from_a_node_with_keys(secure_node):
    """Fault: the client was given no keys at all. The node admits no plain
    connection; the client says the node needs keys (or closed the
    handshake, as such a node does), within seconds."""
    with miyaq.Client(secure_node.endpoint, request_timeout=3.0) as client:
        with pytest.raises(miyaq.Unavailable, match="cannot reach any node"):
            client.status()


def test_a_revoked_key_is_refused_at_its_next_connection(quick_key_watch, secure_node, keys):
    """Fault: the operator revoked the client's key while the node runs (the
    node re-reads authorized/ when it changes). A client connecting with it
    then gets the first-contact message saying the node refused its key."""
    def authorized() -> int:
        return int(secure_node.node.status(0)["security"]["authorized"])

    before = authorized()
    keys.store.add("temp", "producer")
    wait_for(lambda: authorized() == before + 1, what="the new key loaded")
    secret = keys.secret("temp")
    with miyaq.Client(secure_node.endpoint, key=secret, server_key=keys.server_key) as client:
        assert client.submit("echo", [1], wait=True).accepted
    keys.store.revoke("temp")
    wait_for(lambda: authorized() == before, what="the key revoked")
    secret = os.path.join(keys.dir, "revoked", "temp.key_secret")
    with miyaq.Client(secure_node.endpoint, key=secret, server_key=keys.server_key, request_timeout=3.0) as client:
        with pytest.raises(miyaq.Unavailable, match="refused this client's key: the node does not know it"):
            client.status()


def test_cli_status_and_submit_with_keys(secure_node, keys):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    base = [sys.executable, "-m", "miyaq.cli.main"]
    done = subprocess.run(base + ["status", "--json", "--connect", secure_node.endpoint, "--key",
                                  keys.secret("admin"), "--server-key", keys.server_key],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert '"keys": true' in done.stdout
    env.update(MIYAQ_KEY=keys.secret("producer"), MIYAQ_SERVER_KEY=keys.server_key)
    done = subprocess.run(base + ["submit", "echo", "--countdown", "600", "--connect", secure_node.endpoint],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "status: accepted" in done.stdout
