"""HTTPS for the gateway (issue 9): ``--http-cert`` and ``--http-key``.

Certificates are made by the test with the ``openssl`` command (installed
by scripts/test): self-signed, for 127.0.0.1 and localhost. Clients trust
them by giving the certificate as their CA (``--http-ca``); nothing skips
verification.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_harness import FIXTURES, NodeThread, free_port, wait_for
from loopback_server import LoopbackServer
from test_webhook_faults import deliver_one
from test_http_slow_clients import read_all

from miyaq.cli.main import main
from miyaq.errors import ConfigError
from miyaq.gateway import tls
from miyaq.gateway.console.peers import Peers
from miyaq.store.task import Task

http_node, api, make_http_node, make_web_worker = FIXTURES

TOKEN = "tls-admin-token-0123456789abcdef"


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (EC P-256, one day)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("certs")
    return {name: make_cert(directory, name) for name in ("node", "other")}


@pytest.fixture
def https_node(make_http_node, certs) -> NodeThread:
    cert, key = certs["node"]
    return make_http_node(http_cert=str(cert), http_key=str(key), http_token=TOKEN, http_ca=str(cert))


def https_get(node: NodeThread, path: str, ca: Path, token: str = TOKEN) -> tuple[int, bytes, ssl.SSLSocket]:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", node.config.http_port, context=context, timeout=15)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        body = response.read()
        certificate = conn.sock.getpeercert(binary_form=True)
        return response.status, body, certificate
    finally:
        conn.close()


def test_the_gateway_serves_https_and_advertises_it(https_node, certs):
    """With a certificate the API and the console answer over TLS, verified
    against the certificate as CA, and the ring advertises https://."""
    cert, _ = certs["node"]
    status, body, _ = https_get(https_node, "/status", cert)
    assert status == 200
    status_body = json.loads(body)
    assert status_body["ring"]["http"][https_node.config.id].startswith("https://")
    status, body, _ = https_get(https_node, "/ui", cert)
    assert status == 200 and b"<html" in body


def test_plain_http_to_an_https_port_is_served_nothing(https_node):
    """A plain-HTTP request to the HTTPS port fails its handshake and is closed
    (counted as tls_handshake); nothing is served in clear text (its 400,
    below, says only to use https://)."""
    with socket.create_connection(("127.0.0.1", https_node.config.http_port), timeout=15) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
        data = read_all(sock)
    assert b"HTTP/1.1 200" not in data and b'"node"' not in data


@pytest.mark.parametrize("request_head", [
    b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
    b'{"name": "n"}',
], ids=["get", "post-with-body"])
def test_plain_http_to_an_https_port_is_told_to_use_https(https_node, request_head):
    """Fault: ``curl http://...`` (or an http:// base URL in a client's
    settings) at a gateway serving HTTPS had its connection closed with no
    answer -- curl's "Empty reply from server" or "Connection reset by
    peer" -- which says nothing of the cause. It is now answered a clear-text
    400 ``protocol`` saying the port serves HTTPS only (as Go's net/http
    answers), and the connection closed; nothing else is sent in clear."""
    with socket.create_connection(("127.0.0.1", https_node.config.http_port), timeout=15) as sock:
        sock.sendall(request_head)
        data = read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), data
    error = json.loads(body)["error"]
    assert error["code"] == "protocol" and "https://" in error["message"], error
    status, metrics, _ = https_get(https_node, "/metrics", Path(https_node.config.http_cert))
    assert status == 200
    assert re.search(rb'miyaq_http_refused_total\{reason="tls_handshake"\} [1-9]', metrics), metrics


def test_a_client_that_does_not_trust_the_certificate_is_refused(https_node, certs):
    """Verification is on: a client trusting another certificate fails the handshake."""
    other, _ = certs["other"]
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(https_node, "/status", other)


def test_a_tls_handshake_that_never_comes_is_cut_at_the_header_timeout(make_http_node, certs):
    """Slowloris on TLS: a connection that never starts its handshake is
    closed at http_header_timeout, counted as tls_handshake."""
    cert, key = certs["node"]
    node = make_http_node(http_cert=str(cert), http_key=str(key), http_header_timeout=0.3)
    with socket.create_connection(("127.0.0.1", node.config.http_port), timeout=15) as sock:
        assert sock.recv(1) == b""   # closed by the node
    status, body, _ = https_get(node, "/metrics", cert)
    assert status == 200
    assert re.search(rb'miyaq_http_refused_total\{reason="tls_handshake"\} [1-9]', body), body


