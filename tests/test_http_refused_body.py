"""A request body refused as too large is answered 413, and the client can
read that answer even when it sends its whole body before reading
(docs/http.md, "Limits on clients": the lingering close).

No test asserts a duration: each checks what the client was answered and
that the connection ended.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_harness import FIXTURES, WAIT, read_all
from gateway_harness import connect_from as connect
from miyaq.testing.harness import wait_for
from test_tls_files import make_cert

http_node, api, make_http_node, make_web_worker = FIXTURES

LIMIT = 4 * 1024 * 1024          # http_max_body's default
ROUNDS = 5


def task_body(size: int) -> bytes:
    """A JSON task of exactly ``size`` bytes."""
    head, tail = b'{"name": "echo", "args": ["', b'"]}'
    return head + b"q" * (size - len(head) - len(tail)) + tail


def naive_post(port: int, body: bytes | Iterator[bytes], chunked: bool = False,
               tls: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """POST /tasks the way a naive client does: the whole body, then read the answer."""
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT, context=tls)
    try:
        conn.request("POST", "/tasks", body=body, headers={"Content-Type": "application/json"},
                     encode_chunked=chunked)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def assert_too_large(status: int, body: bytes) -> None:
    assert status == 413, (status, body[:200])
    assert json.loads(body)["error"]["code"] == "too_large", body


@pytest.mark.parametrize("size", [LIMIT + 1, 5 * 1024 * 1024], ids=["limit-plus-1", "5-MiB"])
def test_a_body_over_the_limit_sent_whole_before_reading_gets_its_413(http_node, api, size):
    """Fault: the gateway refuses a body over http_max_body on its
    Content-Length and closed the connection with the body unread in its
    socket; the kernel answered the client's next segment with a reset,
    which destroyed the 413 already sent: Python's http.client (whole body,
    then read) saw ConnectionResetError 8 to 10 times in 10. Now the answer
    is read every time, with its JSON error, and nothing is stored."""
    body = task_body(size)
    for _ in range(ROUNDS):
        assert_too_large(*naive_post(http_node.config.http_port, body))
    assert api.get("/status")[1]["totals"]["live"] == 0


def test_a_chunked_body_that_passes_the_limit_while_read_gets_its_413(http_node, api):
    """Fault: a chunked body (no Content-Length) of 10 MiB is refused once
    the gateway has read one byte past http_max_body; the rest of it (6
    MiB, more than the sockets' buffers hold), left unread at the close,
    reset the connection as above. Now the 413 is read every time."""
    piece = b"q" * 65536

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "echo", "args": ["'
        for _ in range(10 * 1024 * 1024 // len(piece)):
            yield piece
        yield b'"]}'

    for _ in range(ROUNDS):
        assert_too_large(*naive_post(http_node.config.http_port, chunks(), chunked=True))
    assert api.get("/status")[1]["totals"]["live"] == 0


def test_a_body_over_the_limit_over_tls_gets_its_413(make_http_node, tmp_path: Path):
    """Fault: as above, over TLS: the half-close ends the TLS session's
    writing side, and what the client still sends is read away as raw
    bytes; the 413, sent before, is read every time."""
    cert, key = make_cert(tmp_path, "node", days=30)
    node = make_http_node(http_cert=str(cert), http_key=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    body = task_body(5 * 1024 * 1024)
    for _ in range(ROUNDS):
        assert_too_large(*naive_post(node.config.http_port, body, tls=context))


def test_a_client_trickling_a_refused_body_is_cut_off_after_the_linger(make_http_node, sockets, monkeypatch):
    """A client announces a body over the limit and then trickles it, a
    byte at a time, for ever: it gets the 413 and the end of the answer at
    once (the half-close), and the connection, with its slot of the
    per-client cap, ends after the lingering close's bound
    (LINGER_SECONDS, shortened here) although the client never stops."""
    monkeypatch.setattr("miyaq.gateway.request_body.LINGER_SECONDS", 0.5)
    node = make_http_node(http_max_client_connections=1)
    sock = connect(node, "127.0.0.2", sockets)
    sock.sendall(b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {5 * 1024 * 1024}\r\n\r\n".encode())
    answer = read_all(sock)          # ends at the half-close: the client still sends
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer
    assert_too_large(413, body)

    def cut_off() -> bool:
        try:
            sock.sendall(b"q")
        except OSError:
            return True
        return False

    wait_for(cut_off, timeout=WAIT, what="the node to close the trickling connection")
    # its slot is free again: another connection from the same address is served
    other = socket.create_connection(("127.0.0.1", node.config.http_port), timeout=WAIT,
                                     source_address=("127.0.0.2", 0))
    sockets.append(other)
    other.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert read_all(other).startswith(b"HTTP/1.1 200")


def test_a_small_body_is_still_served_on_a_kept_connection(api):
    """The lingering close is for connections that close with a body still
    coming: a request whose body was read keeps its connection."""
    for _ in range(3):
        status, _, headers = api.post("/tasks", {"name": "echo", "args": ["x"]})
        assert status == 202 and headers.get("connection", "").lower() != "close", (status, headers)
