"""The files the HTTP gateway reads while it runs: the tokens file
(``http_tokens``, reloaded by its watch and on SIGHUP) and the TLS
certificate, key and CA (``http_cert``, ``http_key``, ``http_ca``, the first
two reloaded on SIGHUP).

* Each is read without blocking and must be a regular file: a FIFO in its
  place is refused with one line, at start (the node does not start) and on
  a reload (what is in use is kept, an ERROR logged) -- never waited on: the
  read is in the node's hub, and a blocked open froze HTTP and ZeroMQ alike.
* A tokens file without a single token is warned about (it locks every
  caller out).
* The gateway's certificate is refused when it is expired or not valid yet
  (at start: exit 2; on SIGHUP: the one in use is kept), and warned about
  when it expires within 14 days.

Certificates are made with the ``openssl`` command (installed by
scripts/test); dated ones by ``openssl ca`` with ``-startdate``/``-enddate``.
A FIFO that a faulty reader would block on is released by the test (a writer
opens and closes it), so a test of the old code fails instead of hanging.
"""
from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from gateway_harness import FIXTURES, free_port, wait_for

from miyaq.errors import ConfigError
from miyaq.gateway.tokens import TokenTable

http_node, api, make_http_node, make_web_worker = FIXTURES

ADMIN = "admin-token-0123456789abcdef"
PRODUCER = "producer-token-0123456789ab"
EXPIRED = ("20200101000000Z", "20200201000000Z")
NOT_YET = ("20990101000000Z", "20990201000000Z")
CA_CONFIG = """[ca]
default_ca = here
[here]
dir = {dir}
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
[ext]
subjectAltName = IP:127.0.0.1,DNS:localhost
"""


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_cert(directory: Path, name: str, days: int = 1) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, valid from now for ``days``, and its key."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", str(days), "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    return cert, key


def dated_cert(directory: Path, name: str, start: str, end: str) -> tuple[Path, Path]:
    """A self-signed certificate valid from ``start`` to ``end`` (``YYYYMMDDHHMMSSZ``), and its key."""
    ca = directory / f"{name}-ca"
    ca.mkdir()
    (ca / "index.txt").write_text("")
    (ca / "serial").write_text("1000\n")
    (ca / "ca.cnf").write_text(CA_CONFIG.format(dir=ca))
    cert, key, request = directory / f"{name}.crt", directory / f"{name}.key", ca / "request.csr"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(request))
    _openssl("ca", "-batch", "-config", str(ca / "ca.cnf"), "-selfsign", "-keyfile", str(key), "-in", str(request),
             "-out", str(cert), "-startdate", start, "-enddate", end, "-extensions", "ext", "-notext")
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("certs")
    made = {name: make_cert(directory, name) for name in ("day", "other")}
    made["year"] = make_cert(directory, "year", days=365)
    made["expired"] = dated_cert(directory, "expired", *EXPIRED)
    made["future"] = dated_cert(directory, "future", *NOT_YET)
    return made


def copies(tmp_path: Path, pair: tuple[Path, Path], stem: str = "live") -> tuple[Path, Path]:
    cert, key = tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key"
    put(pair, (cert, key))
    return cert, key


def put(pair: tuple[Path, Path], into: tuple[Path, Path]) -> None:
    """Renew: the files of ``pair`` replace those of ``into``, each atomically."""
    for source, target in zip(pair, into):
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(source.read_bytes())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)


# -- FIFOs ----------------------------------------------------------------------------
def fifo_in_place(path: Path) -> None:
    """Replace ``path`` with a FIFO that nobody writes to."""
    tmp = path.with_name(path.name + ".fifo")
    os.mkfifo(tmp, 0o600)
    os.replace(tmp, path)


def release(fifo: Path) -> bool:
    """Open ``fifo`` for writing and close it: a reader blocked on it sees
    the end of the file. False if it has no reader (nothing is blocked)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:      # ENXIO: no reader; ENOENT, ENXIO: gone
        return False
    os.close(fd)
    return True


def beside_fifo(fifo: Path, call: Callable[[], Any]) -> Any:
    """``call()`` in a thread while the FIFO is released again and again:
    a call that blocks on it gets an empty file instead of hanging the test.
    Its result, or the exception it raised."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: released(fifo, lambda: not thread.is_alive()), "the call to return")
    return box["value"]


def released(fifo: Path, done: Callable[[], bool]) -> bool:
    """``done()``, after releasing whatever blocks on ``fifo`` (for :func:`wait_for`)."""
    release(fifo)
    return done()


