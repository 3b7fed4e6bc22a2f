"""The files the HTTP gateway reads while it runs: the tokens file
(``http_tokens``, reloaded by its watch and on SIGHUP) and the TLS
certificate, key and CA (``http_cert``, ``http_key``, ``http_ca``, all three
reloaded on SIGHUP; ``http_ca`` only since 2026-12-05).

* Each is read without blocking and must be a regular file: a FIFO in its
  place is refused with one line, at start (the node does not start) and on
  a reload (what is in use is kept, an ERROR logged) -- never waited on: the
  read is in the node's hub, and a blocked open froze HTTP and ZeroMQ alike.
* A tokens file without a single token is warned about (it locks every
  caller out).
* The gateway's certificate is refused when it is expired or not valid yet
  (at start: exit 2; on SIGHUP: the one in use is kept), and warned about
  when it expires within 14 days.
* ``http_ca`` must hold a certificate OpenSSL loads (at start: the node
  does not start; on SIGHUP: the CA certificates in use are kept).

Certificates are made with the ``openssl`` command (installed by
scripts/test); dated ones by ``openssl ca`` with ``-startdate``/``-enddate``.
A FIFO that a faulty reader would block on is released by the test (a writer
opens and closes it), so a test of the old code fails instead of hanging.
"""
from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from gateway_harness import FIXTURES, NodeThread, free_port, wait_for

from miyaq.errors import ConfigError
from miyaq.gateway import tls
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


# -- certificate, key, CA ----------------------------------------------------------------
@pytest.mark.parametrize("which", ["http_cert", "http_key", "http_ca"])
def test_a_fifo_as_a_tls_file_is_refused_not_read(which, certs, tmp_path):
    """Fault: ``http_cert``, ``http_key`` or ``http_ca`` names a FIFO: the
    node blocked opening it (at start, or on SIGHUP in its hub). Now each is
    refused by name, without waiting for a writer."""
    cert, key = copies(tmp_path, certs["year"])
    target = {"http_cert": cert, "http_key": key, "http_ca": tmp_path / "ca.pem"}[which]
    fifo_in_place(target)
    call = (lambda: tls.ca_file(str(target))) if which == "http_ca" else (lambda: tls.server_context(str(cert),
                                                                                                        str(key)))
    outcome = beside_fifo(target, call)
    assert isinstance(outcome, ConfigError), outcome
    assert outcome.message == f"{which} {target} is not a PEM file (a FIFO, not a regular file)"


