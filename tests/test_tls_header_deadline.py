"""Over TLS the handshake and the first request's line and headers share one
``http_header_timeout``, counted from the accept (docs/http.md): a client
cannot hold a gateway slot for twice that by finishing its handshake late.

No wall time is measured: the gateway's clock (``miyaq.gateway.wsgi``'s
``monotonic``) is moved ahead by the test while the handshake waits, as if
the handshake had taken that long, and the answer is read.
"""
from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
from gateway_harness import FIXTURES, NodeThread, wait_for

from miyaq.gateway import wsgi
from test_tls_files import make_cert

http_node, api, make_http_node, make_web_worker = FIXTURES

HEADER_TIMEOUT = 60.0     # far longer than any test waits: only the moved clock can use it up
READ_WAIT = 15.0          # a guard against a hang, not a timing assertion
REQUEST = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class MovedClock:
    """``time.monotonic()`` plus ``ahead`` seconds."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("certs"), "node", days=30)


@pytest.fixture
def clock(monkeypatch) -> MovedClock:
    moved = MovedClock()
    monkeypatch.setattr(wsgi, "monotonic", moved)
    return moved


def accepted_and_handshaking(node: NodeThread, raw: socket.socket, clock: MovedClock, ahead: float,
                             cert: Path) -> ssl.SSLSocket:
    """Once the gateway took ``raw`` (its handshake waiting for the client:
    the check runs in the node's hub, so after the handler started), move the
    gateway's clock ``ahead`` and finish the handshake."""
    server = node.node.part("gateway").server
    wait_for(lambda: node.call(lambda: "127.0.0.1" in server.clients), "the gateway to take the connection")
    clock.ahead = ahead
    context = ssl.create_default_context(cafile=str(cert))
    tls_sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    tls_sock.settimeout(READ_WAIT)
    return tls_sock


def test_a_late_handshake_leaves_the_request_only_what_is_left_of_the_header_timeout(make_http_node, cert, clock):
    """Fault: over TLS the header deadline started again after the
    handshake: a handshake done just before ``http_header_timeout``, then
    nothing, was answered 408 only a second ``http_header_timeout`` later
    (handshake at 1.9 s, 408 at 3.9 s with 2 s). Now the handshake and the
    request's headers share one deadline from the accept: with the whole
    timeout used by the handshake, the 408 comes at once."""
    node = make_http_node(http_cert=str(cert[0]), http_key=str(cert[1]), http_header_timeout=HEADER_TIMEOUT)
    with socket.create_connection(("127.0.0.1", node.config.http_port), timeout=READ_WAIT) as raw:
        with accepted_and_handshaking(node, raw, clock, HEADER_TIMEOUT + 1, cert[0]) as sock:
            try:
                answer = sock.recv(64)
            except TimeoutError:
                pytest.fail(f"no 408 within {READ_WAIT:g}s: the request got a header timeout of its own")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer


def test_a_request_after_a_slow_handshake_gets_what_is_left(make_http_node, cert, clock):
    """The same deadline, not yet passed: a handshake that took half of
    ``http_header_timeout`` leaves the first request the other half (it is
    served), and the next request on the connection a whole one."""
    node = make_http_node(http_cert=str(cert[0]), http_key=str(cert[1]), http_header_timeout=HEADER_TIMEOUT)
    with socket.create_connection(("127.0.0.1", node.config.http_port), timeout=READ_WAIT) as raw:
        with accepted_and_handshaking(node, raw, clock, HEADER_TIMEOUT / 2, cert[0]) as sock:
            for _ in range(2):
                sock.sendall(REQUEST)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(65536)
                assert head.startswith(b"HTTP/1.1 200 OK"), head
                length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += sock.recv(65536)
                clock.ahead += HEADER_TIMEOUT / 2 + 1    # the first deadline is past: the next request has its own
