"""Modes of the key directory and the warnings for secret key files others
may read: a node's, a worker's or client's, the gateway's TLS key (the
operator-security audit of 2026-12-06). Modes are read with ``os.stat``:
the suite may run as root, who reads any file. A test that sets the umask
puts it back.

Fault tests say in their docstring which fault they simulate."""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from file_modes import mode

from miyaq.cli.main import main
from miyaq.gateway import tls
from miyaq.security import curve
from miyaq.security.keystore import KeyStore


# -- the key directory ----------------------------------------------------------------------------
def test_key_directories_are_owner_only_whatever_the_umask(tmp_path: Path, umask_000: None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Fault: ``miyaq keys init``/``revoke`` run under ``umask 000``. Before
    the fix only the top directory was chmodded: ``authorized/`` and
    ``revoked/`` were drwxrwxrwx, and any local user could put an admin's
    certificate in ``authorized/``. Now both are 0700, secrets 0600."""
    d = str(tmp_path / "keys")
    assert main(["keys", "init", d]) == 0
    assert main(["keys", "add", d, "app", "--role", "producer"]) == 0
    assert main(["keys", "revoke", d, "app"]) == 0
    capsys.readouterr()
    assert mode(d) == 0o700
    assert mode(os.path.join(d, "authorized")) == 0o700
    assert mode(os.path.join(d, "revoked")) == 0o700
    assert mode(os.path.join(d, "node.key_secret")) == 0o600
    assert mode(os.path.join(d, "revoked", "app.key_secret")) == 0o600


def test_an_existing_revoked_directory_is_left_as_it_is(tmp_path: Path) -> None:
    """A ``revoked/`` the operator made is theirs: a revoke moves files into it, its mode unchanged."""
    store = KeyStore(str(tmp_path / "keys"))
    store.init()
    store.add("app", "producer")
    revoked = tmp_path / "keys" / "revoked"
    revoked.mkdir()
    revoked.chmod(0o750)
    store.revoke("app")
    assert mode(revoked) == 0o750 and (revoked / "app.key_secret").exists()


def test_a_node_key_others_may_read_is_warned_about_at_start(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Fault: ``node.key_secret`` is 0644 (copied without its mode, made by
    hand). Before the fix the node started on it without a word, though the
    tokens and ZooKeeper credentials files were warned about; now one
    WARNING names the file, its mode and the fix. A 0600 one: no warning."""
    store = KeyStore(str(tmp_path / "keys"))
    store.init()
    secret = tmp_path / "keys" / "node.key_secret"
    with caplog.at_level(logging.WARNING, logger="miyaq.security.keystore"):
        store.node_secret()
        assert caplog.records == []
        secret.chmod(0o644)
        store.node_secret()
    [warning] = caplog.records
    assert warning.getMessage() == f"secret key file {secret} is readable by others (mode 644, group " \
                                   f"{os.stat(secret).st_gid}): chmod 600 it"


def test_a_key_directory_others_may_write_is_warned_about_at_start(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Fault: ``authorized/`` is 0777 (made under ``umask 000`` by a build
    before the fix, or by hand): any local user may authorize a key. The
    node warns, naming it; it changes no mode it did not make."""
    store = KeyStore(str(tmp_path / "keys"))
    store.init()
    authorized = tmp_path / "keys" / "authorized"
    authorized.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="miyaq.security.keystore"):
        store.node_secret()
    [warning] = caplog.records
    assert warning.getMessage().startswith(f"key directory {authorized} is writable by others (mode 777")
    assert mode(authorized) == 0o777


def test_a_client_or_worker_key_others_may_read_is_warned_about_once(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: a worker's ``--key`` file is 0644. Before the fix it was used
    without a word; now the first load in a process warns (a program that
    makes many clients with it is told once)."""
    monkeypatch.setattr(curve, "_warned", set(), raising=False)
    store = KeyStore(str(tmp_path / "keys"))
    store.init()
    _, secret = store.add("wk", "worker")
    server = str(tmp_path / "keys" / "node.key")
    with caplog.at_level(logging.WARNING, logger="miyaq.security.curve"):
        curve.client_curve(secret, server)
        assert caplog.records == []
        os.chmod(secret, 0o644)
        curve.client_curve(secret, server)
        curve.client_curve(secret, server)
    [warning] = caplog.records
    assert warning.getMessage().startswith(f"secret key file {secret} is readable by others (mode ")


def _openssl_pair(directory: Path) -> tuple[str, str]:
    cert, key = directory / "gw.crt", directory / "gw.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "365", "-subj", "/CN=gw", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_an_http_key_others_may_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Fault: the gateway's TLS private key (``http_key``) is 0644. Before
    the fix it was loaded without a word; now its load warns (at start, and
    at a SIGHUP's: both go through ``server_context``)."""
    cert, key = _openssl_pair(tmp_path)
    os.chmod(key, 0o600)
    with caplog.at_level(logging.WARNING, logger="miyaq.gateway.tls"):
        tls.server_context(cert, key)
        assert caplog.records == []
        os.chmod(key, 0o644)
        tls.server_context(cert, key)
    [warning] = caplog.records
    assert warning.getMessage() == f"http_key {key} is readable by others (mode 644, group " \
                                   f"{os.stat(key).st_gid}): chmod 600 it"