def test_miyaq_queue_works_over_https_with_http_ca(https_node, certs, capsys, monkeypatch):
    """The CLI verbs reach an https:// gateway given its certificate as CA
    (--http-ca or MIYAQ_HTTP_CA); without it they stop with a clear error
    naming --http-ca, never falling back to an unverified connection."""
    cert, _ = certs["node"]
    url = f"https://127.0.0.1:{https_node.config.http_port}"
    assert main(["queue", "--http", url, "--token", TOKEN, "--http-ca", str(cert), "pause", "mail"]) == 0
    assert "mail: paused" in capsys.readouterr().out
    monkeypatch.setenv("MIYAQ_HTTP_CA", str(cert))
    assert main(["queue", "--http", url, "--token", TOKEN, "list"]) == 0
    monkeypatch.delenv("MIYAQ_HTTP_CA")
    assert main(["queue", "--http", url, "--token", TOKEN, "list"]) == 2
    assert "--http-ca" in capsys.readouterr().err


def test_the_console_calls_https_members_verified_against_http_ca(https_node, certs):
    """The console's calls to other members (ring and workers pages, pause)
    verify their certificates against http_ca; without it, a self-signed
    member is reported unreachable rather than trusted."""
    cert, _ = certs["node"]
    url = f"https://127.0.0.1:{https_node.config.http_port}"
    answer = Peers(TOKEN, str(cert)).call(url, "GET", "/status")
    assert isinstance(answer, dict) and answer["node"] == https_node.config.id
    refused = Peers(TOKEN).call(url, "GET", "/status")
    assert isinstance(refused, str) and refused.startswith("unreachable")


def test_sighup_loads_a_renewed_certificate(https_node, certs, tmp_path):
    """Certificate renewal: SIGHUP (Node.reload) loads the files again and
    new connections get the new certificate; a broken replacement keeps the
    one in use."""
    cert, key = certs["node"]
    other_cert, other_key = certs["other"]
    before = https_get(https_node, "/status", cert)[2]
    cert_path, key_path = Path(https_node.config.http_cert), Path(https_node.config.http_key)
    original = cert_path.read_bytes(), key_path.read_bytes()
    try:
        cert_path.write_bytes(other_cert.read_bytes())
        key_path.write_bytes(other_key.read_bytes())
        https_node.call(https_node.node.reload)
        after = https_get(https_node, "/status", other_cert)[2]
        assert after != before
        cert_path.write_bytes(b"not a certificate")
        https_node.call(https_node.node.reload)
        assert https_get(https_node, "/status", other_cert)[2] == after     # kept
    finally:
        cert_path.write_bytes(original[0])
        key_path.write_bytes(original[1])


@pytest.fixture
def scratch_certs(certs, tmp_path) -> tuple[Path, Path, Path, Path]:
    """Copies of both pairs a test may damage."""
    paths = []
    for name in ("node", "other"):
        for source in certs[name]:
            target = tmp_path / source.name
            target.write_bytes(source.read_bytes())
            paths.append(target)
    return paths[0], paths[1], paths[2], paths[3]


def test_start_up_errors_name_the_file_and_the_fault(scratch_certs, tmp_path):
    """A missing, unreadable or non-PEM file, and a key that is not the
    certificate's, each give one clear error (the node does not start)."""
    cert, key, other_cert, other_key = scratch_certs
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    cases = [((tmp_path / "missing.crt", key), "cannot read http_cert"),
             ((cert, tmp_path / "missing.key"), "cannot read http_key"),
             ((garbage, key), "is not a PEM file"),
             ((cert, other_key), "is not the private key of the certificate"),
             ((key, cert), "cannot load http_cert")]
    for (c, k), message in cases:
        with pytest.raises(ConfigError) as info:
            tls.server_context(str(c), str(k))
        assert message in info.value.message, (c, k, info.value.message)


