"""What a node meets in its key directory and its bind settings (docs/security.md):
unreadable directories, files that are not certificates, too many keys,
duplicate keys, malformed Z85, a missing node.key, and a keyed node whose
HTTP gateway would be open beyond loopback. Each test names the fault."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from miyaq.cli.main import main
from miyaq.config import NodeConfig
from miyaq.errors import ConfigError
from miyaq.runtime import Supervisor
from miyaq.runtime.sockets import SocketFactory
from miyaq.security import certs, keystore, zap
from miyaq.security.curve import NodeCurve
from miyaq.security.exposure import exposure_warning
from miyaq.security.keystore import KeyStore
from miyaq.security.roles import Role


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def store(tmp_path: object) -> KeyStore:
    ks = KeyStore(os.path.join(str(tmp_path), "keys"))
    ks.init()
    return ks


@pytest.fixture
def handler(store: KeyStore) -> Iterator[zap.ZapHandler]:
    """A node's ZAP handler over ``store`` (not started: reload() is what is tested)."""
    store.add("w1", "worker")
    node = store.node_secret()
    factory = SocketFactory(security=NodeCurve(node.public, node.secret or b""))
    try:
        yield zap.ZapHandler(store, Supervisor("test"), factory)
    finally:
        factory.close()


def _public(path: str) -> bytes:
    return certs.read(path).public


def _copy(src: str, dst: str, **replace: str) -> None:
    with open(src) as f:
        text = f.read()
    for old, new in replace.items():
        text = text.replace(old, new)
    with open(dst, "w") as f:
        f.write(text)


def _authorize_only(store: KeyStore, name: str, role: str) -> None:
    """A certificate put into authorized/ by hand (not by `miyaq keys add`)."""
    certs.create(store.authorized_dir, name, {"role": role, "name": name})
    os.remove(os.path.join(store.authorized_dir, name + ".key_secret"))


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "miyaq.security.zap" and r.levelno >= logging.ERROR]


# -- 1. a reload never kills the node ------------------------------------------------


def test_reload_of_an_unreadable_authorized_dir_keeps_the_keys(
        store: KeyStore, handler: zap.ZapHandler, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Fault: authorized/ becomes unreadable (chmod 000 by mistake while rotating
    keys; simulated: listdir raises PermissionError, as it does for a service
    user), then SIGHUP. The reload keeps the keys, logs one line naming the
    directory and counts the failure; it used to raise PermissionError out of
    the signal handler and kill the node."""
    before = dict(handler.identities)
    real_listdir = os.listdir

    def listdir(path: str) -> list[str]:
        if os.path.abspath(path) == os.path.abspath(store.authorized_dir):
            raise PermissionError(13, "Permission denied", path)
        return real_listdir(path)

    monkeypatch.setattr(keystore.os, "listdir", listdir)
    with pytest.raises(ConfigError, match="cannot read the key directory .*authorized: Permission denied"):
        store.authorized()
    caplog.set_level(logging.ERROR)
    assert handler.reload("SIGHUP") is False
    assert handler.identities == before and handler.reloads["failed"] == 1
    (line,) = _errors(caplog)
    assert "keys not reloaded (SIGHUP)" in line and store.authorized_dir in line and "keeping the" in line


def test_reload_that_meets_any_error_keeps_the_keys(
        store: KeyStore, handler: zap.ZapHandler, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Fault: reading the key directory raises something other than a miyaq
    error (MemoryError, as a key file linked to /dev/zero did). The node keeps
    its keys and says why; only MiyaqError used to be caught."""
    before = dict(handler.identities)

    def boom() -> dict[bytes, keystore.Identity]:
        raise MemoryError()

    monkeypatch.setattr(store, "authorized", boom)
    caplog.set_level(logging.ERROR)
    assert handler.reload("authorized/ changed") is False
    assert handler.identities == before and handler.reloads["failed"] == 1
    (line,) = _errors(caplog)
    assert "MemoryError" in line and "keeping the 2 key(s)" in line


def test_a_revoke_hook_that_fails_neither_undoes_the_reload_nor_skips_the_others(
        store: KeyStore, handler: zap.ZapHandler, caplog: pytest.LogCaptureFixture) -> None:
    """Fault: withdrawing a revoked key's connections fails (a bug in the core's
    revoke). The new keys stay in force, the next hook still runs, and one
    line says what may linger; the exception used to leave the reload
    halfway -- uncounted, the later hooks never run -- and end the directory
    watcher that called it."""
    told: list[set[str]] = []

    def failing(names: set[str]) -> None:
        raise RuntimeError("core went away")

    handler.on_revoked[:] = [failing, told.append]
    store.revoke("w1")
    caplog.set_level(logging.ERROR)
    assert handler.reload("authorized/ changed") is True
    assert told == [{"w1"}]
    assert "w1" not in {identity.name for identity in handler.identities.values()}
    assert handler.reloads["ok"] == 1
    (line,) = _errors(caplog)
    assert "withdrawing what w1 were let do failed" in line


# -- 2. certificate reads are bounded and never block ---------------------------------

_READ_GUARDED = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))
from miyaq.security import certs
t = time.monotonic()
try:
    certs.read(sys.argv[1])
    print("read", flush=True)
