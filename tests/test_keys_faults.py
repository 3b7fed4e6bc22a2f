"""Faults of ``miyaq keys``: a revoke nodes cannot apply, file-system errors,
two admins adding one name at once. No ZooKeeper, no node process."""
from __future__ import annotations

import os

import pytest

from miyaq.cli.main import main
from miyaq.errors import ConfigError
from miyaq.security import certs
from miyaq.security.keystore import KeyStore


@pytest.fixture
def keys_dir(tmp_path) -> str:
    path = str(tmp_path / "keys")
    KeyStore(path).init()
    return path


# -- 5: a revoke the nodes cannot load ---------------------------------------------------


def test_revoke_fails_when_the_nodes_cannot_reload_authorized(keys_dir, capsys):
    """Fault: another certificate in authorized/ is damaged (cut by a bad copy).
    Nodes then keep their old keys, the revoked one included; before the fix
    `keys revoke` reported success (exit 0)."""
    store = KeyStore(keys_dir)
    store.add("alice", "admin")
    store.add("bob", "worker")
    bob = os.path.join(store.authorized_dir, "bob.key")
    with open(bob, "r+") as f:
        f.truncate(100)
    assert main(["keys", "revoke", keys_dir, "alice"]) == 2
    err = capsys.readouterr().err
    assert "alice: moved to" in err and bob in err
    assert "Running nodes keep the keys they loaded, alice's included, until that is fixed" in err
    assert os.path.exists(os.path.join(keys_dir, "revoked", "alice.key"))


def test_revoke_succeeds_when_authorized_loads(keys_dir, capsys):
    KeyStore(keys_dir).add("alice", "admin")
    assert main(["keys", "revoke", keys_dir, "alice"]) == 0
    assert "alice: revoked" in capsys.readouterr().out


# -- 6: file-system errors are one line, exit 2 ------------------------------------------


def test_init_on_a_path_under_a_file_is_a_config_error(tmp_path, capsys):
    """Fault: `keys init DIR/afile/x` (or DIR a file). Before the fix: NotADirectoryError traceback."""
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["keys", "init", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("miyaq: error: cannot make the key directory") and str(afile) in err
    assert len(err.strip().splitlines()) == 1


def test_revoke_when_revoked_is_a_file_is_a_config_error(keys_dir, capsys):
    """Fault: DIR/revoked is a file. Before the fix: FileExistsError traceback."""
    KeyStore(keys_dir).add("alice", "worker")
    open(os.path.join(keys_dir, "revoked"), "w").close()
    assert main(["keys", "revoke", keys_dir, "alice"]) == 2
    err = capsys.readouterr().err
    assert "cannot revoke 'alice'" in err and os.path.join(keys_dir, "revoked") in err
    assert os.path.exists(os.path.join(keys_dir, "authorized", "alice.key"))   # still authorized, as said


def test_a_certificate_that_cannot_be_written_is_a_config_error(tmp_path, capsys):
    """Fault: DIR/node.key is a directory. Before the fix: IsADirectoryError traceback."""
    (tmp_path / "keys" / "node.key").mkdir(parents=True)
    assert main(["keys", "init", str(tmp_path / "keys")]) == 2
    assert f"cannot write {tmp_path / 'keys' / 'node.key'}" in capsys.readouterr().err


# -- 7: two adds of one name at once -----------------------------------------------------


def test_two_adds_of_one_name_interleaved_one_is_refused(keys_dir, monkeypatch):
    """Fault: two admins add "alice" at once; the second passes the exists
    check before the first writes. Before the fix both succeeded and the
    secret handed out could differ from the authorized key. Interleaved here
    deterministically: the second add runs whole inside the first's key making."""
    store = KeyStore(keys_dir)
    keypair = certs.zmq.curve_keypair
    results: list[tuple[str, str]] = []
    errors: list[str] = []

    def add(role: str) -> None:
        try:
            results.append(store.add("alice", role))
        except ConfigError as exc:
            errors.append(exc.message)

    def interleaved() -> tuple[bytes, bytes]:
        monkeypatch.setattr(certs.zmq, "curve_keypair", keypair)
        add("worker")                 # the other admin, between check and write
        return keypair()

    monkeypatch.setattr(certs.zmq, "curve_keypair", interleaved)
    add("admin")
    assert len(results) == 1 and len(errors) == 1, (results, errors)
    assert "exists already" in errors[0]
    _, secret = results[0]
    authorized = certs.read(os.path.join(store.authorized_dir, "alice.key"))
    assert certs.read(secret).public == authorized.public
    assert authorized.metadata["role"] == "worker"
    leftovers = [n for d in (keys_dir, store.authorized_dir) for n in os.listdir(d) if n.endswith(".tmp")]
    assert leftovers == []


def test_concurrent_writers_of_one_certificate_use_distinct_temporary_files(tmp_path, monkeypatch):
    """Fault: `.tmp` was one fixed name: a second writer truncated the first's
    temporary file. Each write now has its own."""
    seen: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        seen.append(src)
        if len(seen) == 1:
            certs._write(str(tmp_path / "x.key"), "second\n", 0o644)     # another writer, meanwhile
        real_replace(src, dst)

    monkeypatch.setattr(certs.os, "replace", replace)
    certs._write(str(tmp_path / "x.key"), "first\n", 0o644)
    assert len(set(seen)) == 2
    assert (tmp_path / "x.key").read_text() == "first\n"
