"""Client keys (issue 9, client side): Client, App and the CLI run CURVE with
``key``/``server_key`` (or MIYAQ_KEY/MIYAQ_SERVER_KEY), and say clearly why
when the handshake never completes. The node side is a bare CURVE port
behind the node's ZAP handler (tests/curve_server.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import miyaq
from curve_server import CurveServer
from miyaq.security.keystore import KeyStore


@pytest.fixture
def store(tmp_path) -> KeyStore:
    ks = KeyStore(str(tmp_path / "keys"))
    ks.init()
    ks.add("app", "producer")
    return ks


@pytest.fixture
def server(store):
    s = CurveServer(store).start()
    yield s
    s.stop()


def _paths(store: KeyStore, name: str = "app") -> tuple[str, str]:
    return os.path.join(store.dir, f"{name}.key_secret"), os.path.join(store.dir, "node.key")


WRONG_NODE_KEY = ("closed the connection during the key handshake: the node's public key given to this client "
                  "(--server-key) is most likely not that node's")


def test_client_with_keys_talks_curve_and_is_identified_by_its_key(store, server):
    key, server_key = _paths(store)
    with miyaq.Client(server.endpoint, key=key, server_key=server_key) as client:
        assert client.status()["node"] == "curve"
        handle = client.submit("echo", [1], wait=True)
        assert handle.accepted and handle.node == server.endpoint
    identities = {server.zap.identity(u).name for u in server.users if u is not None}
    assert identities == {"app"} and None not in server.users


def test_keys_from_the_environment(store, server, monkeypatch):
    key, server_key = _paths(store)
    monkeypatch.setenv("MIYAQ_KEY", key)
    monkeypatch.setenv("MIYAQ_SERVER_KEY", server_key)
    with miyaq.Client(server.endpoint) as client:
        assert client.status()["node"] == "curve"


def test_app_passes_its_keys_to_its_client(store, server):
    key, server_key = _paths(store)
    app = miyaq.App(server.endpoint, key=key, server_key=server_key, submit_timeout=5.0)

    @app.task(name="echo")
    def echo(x):
        return x

    try:
        assert echo.submit(1, wait=True).accepted
    finally:
        app.close()


def test_wrong_server_key_fails_at_first_contact_naming_the_keys(store, server, tmp_path, short_first_contact):
    """Fault: the client has another cluster's public key. The CURVE handshake
    never completes; the request fails within the connect wait (not at its
    10 s timeout) and a submit after the first-contact wait (not at its
    600 s deadline), both saying which key is wrong (the node closes a
    handshake it cannot decrypt without a word; before 2026-12-05 the
    error listed the possible causes instead)."""
    other = KeyStore(str(tmp_path / "other"))
    other.init()
    key, _ = _paths(store)
    client = miyaq.Client(server.endpoint, key=key, server_key=os.path.join(other.dir, "node.key"),
                          submit_timeout=600.0)
    try:
        with pytest.raises(miyaq.Unavailable) as failure:
            client.status()
        assert f"cannot reach any node: {server.endpoint} {WRONG_NODE_KEY}" in str(failure.value)
        with pytest.raises(miyaq.Unavailable, match="is most likely not that node's"):
            client.submit("echo", [1], wait=True)
    finally:
        client.close(flush=False)
    assert server.users == []                 # nothing reached the service's handlers


def test_revoked_key_is_refused_with_the_same_message(store, server):
    """Fault: the client's key was revoked (and the node reloaded its keys):
    the error says the node refused this key (before 2026-12-05 it listed
    the possible causes: a wrong node key, an unknown key, no node)."""
    store.revoke("app")
    server.reload()
    key, server_key = _paths(store)
    key = os.path.join(store.dir, "revoked", "app.key_secret")
    with miyaq.Client(server.endpoint, key=key, server_key=server_key, request_timeout=3.0) as client:
        with pytest.raises(miyaq.Unavailable) as failure:
            client.status()
    assert f"cannot reach any node: {server.endpoint} refused this client's key: the node does not know it" in \
        str(failure.value)
    assert server.users == []


def test_a_key_without_a_server_key_is_a_config_error(store):
    """Fault: half the credentials. Nothing connects; the error names what is missing."""
    key, _ = _paths(store)
    with pytest.raises(miyaq.ConfigError, match="--key given without --server-key"):
        miyaq.Client("tcp://127.0.0.1:1", key=key)


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "miyaq.cli.main", *argv], capture_output=True, text=True,
                          timeout=60, env=full_env)


def test_cli_verbs_take_key_and_server_key(store, server):
    key, server_key = _paths(store)
    done = _cli("status", "--json", "--connect", server.endpoint, "--key", key, "--server-key", server_key)
    assert done.returncode == 0, done.stderr
    assert '"node": "curve"' in done.stdout
    done = _cli("submit", "echo", "--connect", server.endpoint, "--json",
                env={"MIYAQ_KEY": key, "MIYAQ_SERVER_KEY": server_key})
    assert done.returncode == 0, done.stderr
    assert '"status": "accepted"' in done.stdout


def test_cli_with_a_wrong_server_key_is_one_clear_error(store, server, tmp_path):
    """Fault: `miyaq status` with another cluster's public key: exit 2, the keys named."""
    other = KeyStore(str(tmp_path / "other"))
    other.init()
    key, _ = _paths(store)
    done = _cli("status", "--connect", server.endpoint, "--key", key, "--server-key",
                os.path.join(other.dir, "node.key"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"miyaq: error: cannot reach any node: {server.endpoint} {WRONG_NODE_KEY}")


def test_cli_submit_key_is_the_certificate_and_the_dedup_key_has_its_own_option():
    """Fault: an old script passes a deduplication key as --key. One clear error, nothing sent."""
    done = _cli("submit", "echo", "--key", "welcome:ann", "--connect", "tcp://127.0.0.1:1")
    assert done.returncode == 2
    assert "no such certificate file" in done.stderr and "--dedup-key" in done.stderr


def test_ring_asks_each_member_with_the_keys(store, server):
    """`miyaq ring`'s TASKS column asks every member over CURVE with --key/--server-key;
    without them the handshake fails and the member shows n/a (None)."""
    from miyaq.cli.ring_cmd import tasks_held
    key, server_key = _paths(store)
    members = {"n1": {"service": server.endpoint}}
    assert tasks_held(members, timeout=3.0, key=key, server_key=server_key) == {"n1": 0}
    assert tasks_held(members, timeout=1.0) == {"n1": None}