except BaseException as exc:
    print(type(exc).__name__, exc, round(time.monotonic() - t, 2), flush=True)
"""


@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "fifo", "directory"])
def test_a_key_file_that_is_not_a_regular_file_is_a_clear_error(tmp_path: object, kind: str) -> None:
    """Fault: authorized/zz.key is a symlink to /dev/zero (read to exhaustion:
    MemoryError), a FIFO (the read blocks forever -- in a node, the whole hub)
    or a directory. Each is a ConfigError naming the file, at once. Run in a
    child with its memory capped and a timeout, so the old unbounded read
    fails the test instead of the machine."""
    path = os.path.join(str(tmp_path), "zz.key")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    else:
        os.symlink("/dev/zero", path)
    try:
        proc = subprocess.run([sys.executable, "-c", _READ_GUARDED, path], capture_output=True, text=True,
                              timeout=20, env=dict(os.environ, PYTHONPATH=ROOT))
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a {kind} blocked")
    out = proc.stdout.strip()
    assert out.startswith(f"ConfigError {path} is not a certificate ("), (out, proc.stderr[-2000:])
    assert "not a regular file" in out


def test_a_certificate_is_read_up_to_its_bound_only(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: a regular file whose size the check before the read did not see
    (it grew, or a /proc-like file reports 0): at most MAX_CERT_BYTES + 1 bytes
    are read, whatever fstat said."""
    path = os.path.join(str(tmp_path), "big.key")
    with open(path, "w") as f:
        f.write("#" * (certs.MAX_CERT_BYTES + 10_000))
    reads: list[int] = []
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(certs.os, "read", read)
    with pytest.raises(ConfigError, match="larger than"):
        certs.read(path)
    assert reads and max(reads) <= certs.MAX_CERT_BYTES + 1


# -- 3. the key cap -------------------------------------------------------------------