def test_a_node_with_a_mismatched_key_does_not_start(scratch_certs):
    """``miyaq node`` with a key that is not its certificate's exits 2 with
    one line naming both files; with only one of the two, likewise."""
    cert, _, _, other_key = scratch_certs
    for extra, message in ((["--http-cert", str(cert), "--http-key", str(other_key)], "is not the private key"),
                           (["--http-cert", str(cert)], "http_cert and http_key go together")):
        done = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(free_port()),
                               "--http-port", str(free_port()), *extra], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith("miyaq: error: "), done.stderr
        assert message in done.stderr


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path, certs):
    """An encrypted key would make OpenSSL ask for a passphrase on the
    terminal; the node refuses it with an error instead."""
    cert, key = certs["node"]
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-out", str(encrypted), "-aes256", "-passout",
                    "pass:secret"], check=True, capture_output=True, timeout=60)
    with pytest.raises(ConfigError) as info:
        tls.server_context(str(cert), str(encrypted))
    assert "encrypted" in info.value.message


def test_the_ring_advertises_plain_http_without_a_certificate(api, http_node):
    wait_for(lambda: api.get("/status")[1]["ring"]["http"], "the ring")
    assert api.get("/status")[1]["ring"]["http"][http_node.config.id].startswith("http://")


def test_a_tls_long_poll_whose_client_hangs_up_is_dropped(https_node, certs):
    """Fault: an HTTPS client abandons its ``/receive`` long-poll, closing
    TLS properly (a close_notify record before the TCP close): the record
    does not hide the close from the gateway, and the wait is dropped at once
    (miyaq.gateway.hangup)."""
    context = ssl.create_default_context(cafile=str(certs["node"][0]))
    raw = socket.create_connection(("127.0.0.1", https_node.config.http_port), timeout=15)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    body = json.dumps({"queues": ["tls-hangup"], "timeout": 60}).encode()
    sock.sendall(b"POST /receive HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    wait_for(lambda: https_node.call(lambda: https_node.node.core.waiters.count) == 1, "the long-poll to wait")
    sock.setblocking(False)
    with pytest.raises(ssl.SSLWantReadError):
        sock.unwrap()           # close_notify sent; the gateway's is not waited for
    sock.close()                # then the TCP close
    wait_for(lambda: https_node.call(lambda: https_node.node.core.waiters.count) == 0,
             "the abandoned long-poll dropped")


def test_an_answer_of_many_pieces_arrives_whole_over_tls(https_node, certs):
    """An answer over a piece (256 KiB) is sent as it is, its head first and
    its body piece by piece without copies (miyaq.gateway.wsgi): over TLS a
    1.4 MB result arrives whole, with the Content-Length it announced."""
    cert, _ = certs["node"]
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", https_node.config.http_port, context=context, timeout=15)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: object = None) -> tuple[int, bytes, str | None]:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Length")

    result = [10] * 460_000
    try:
        assert call("POST", "/tasks", {"name": "big", "queue": "tls", "id": "big"})[0] == 202
        task = json.loads(call("POST", "/receive", {"queues": ["tls"]})[1])["task"]
        assert json.loads(call("POST", "/tasks/big/ack", {"attempt": task["attempt"], "result": result})[1])["ok"]
        status, body, length = call("GET", "/tasks/big/result")
        assert status == 200 and length == str(len(body)) and len(body) > 5 * 256 * 1024
        assert json.loads(body)["result"] == result
        assert call("GET", "/status")[0] == 200      # the connection is still in step
    finally:
        conn.close()


class SelfSignedDestination(LoopbackServer):
    """An https:// webhook destination whose certificate no system CA signed:
    it completes the server side of the handshake, if the client goes on."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(15)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ValueError):   # the node refuses the certificate: the handshake fails here too
            pass


def test_a_webhook_destination_with_an_untrusted_certificate_says_how_to_trust_it(certs):
    """Fault: a webhook to an https:// web worker whose certificate a
    private CA signed failed every attempt with the TLS library's words
    alone (``SSLCertVerificationError: ... self-signed certificate``), and
    nothing said how the node could trust that CA. The error now says it
    (the system's CA certificates, or ``SSL_CERT_FILE`` naming a bundle
    that holds it), and the attempt is still retried (a CA installed
    meanwhile lets the next one through)."""
    cert, key = certs["other"]
    destination = SelfSignedDestination(cert, key)
    try:
        outcome = deliver_one(Task("private-ca", "hooks", None, b"{}",
                                   url=f"https://127.0.0.1:{destination.port}/hook"))
    finally:
        destination.close()
    assert (outcome.ok, outcome.kind, outcome.retryable) == (False, "connection", True), outcome
    message = outcome.error["message"]
    assert "CERTIFICATE_VERIFY_FAILED" in message and "SSL_CERT_FILE" in message, message