# -- the tokens file --------------------------------------------------------------------
def test_a_fifo_as_the_tokens_file_is_refused_at_start_not_read(tmp_path):
    """Fault: ``--http-tokens`` names a FIFO. Before 2026-12-05 the node
    blocked opening it (the start hung), and once something wrote to it the
    empty read was a valid file without tokens. Now it is refused by name."""
    fifo = tmp_path / "tokens"
    fifo_in_place(fifo)
    outcome = beside_fifo(fifo, lambda: TokenTable("", str(fifo)))
    assert isinstance(outcome, ConfigError), outcome
    assert outcome.message == f"{fifo} is not an HTTP tokens file (a FIFO, not a regular file)"


def test_a_tokens_file_replaced_by_a_fifo_keeps_the_tokens_in_use(tmp_path, caplog):
    """Fault: the tokens file becomes a FIFO while the node runs; its watch
    reloads it. Before 2026-12-05 that read blocked the hub, then counted as
    a file without tokens (every caller 401, logged at INFO). Now the reload
    fails with an ERROR naming the FIFO and the tokens in use stay."""
    path = tmp_path / "tokens"
    path.write_text(f"{ADMIN} admin\n")
    os.chmod(path, 0o600)
    table = TokenTable("", str(path))
    fifo_in_place(path)
    with caplog.at_level(logging.INFO, logger="miyaq.gateway.tokens"):
        assert beside_fifo(path, table.poll) is False
    assert table.reloads["failed"] == 1 and table.reloads["ok"] == 0
    assert table.role_of(ADMIN) is not None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"HTTP tokens not reloaded (the file changed), keeping the previous ones: {path} is not an "
                      "HTTP tokens file (a FIFO, not a regular file)"]


def test_a_node_keeps_answering_when_its_tokens_file_becomes_a_fifo(make_http_node, tmp_path):
    """Fault: as above, in a running node: its tokens watch blocked the
    node's hub -- HTTP (and ZeroMQ) stopped answering until something wrote
    to the FIFO. Now the watch reports the failed reload and the node
    answers with the tokens it had."""
    path = tmp_path / "tokens"
    path.write_text(f"{ADMIN} admin\n")
    os.chmod(path, 0o600)
    node = make_http_node(http_tokens=str(path))
    tokens = node.node.part("gateway").auth.tokens
    fifo_in_place(path)
    try:
        wait_for(lambda: node.call(lambda: tokens.reloads["failed"]) == 1, "the failed reload")
        conn = http.client.HTTPConnection("127.0.0.1", node.config.http_port, timeout=15)
        conn.request("GET", "/status", headers={"Authorization": f"Bearer {ADMIN}"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        release(path)      # a hub blocked on it (the fault) goes on, so the node can stop


def test_a_node_with_a_fifo_as_its_tokens_file_does_not_start(tmp_path):
    """Fault: ``miyaq node --http-tokens FIFO`` hung at start. Now: exit
    status 2, one line naming the file."""
    fifo = tmp_path / "tokens"
    fifo_in_place(fifo)
    log = tmp_path / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(free_port()),
                                 "--http-port", str(free_port()), "--http-tokens", str(fifo)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: released(fifo, lambda: proc.poll() is not None or "HTTP gateway on" in log.read_text()),
                 "the node to stop or serve", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(15)
    assert proc.returncode == 2, log.read_text()
    assert log.read_text().strip() == (f"miyaq: error: {fifo} is not an HTTP tokens file (a FIFO, not a "
                                       "regular file)")


def test_a_tokens_file_without_any_token_is_warned_about(tmp_path, caplog):
    """Fault: a tokens file reloaded with comments only locks out every
    caller; before 2026-12-05 that was an INFO line ("none"). Now a WARNING
    says so, at start and at each reload (with http_token, that its holder
    alone gets in)."""
    path = tmp_path / "tokens"
    path.write_text(f"{PRODUCER} producer\n")
    os.chmod(path, 0o600)
    table = TokenTable("", str(path))
    path.write_text("# every token revoked\n")
    with caplog.at_level(logging.INFO, logger="miyaq.gateway.tokens"):
        assert table.reload("SIGHUP")
        TokenTable(ADMIN, str(path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"HTTP tokens file {path} holds no token: every caller is refused (401)",
                        f"HTTP tokens file {path} holds no token: every caller but the http_token's is refused "
                        "(401)"]
    assert table.role_of(PRODUCER) is None