def test_non_key_files_do_not_count_against_the_cap(store: KeyStore, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Fault: authorized/ holds more non-key files (editor backups, notes) than
    the cap, sorting before the real keys. The cap used to be applied before
    the .key filter, locking every key out and crashing `miyaq keys add` with
    StopIteration."""
    monkeypatch.setattr(keystore, "MAX_KEYS", 5)
    for i in range(8):
        open(os.path.join(store.authorized_dir, f"0-backup-{i}.key.bak"), "w").close()
    assert main(["keys", "add", store.dir, "ops", "--role", "admin"]) == 0
    assert "authorized as admin" in capsys.readouterr().out
    ids = store.authorized()
    assert ids[_public(os.path.join(store.dir, "ops.key"))].role is Role.ADMIN


def test_more_keys_than_the_cap_refuse_start_and_reload(
        store: KeyStore, handler: zap.ZapHandler, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """Fault: more certificates than a node loads. Keys past the cap used to be
    dropped in silence; now a node does not start (ConfigError naming the cap),
    a reload keeps the old set and logs why, and `miyaq keys add` refuses one
    more key with a message instead of a traceback."""
    monkeypatch.setattr(keystore, "MAX_KEYS", 3)
    for name in ("a", "b"):
        store.add(name, "producer")
    assert len(store.authorized()) == 4                        # node + w1, a, b: at the cap, fine
    assert main(["keys", "add", store.dir, "c", "--role", "producer"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the most a node loads (3)" in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(store.authorized_dir, "c.key"))
    _authorize_only(store, "d", "producer")                    # a fourth, dropped in by hand
    with pytest.raises(ConfigError, match=r"holds 4 keys, more than the 3 a node loads"):
        store.authorized()
    before = dict(handler.identities)
    caplog.set_level(logging.ERROR)
    assert handler.reload("SIGHUP") is False and handler.identities == before
    (line,) = _errors(caplog)
    assert "more than the 3 a node loads" in line


# -- 4. duplicate public keys ------------------------------------------------------------


def test_duplicate_public_keys_refuse_start_and_reload_and_revoke_takes_both(
        store: KeyStore, handler: zap.ZapHandler, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Fault: a copy of an authorized certificate under another name (and another
    role). It used to be authorized twice in silence, and `keys revoke` of one
    left the key authorized as the other."""
    store.add("ops", "admin")
    assert handler.reload("test")
    original = os.path.join(store.authorized_dir, "ops.key")
    copy = os.path.join(store.authorized_dir, "aaa-ops-copy.key")
    _copy(original, copy, **{'role = "admin"': 'role = "producer"', 'name = "ops"': 'name = "ops-copy"'})
    with pytest.raises(ConfigError) as info:
        store.authorized()
    assert original in info.value.message and copy in info.value.message and "same public key" in info.value.message
    before = dict(handler.identities)
    caplog.set_level(logging.ERROR)
    assert handler.reload("SIGHUP") is False and handler.identities == before
    (line,) = _errors(caplog)
    assert "same public key" in line and "aaa-ops-copy.key" in line
    public = _public(original)
    assert main(["keys", "revoke", store.dir, "ops"]) == 0
    assert "aaa-ops-copy: revoked too" in capsys.readouterr().out
    assert public not in store.authorized()
    assert handler.reload("SIGHUP") and public not in handler.identities


def test_a_copy_of_the_cluster_key_in_authorized_is_a_duplicate(store: KeyStore) -> None:
    """Fault: node.key copied into authorized/ with another role: the cluster
    key would no longer be a peer (and could not be revoked there)."""
    _copy(os.path.join(store.dir, "node.key"), os.path.join(store.authorized_dir, "cluster.key"),
          **{'role = "peer"': 'role = "admin"'})
    with pytest.raises(ConfigError, match="cluster.key and .*node.key_secret hold the same public key"):
        store.authorized()


# -- minor: node.key absent; malformed Z85 --------------------------------------------------


def test_cluster_key_is_a_peer_without_node_key(store: KeyStore) -> None:
    """Fault: a node's directory holds node.key_secret and authorized/ only (what
    the docs say nodes need). The cluster key used to come from node.key only,
    so other nodes' connections were refused on the peer port."""
    public = store.node_secret().public
    os.remove(os.path.join(store.dir, "node.key"))
    assert store.authorized()[public].role is Role.PEER


@pytest.mark.parametrize("which", ["secret", "public"])
def test_malformed_z85_key_names_the_file(store: KeyStore, which: str) -> None:
    """Fault: a key of 40 characters that are not Z85 ('~'). The secret one
    used to reach libzmq and fail as "cannot bind ... Invalid argument" naming
    the port; the public one in authorized/ was loaded and never matched."""
    path = os.path.join(store.dir, "node.key_secret") if which == "secret" else \
        os.path.join(store.authorized_dir, "w1.key")
    if which == "public":
        store.add("w1", "worker")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(re.sub(rf'{which}-key = "(.)', rf'{which}-key = "~', text, count=1))
    with pytest.raises(ConfigError, match=f"{path} has a malformed CURVE {which} key"):
        certs.read(path)
    with pytest.raises(ConfigError, match="malformed CURVE"):
        store.node_secret() if which == "secret" else store.authorized()


# -- 5. the HTTP gateway beyond loopback ------------------------------------------------------


def _config(**settings: object) -> NodeConfig:
    return NodeConfig.load(args=settings, environ={})


def test_keys_do_not_leave_the_http_gateway_open_beyond_loopback(store: KeyStore, tmp_path: object) -> None:
    """Fault: `--keys` with `--host 0.0.0.0` and the default gateway (8088, no
    tokens) passed the safe-by-default check, and the gateway served every
    caller as admin (GET /tasks, POST /dead/purge). Now it refuses like a
    keyless ZeroMQ bind, naming what to pass; --insecure starts it with a warning."""
    with pytest.raises(ConfigError) as info:
        exposure_warning(_config(host="0.0.0.0", keys=store.dir))
    message = info.value.message
    assert message.startswith("refusing to open the HTTP gateway on 0.0.0.0 (port 8088) without tokens")
    for hint in ("--keys protects the ZeroMQ ports only", "--http-tokens FILE", "--http-token",
                 "--http-host 127.0.0.1", "--http-port 0", "--insecure"):
        assert hint in message
    # Each way out the message names:
    tokens = os.path.join(str(tmp_path), "tokens")
    assert exposure_warning(_config(host="0.0.0.0", keys=store.dir, http_tokens=tokens)) is None
    assert exposure_warning(_config(host="0.0.0.0", keys=store.dir, http_token="t" * 20)) is None
    assert exposure_warning(_config(host="0.0.0.0", keys=store.dir, http_host="127.0.0.1")) is None
    assert exposure_warning(_config(host="0.0.0.0", keys=store.dir, http_port=0)) is None
    warning = exposure_warning(_config(host="0.0.0.0", keys=store.dir, insecure=True))
    assert warning is not None and warning.startswith("INSECURE: the HTTP gateway is bound to 0.0.0.0")
    # The gateway's own address counts, with or without keys:
    with pytest.raises(ConfigError, match="refusing to open the HTTP gateway on 0.0.0.0"):
        exposure_warning(_config(http_host="0.0.0.0"))
    assert exposure_warning(_config()) is None                       # the loopback default stays quiet
    both = exposure_warning(_config(host="0.0.0.0", insecure=True))
    assert both is not None and both.startswith("INSECURE: the ZeroMQ ports are bound") and "HTTP gateway" in both
    with pytest.raises(ConfigError, match="refusing to bind 0.0.0.0 without keys"):
        exposure_warning(_config(host="0.0.0.0"))                    # the ZeroMQ refusal comes first
