"""The request bodies a gateway reads and holds at once are bounded in bytes
(``http_body_budget``), not only each of them (``http_max_body``).

No test asserts a duration: each checks what a client was answered and
what the budget holds.
"""
from __future__ import annotations

import json
import socket

import pytest

from gateway_harness import FIXTURES, metrics_text, read_all
from gateway_harness import connect_from as connect
from gateway_harness import wait_for

http_node, api, make_http_node, make_web_worker = FIXTURES

pytestmark = pytest.mark.timeout(60)

BODY = 64 * 1024        # http_max_body here
BUDGET = 4 * BODY       # http_body_budget here: four bodies at once


def held(node) -> int:
    """The bytes of bodies the node's gateway counts now."""
    return node.node.part("gateway").bodies.held


def head(size: int) -> bytes:
    return (f"POST /queue HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()


def stall(node, opened: list[socket.socket], source: str = "127.0.0.1") -> socket.socket:
    """A connection that sends all but the last byte of a body of ``BODY`` bytes, and waits."""
    sock = connect(node, source, opened)
    sock.sendall(head(BODY) + b" " * (BODY - 1))
    return sock


def status_line(sock: socket.socket) -> bytes:
    """The first line of the node's answer (the rest is not waited for)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    return data.partition(b"\r\n")[0]


def test_bodies_past_http_body_budget_from_slow_clients_are_refused_503_unread(make_http_node):
    """Attack: clients hold many connections, each sending all but the last
    byte of a body of http_max_body (before the fix: 200 connections of
    4 MiB from two loopback addresses took a node from 45 to 850 MiB for
    http_body_timeout at a time; 1,024, the default http_max_connections,
    4 GiB). The fifth body past a budget of four is answered 503 busy,
    naming the setting, before a byte of it is read; once a stalled client
    goes, its bytes are free, and nothing stays counted at the end."""
    node = make_http_node(http_max_body=BODY, http_body_budget=BUDGET)
    opened: list[socket.socket] = []
    try:
        stalled = [stall(node, opened, f"127.0.0.{2 + i}") for i in range(4)]
        wait_for(lambda: held(node) == BUDGET, "four bodies counted")
        fifth = connect(node, "127.0.0.9", opened)
        fifth.sendall(head(BODY))          # its body never comes: it is not waited for
        answer = read_all(fifth)
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 503 " in status_line, answer[:300]
        assert b"retry-after:" in rest.lower()
        error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "busy" and "http_body_budget" in error["message"], error
        # An operator sees why (the audit review37: the refusal was counted where nothing showed it).
        assert 'miyaq_http_refused_total{reason="body_budget"} 1.0' in metrics_text(node.url)
        stalled[0].close()                 # the client leaves mid-body: its bytes are given back
        wait_for(lambda: held(node) == BUDGET - BODY, "the departed body given back")
        whole = connect(node, "127.0.0.10", opened)
        body = json.dumps({"url": "https://example.com/hook", "countdown": 600}).encode()
        whole.sendall(head(len(body)).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1) + body)
        assert read_all(whole).startswith(b"HTTP/1.1 200"), "a body that fits is read and handled"
    finally:
        for sock in opened:
            sock.close()
    wait_for(lambda: held(node) == 0, "every body given back")


def test_connections_that_send_headers_and_no_body_do_not_take_the_budget(make_http_node):
    """Attack: one address opens connections that each send the headers of
    a body of http_max_body and nothing more -- no bandwidth spent. Before
    review36 (2026-12-07) each counted its whole Content-Length before a
    byte came: four of them held a budget of four bodies, and another
    client's small body was answered 503 busy for http_body_timeout at a
    time (by default 64 such connections, half of what one address may
    open). Now a body counts what it holds and the step it waits for
    (BODY_STEP): they hold a step each, and the other client's body is
    read and handled."""
    step = 64 * 1024      # BODY_STEP (checked at the end)
    largest = 4 * step
    node = make_http_node(http_max_body=largest, http_body_budget=4 * largest)
    opened: list[socket.socket] = []
    try:
        for _ in range(4):
            connect(node, "127.0.0.2", opened).sendall(head(largest))
        wait_for(lambda: held(node) >= 4 * step, "the four bodies waited for")
        other = connect(node, "127.0.0.3", opened)
        body = json.dumps({"url": "https://example.com/hook", "countdown": 600}).encode()
        other.sendall(head(len(body)).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1) + body)
        answer = read_all(other)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert held(node) == 4 * step, held(node)      # a step each
    finally:
        for sock in opened:
            sock.close()
    wait_for(lambda: held(node) == 0, "every body given back")
    from miyaq.gateway import request
    assert getattr(request, "BODY_STEP", None) == step


def test_a_chunked_body_counts_what_it_holds_and_is_given_back(make_http_node):
    """A chunked body is counted as http_max_body + 1 while it is read, then
    as what it held, and given back when its request is answered (a request
    refused 413 or 400 too)."""
    node = make_http_node(http_max_body=BODY, http_body_budget=BUDGET)
    opened: list[socket.socket] = []
    try:
        sock = connect(node, "127.0.0.1", opened)
        body = json.dumps({"url": "https://example.com/hook", "countdown": 600}).encode()
        sock.sendall(b"POST /queue HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 200")
        wait_for(lambda: held(node) == 0, "the chunked body given back")
        too_large = connect(node, "127.0.0.1", opened)
        too_large.sendall(head(BODY + 1) + b" " * (BODY + 1))
        assert b" 413 " in status_line(too_large)
        bad = connect(node, "127.0.0.1", opened)
        bad.sendall(head(10) + b"{not json}")
        assert b" 400 " in status_line(bad)
        wait_for(lambda: held(node) == 0, "every body given back")
    finally:
        for sock in opened:
            sock.close()


def test_http_body_budget_below_http_max_body_is_refused_at_start():
    from miyaq.config import NodeConfig
    from miyaq.errors import ConfigError
    with pytest.raises(ConfigError, match="http_body_budget .* must be at least http_max_body"):
        NodeConfig(http_max_body=BODY, http_body_budget=BODY - 1)


@pytest.mark.parametrize("length", ["100", ""], ids=["content-length", "chunked"])
def test_a_body_counts_what_it_holds_once_read_and_nothing_once_released_twice(length):
    """A body of 100 bytes, read (with a Content-Length, or chunked: read to
    its end), counts its 100 bytes while its request is handled -- not the
    64 KiB step it was read by (kept, 4,096 small bodies of long-polls
    would hold the default budget) -- and nothing once released, however
    often (mutation, review37: keeping the whole step, or giving it back at
    each release, passed every test)."""
    import io

    from miyaq.gateway.request import BodyBudget, Request

    budget = BodyBudget(1 << 20)
    environ = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": length, "wsgi.input": io.BytesIO(b"x" * 100)}
    request = Request(environ, BODY, budget)
    assert request.body() == b"x" * 100
    assert budget.held == 100
    request.release()
    request.release()
    assert budget.held == 0
