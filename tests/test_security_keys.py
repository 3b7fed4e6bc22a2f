"""Keys, certificates and the node's ZAP handler (docs/security.md)."""
from __future__ import annotations

import os

import pytest
import zmq.auth

from miyaq.cli.main import main
from miyaq.errors import ConfigError
from miyaq.runtime import Supervisor
from miyaq.runtime import green
from miyaq.runtime.messages import recv_with_user
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.security import certs, zap
from miyaq.security.curve import ClientCurve, NodeCurve, client_curve
from miyaq.security.keystore import KeyStore
from miyaq.security.roles import Role, may_send, parse_role
from miyaq.protocol import commands as c


@pytest.fixture
def store(tmp_path: object) -> KeyStore:
    ks = KeyStore(os.path.join(str(tmp_path), "keys"))
    ks.init()
    return ks


def test_keys_cli_init_add_list_revoke(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    d = os.path.join(str(tmp_path), "k")
    assert main(["keys", "init", d]) == 0
    assert main(["keys", "add", d, "w1", "--role", "worker"]) == 0
    assert main(["keys", "add", d, "ops", "--role", "operator"]) == 0
    assert main(["keys", "list", d]) == 0
    out = capsys.readouterr().out
    assert "w1" in out and "worker" in out and "ops" in out and "admin" in out
    assert main(["keys", "revoke", d, "w1"]) == 0
    assert not os.path.exists(os.path.join(d, "authorized", "w1.key"))
    assert os.path.exists(os.path.join(d, "revoked", "w1.key_secret"))
    assert main(["keys", "list", d]) == 0
    assert "1 authorized, 1 revoked" in capsys.readouterr().out


def test_keys_cli_refuses_bad_role_name_and_reinit(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    """Fault: an operator mistypes. Each mistake is one clear error, exit status 2, nothing written."""
    d = os.path.join(str(tmp_path), "k")
    assert main(["keys", "init", d]) == 0
    assert main(["keys", "init", d]) == 2
    assert main(["keys", "add", d, "x", "--role", "boss"]) == 2
    assert main(["keys", "add", d, "../evil", "--role", "worker"]) == 2
    assert main(["keys", "add", d, "node", "--role", "worker"]) == 2
    assert main(["keys", "revoke", d, "nobody"]) == 2
    err = capsys.readouterr().err
    assert "unknown role 'boss'" in err and "invalid key name" in err and "no authorized key" in err
    assert sorted(os.listdir(os.path.join(d, "authorized"))) == []


def test_certificates_are_czmq_format_readable_by_pyzmq(store: KeyStore) -> None:
    public_path, secret_path = store.add("p1", "producer")
    public, secret = zmq.auth.load_certificate(secret_path)
    cert = certs.read(secret_path)
    assert (cert.public, cert.secret) == (public, secret)
    assert certs.read(public_path).metadata == {"role": "producer", "name": "p1"}
    assert os.stat(secret_path).st_mode & 0o777 == 0o600
    assert store.authorized()[public].role is Role.PRODUCER


def test_corrupt_certificate_is_a_clear_error(tmp_path: object) -> None:
    """Fault: a truncated or foreign file in authorized/."""
    path = os.path.join(str(tmp_path), "bad.key")
    with open(path, "w") as f:
        f.write("curve\n    public-key = \"short\"\n")
    with pytest.raises(ConfigError, match="no CURVE public key"):
        certs.read(path)


def test_roles_table() -> None:
    assert may_send(Role.PRODUCER, c.SUBMIT) and not may_send(Role.PRODUCER, c.READY)
    assert not may_send(Role.PRODUCER, c.DEAD) and not may_send(Role.PRODUCER, c.RECEIVE)
    assert may_send(Role.WORKER, c.DONE) and may_send(Role.WORKER, c.RECEIVE) and not may_send(Role.WORKER, c.DEAD)
    assert all(may_send(Role.ADMIN, cmd) for cmd in c.NODE_COMMANDS)
    assert not any(may_send(Role.PEER, cmd) for cmd in c.NODE_COMMANDS)
    assert parse_role("Operator") is Role.ADMIN
    with pytest.raises(ValueError):
        parse_role("root")


def test_client_curve_from_args_and_env(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _, secret = store.add("c1", "producer")
    node_public = os.path.join(store.dir, "node.key")
    assert client_curve(None, None) is None
    cred = client_curve(secret, node_public)
    assert isinstance(cred, ClientCurve) and cred.server_public == certs.read(node_public).public
    monkeypatch.setenv("MIYAQ_KEY", secret)
    monkeypatch.setenv("MIYAQ_SERVER_KEY", node_public)
    assert client_curve(None, None) == cred
    monkeypatch.delenv("MIYAQ_SERVER_KEY")
    with pytest.raises(ConfigError, match="--server-key"):
        client_curve(None, None)
    with pytest.raises(ConfigError, match="no secret key"):
        client_curve(os.path.join(store.dir, "c1.key"), node_public)


class _Server:
    """A CURVE ROUTER with the node's ZAP handler, as a node sets them up."""

    def __init__(self, store: KeyStore) -> None:
        node = store.node_secret()
        self.sup = Supervisor("test")
        self.factory = SocketFactory(security=NodeCurve(node.public, node.secret or b""))
        self.zap = zap.ZapHandler(store, self.sup, self.factory)
        self.zap.start()
        self.router = self.factory.router("tcp://127.0.0.1:*")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.clients = SocketFactory()

    def client(self, curve: object | None) -> object:
        factory = SocketFactory(security=curve, ctx=self.clients.ctx)  # type: ignore[arg-type]
        return factory.dealer(self.endpoint)

    def recv(self, timeout: float = 1.0) -> tuple[list[bytes], str | None] | None:
        with green.Timeout(timeout, False):
            return recv_with_user(self.router)
        return None

    def close(self) -> None:
        self.sup.kill()
        self.clients.close()
        self.factory.close()


def _curve(store: KeyStore, name: str) -> ClientCurve:
    cred = client_curve(os.path.join(store.dir, name + ".key_secret"), os.path.join(store.dir, "node.key"))
    assert cred is not None
    return cred


def test_authorized_key_connects_and_is_identified(store: KeyStore) -> None:
    store.add("w1", "worker")
    server = _Server(store)
    try:
        sock = server.client(_curve(store, "w1"))
        sock.send_multipart([b"MQ1", b"STATUS", b"\x80"])  # type: ignore[attr-defined]
        got = server.recv(5.0)
        assert got is not None
        frames, user = got
        assert frames[1:] == [b"MQ1", b"STATUS", b"\x80"]
        ident = server.zap.identity(user)
        assert ident is not None and ident.name == "w1" and ident.role is Role.WORKER
    finally:
        server.close()


def test_stranger_without_key_or_with_unknown_key_gets_nothing(store: KeyStore) -> None:
    """Fault: a stranger on the network connects with no key, then with a key of its own."""
    server = _Server(store)
    try:
        plain = server.client(None)
        plain.send(b"hello")  # type: ignore[attr-defined]
        pub, sec = zmq.curve_keypair()
        node_public = certs.read(os.path.join(store.dir, "node.key")).public
        stranger = server.client(ClientCurve(pub, sec, node_public))
        stranger.send(b"hello")  # type: ignore[attr-defined]
        assert server.recv(1.0) is None
        assert server.zap.refused >= 1
    finally:
        server.close()


def test_revoked_key_loses_access_on_reload(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: a worker's key is stolen; the operator revokes it while the node runs."""
    monkeypatch.setattr(zap, "WATCH_INTERVAL", 0.05)
    store.add("w1", "worker")
    server = _Server(store)
    try:
        sock = server.client(_curve(store, "w1"))
        sock.send(b"one")  # type: ignore[attr-defined]
        got = server.recv(5.0)
        assert got is not None and server.zap.identity(got[1]) is not None
        store.revoke("w1")
        for _ in range(100):
            if server.zap.reloads["ok"]:
                break
            green.sleep(0.05)
        sock.send(b"two")  # type: ignore[attr-defined]
        got = server.recv(5.0)
        assert got is not None and server.zap.identity(got[1]) is None   # connected, but no longer anyone
        store.add("w2", "worker")
        assert server.zap.reload("test")
        late = server.client(_curve(store, "w2"))
        late.send(b"three")  # type: ignore[attr-defined]
        got = server.recv(5.0)
        assert got is not None and server.zap.identity(got[1]).name == "w2"  # type: ignore[union-attr]
    finally:
        server.close()


def test_non_peer_key_cannot_reach_peer_port_or_stream(store: KeyStore) -> None:
    """Fault: an authorized producer tries the peer port and the replication stream
    (they carry other nodes' tasks and results)."""
    store.add("p1", "producer")
    server = _Server(store)
    try:
        peer_port = server.factory.router("tcp://127.0.0.1:*", audience="peer")
        pub = server.factory.publisher("tcp://127.0.0.1:*")
        cred = _curve(store, "p1")
        dealer = SocketFactory(security=cred, ctx=server.clients.ctx).dealer(
            peer_port.getsockopt_string(zmq.LAST_ENDPOINT))
        dealer.send(b"REPLICATE")
        sub = SocketFactory(security=cred, ctx=server.clients.ctx).subscriber([b""])
        sub.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
        node = store.node_secret()
        peer_sub = SocketFactory(security=NodeCurve(node.public, node.secret or b""),
                                 ctx=server.clients.ctx).subscriber([b""])
        peer_sub.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
        got = None
        for _ in range(40):
            pub.send(b"stream")
            with green.Timeout(0.05, False):
                got = peer_sub.recv()
            if got:
                break
        assert got == b"stream"                       # a peer key is served
        with green.Timeout(0.5, False):
            assert sub.recv() is None                 # never reached: the handshake failed
        with green.Timeout(0.5, False):
            assert peer_port.recv() is None
        assert server.zap.refused >= 2
    finally:
        server.close()


def test_failed_reload_keeps_previous_keys(store: KeyStore) -> None:
    """Fault: an operator drops a corrupt file into authorized/."""
    store.add("w1", "worker")
    server = _Server(store)
    try:
        with open(os.path.join(store.authorized_dir, "junk.key"), "w") as f:
            f.write("not a certificate\n")
        before = dict(server.zap.identities)
        assert not server.zap.reload("test")
        assert server.zap.identities == before and server.zap.reloads["failed"] == 1
    finally:
        server.close()