def served_certificate(node: NodeThread) -> bytes:
    """The DER certificate the node's gateway presents now (not verified: compared)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", node.config.http_port), timeout=15) as raw:
        with context.wrap_socket(raw) as sock:
            der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def test_sighup_with_a_fifo_as_the_certificate_keeps_the_one_in_use(make_http_node, certs, tmp_path, caplog):
    """Fault: the certificate becomes a FIFO, then SIGHUP: the reload blocked
    the node's hub until something wrote to it. Now it fails with an ERROR
    naming the FIFO, and the gateway serves the certificate it had."""
    cert, key = copies(tmp_path, certs["year"])
    node = make_http_node(http_cert=str(cert), http_key=str(key))
    fifo_in_place(cert)
    try:
        with caplog.at_level(logging.INFO):
            assert node.call(node.node.reload) is None
        assert served_certificate(node) == der(certs["year"][0])
    finally:
        release(cert)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"HTTPS certificate not reloaded (SIGHUP), keeping the one in use: http_cert {cert} is "
                      "not a PEM file (a FIFO, not a regular file)"]


@pytest.mark.parametrize("which, why, dates", [
    ("expired", "has expired", EXPIRED), ("future", "is not valid yet", NOT_YET)])
def test_an_expired_or_not_yet_valid_certificate_is_refused(which, why, dates, certs):
    """Fault: an expired (or not yet valid) gateway certificate was loaded
    without a word; every client then failed its handshake. Now it is one
    ConfigError naming the file and its dates."""
    cert, key = certs[which]
    with pytest.raises(ConfigError) as info:
        tls.server_context(str(cert), str(key))
    start, end = (f"{d[:4]}-{d[4:6]}-{d[6:8]} 00:00:00 UTC" for d in dates)
    assert info.value.message.startswith(f"http_cert {cert} {why} (valid from {start} to {end}, now ")


def test_a_node_with_an_expired_certificate_does_not_start(certs):
    """Fault: ``miyaq node`` served an expired certificate. Now: exit status
    2, one line naming the file and the dates."""
    cert, key = certs["expired"]
    done = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(free_port()),
                           "--http-port", str(free_port()), "--http-cert", str(cert), "--http-key", str(key)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"miyaq: error: http_cert {cert} has expired (valid from 2020-01-01 00:00:00 UTC to 2020-02-01 00:00:00 "
        "UTC, now "), done.stderr


def test_sighup_with_an_expired_renewal_keeps_the_valid_certificate(make_http_node, certs, tmp_path, caplog):
    """Fault: a bad renewal (an expired certificate and its key) then SIGHUP:
    it replaced the good certificate, and clients failed. Now the reload is
    refused with an ERROR and the valid certificate stays in use; a valid
    renewal is still taken."""
    live = copies(tmp_path, certs["year"])
    node = make_http_node(http_cert=str(live[0]), http_key=str(live[1]))
    put(certs["expired"], live)
    with caplog.at_level(logging.INFO):
        node.call(node.node.reload)
    assert served_certificate(node) == der(certs["year"][0])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        f"HTTPS certificate not reloaded (SIGHUP), keeping the one in use: http_cert {live[0]} has expired")
    put(certs["other"], live)
    node.call(node.node.reload)
    assert served_certificate(node) == der(certs["other"][0])


def test_a_certificate_expiring_within_two_weeks_is_warned_about(certs, caplog):
    """A certificate that expires within 14 days is loaded with a WARNING
    saying when (at start and on each SIGHUP: both load it through
    server_context); one valid for a year is loaded quietly."""
    with caplog.at_level(logging.INFO, logger="miyaq.gateway.tls"):
        tls.server_context(*map(str, certs["year"]))
        assert caplog.records == []
        tls.server_context(*map(str, certs["day"]))
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith(f"http_cert {certs['day'][0]} expires in ")
    assert "renew it and send the node SIGHUP" in warning.getMessage()


def test_validity_dates_are_read_from_the_leaf(certs, tmp_path):
    """``validity`` reads the first certificate of a PEM chain (the leaf
    ``load_cert_chain`` takes), UTCTime and GeneralizedTime (years from
    2050) alike; a file without a readable certificate gives None."""
    chain = certs["expired"][0].read_bytes() + certs["year"][0].read_bytes()
    start, end = tls.validity(chain) or (None, None)
    assert (str(start), str(end)) == ("2020-01-01 00:00:00+00:00", "2020-02-01 00:00:00+00:00")
    late = dated_cert(tmp_path, "late", "20491231000000Z", "20600101000000Z")[0]
    start, end = tls.validity(late.read_bytes()) or (None, None)
    assert (str(start), str(end)) == ("2049-12-31 00:00:00+00:00", "2060-01-01 00:00:00+00:00")
    key_only = certs["year"][1].read_bytes()
    assert tls.validity(key_only) is None
    assert tls.validity(b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n") is None


# -- SIGHUP without --keys ----------------------------------------------------------------

def sighup_lines(node: NodeThread, caplog: Any) -> list[str]:
    """What the node logs of a SIGHUP (its reload, run in the node's thread)."""
    with caplog.at_level(logging.INFO, logger="miyaq.node.node"):
        node.call(node.node.reload)
    return [r.getMessage() for r in caplog.records if r.name == "miyaq.node.node" and "SIGHUP" in r.getMessage()]


def test_sighup_without_keys_says_what_it_reloads(make_http_node, certs, tmp_path, caplog):
    """Fault: on a node without ``--keys`` SIGHUP logged "SIGHUP ignored (no
    --keys)", then reloaded the tokens and the certificate all the same. Now
    the line says what is read again and what is not."""
    path = tmp_path / "tokens"
    path.write_text(f"{ADMIN} admin\n")
    os.chmod(path, 0o600)
    cert, key = copies(tmp_path, certs["year"])
    node = make_http_node(http_tokens=str(path), http_cert=str(cert), http_key=str(key))
    assert sighup_lines(node, caplog) == [
        f"node {node.config.id}: SIGHUP: no authorized keys to read again (no --keys); reading the "
        "HTTP tokens file and the HTTPS certificate and key again"]


# -- http_ca on SIGHUP ----------------------------------------------------------------------
def members_answer(node: NodeThread) -> dict[str, Any] | str:
    """What the node's console gets when it asks the node's own HTTPS
    gateway for ``/status`` as it asks other members (verified against
    ``http_ca``): the JSON answer, or an error text."""
    peers = node.call(lambda: node.node.part("gateway").console.peers)
    return peers.call(f"https://127.0.0.1:{node.config.http_port}", "GET", "/status")


def test_sighup_reloads_http_ca_and_a_bad_one_keeps_the_one_in_use(make_http_node, certs, tmp_path, caplog):
    """Fault: ``http_ca`` was read once (at the console's first call to an
    https member) and never again: a CA added for a member's new
    certificate needed a restart, while the certificate, key and tokens
    were reloaded on SIGHUP. Now SIGHUP loads it again, by the same rule as
    the certificate: a file that does not load (not a certificate OpenSSL
    takes, a FIFO) is refused with an ERROR and the CA certificates in use
    stay."""
    cert, key = copies(tmp_path, certs["year"])
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certs["other"][0].read_bytes())         # trusts another certificate than the node's
    node = make_http_node(http_cert=str(cert), http_key=str(key), http_ca=str(ca))
    refused = members_answer(node)
    assert isinstance(refused, str) and refused.startswith("unreachable"), refused
    put((certs["year"][0],), (ca,))                        # now the node's own certificate
    node.call(node.node.reload)
    answer = members_answer(node)
    assert isinstance(answer, dict) and answer["node"] == node.config.id, answer

    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    with caplog.at_level(logging.INFO):
        node.call(node.node.reload)
    fifo_in_place(ca)
    try:
        with caplog.at_level(logging.INFO):
            node.call(node.node.reload)
    finally:
        release(ca)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, errors
    kept = "HTTPS CA certificates (http_ca) not reloaded (SIGHUP), keeping the ones in use: "
    assert errors[0].startswith(f"{kept}http_ca {ca} holds no CA certificate OpenSSL can load: "), errors
    assert errors[1] == f"{kept}http_ca {ca} is not a PEM file (a FIFO, not a regular file)"
    answer = members_answer(node)
    assert isinstance(answer, dict) and answer["node"] == node.config.id, answer


def test_an_http_ca_openssl_cannot_load_is_refused_at_start(tmp_path):
    """Fault: ``http_ca`` was only checked to be a PEM file at start; one
    that OpenSSL could not load (a PEM block that is no certificate) was
    accepted, and every console call to an https member then failed. Now
    ``miyaq node`` refuses it: exit status 2, one line naming the file."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError) as info:
        tls.ca_file(str(ca))
    assert info.value.message.startswith(f"http_ca {ca} holds no CA certificate OpenSSL can load: ")
    done = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(free_port()),
                           "--http-port", str(free_port()), "--http-ca", str(ca)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"miyaq: error: {info.value.message}"], done.stderr


def test_sighup_without_keys_names_http_ca_too(make_http_node, certs, tmp_path, caplog):
    """SIGHUP's line on a node without ``--keys`` names ``http_ca`` among
    the files it reads again, when the console (which uses it) is on."""
    cert, key = copies(tmp_path, certs["year"])
    node = make_http_node(http_cert=str(cert), http_key=str(key), http_ca=str(cert))
    assert sighup_lines(node, caplog) == [
        f"node {node.config.id}: SIGHUP: no authorized keys to read again (no --keys); reading the "
        "HTTPS certificate and key and the CA certificates of http_ca again"]
