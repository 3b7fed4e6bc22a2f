"""Slow and abusive HTTP clients cannot stop the gateway (issue 9).

Slow clients play slowloris from other loopback addresses (127.0.0.2 and
up: the whole of 127.0.0.0/8 reaches a node bound to 127.0.0.1), so the
per-client cap sees them apart from the well-behaved client on 127.0.0.1.
No test asserts a duration: each checks that the other client's request is
answered and that the slow connections were refused or closed.
"""
from __future__ import annotations

import random
import re
import threading


from gateway_harness import FIXTURES, WAIT, Http, read_all
from gateway_harness import connect_from as connect

http_node, api, make_http_node, make_web_worker = FIXTURES
TOKEN = "secret-token-0123456789"    # http_token: 16 characters or more

SLOW_HEAD = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def refused_count(api: Http, reason: str) -> float:
    text = api.get("/metrics")[1].decode()
    match = re.search(rf'^miyaq_http_refused_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_slowloris_from_one_address_does_not_stop_another_client(make_http_node, sockets):
    """Slowloris from one address: 40 connections from 127.0.0.2 that never
    finish their headers used to hold every connection slot (1,030 stopped
    the gateway answering anyone). Now that address gets 8 connections
    (http_max_client_connections); the other 32 are answered 503 busy and
    closed at once, and a client on 127.0.0.1 is served meanwhile."""
    node = make_http_node(http_max_connections=16, http_max_client_connections=8)
    slow = [connect(node, "127.0.0.2", sockets) for _ in range(40)]
    for sock in slow:
        try:
            sock.sendall(SLOW_HEAD)
        except OSError:
            pass   # already refused and closed
    other = Http(node.url)
    try:
        status, body, _ = other.get("/status")
        assert status == 200, body
        assert refused_count(other, "client_limit") == 32
    finally:
        other.close()
    refused = []
    for sock in slow:
        sock.settimeout(0.2)
        try:
            data = read_all(sock)
        except TimeoutError:
            continue   # one of the 8 let in: still waiting for its headers
        refused.append(data)
    assert len(refused) == 32
    assert all(data.startswith(b"HTTP/1.1 503") and b'"code":"busy"' in data for data in refused)


def test_slowloris_headers_that_never_end_are_cut_at_the_header_timeout(make_http_node, sockets):
    """Slowloris from many addresses: every connection slot held by a client
    that sends one header byte at a time. Each is answered 408 and closed at
    http_header_timeout, however steadily it trickles, and the client
    queued behind them is then served."""
    node = make_http_node(http_max_connections=4, http_max_client_connections=1, http_header_timeout=0.5)
    slow = [connect(node, f"127.0.0.{2 + i}", sockets) for i in range(4)]
    stop = threading.Event()

    def trickle() -> None:
        for sock in slow:
            sock.sendall(SLOW_HEAD)
        while not stop.wait(0.05):
            for sock in slow:
                try:
                    sock.sendall(b"a")
                except OSError:
                    pass   # closed by the node

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        other = Http(node.url)
        try:
            status, body, _ = other.get("/status")    # waits in the backlog until slots free up
            assert status == 200, body
        finally:
            other.close()
        answers = [read_all(sock) for sock in slow]
    finally:
        stop.set()
        feeder.join(WAIT)
    assert all(data.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in data for data in answers), answers


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(make_http_node, sockets):
    """A connection opened and left silent counts as a request that never
    came: it is answered 408 and closed at http_header_timeout."""
    node = make_http_node(http_header_timeout=0.3)
    sock = connect(node, "127.0.0.2", sockets)
    assert read_all(sock).startswith(b"HTTP/1.1 408")


def test_a_body_that_stops_arriving_is_answered_408_at_the_body_timeout(make_http_node, sockets):
    """A client that sends its headers and 10 of the 100 bytes it announced,
    then stalls, gets 408 request_timeout at http_body_timeout and the
    connection closes; nothing is stored."""
    node = make_http_node(http_body_timeout=0.3)
    sock = connect(node, "127.0.0.2", sockets)
    sock.sendall(b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"name\": ")
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in answer, answer
    other = Http(node.url)
    try:
        assert other.get("/status")[1]["totals"]["live"] == 0
    finally:
        other.close()


def test_an_unread_body_that_stalls_does_not_hold_the_connection(make_http_node, sockets):
    """A request refused before its body is read (401 here) is answered;
    skipping the rest of a body that stalls ends at the body timeout with the
    connection closed, instead of waiting on the client forever."""
    node = make_http_node(http_body_timeout=0.3, http_token=TOKEN)
    sock = connect(node, "127.0.0.2", sockets)
    sock.sendall(b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer


def test_a_keep_alive_connection_idle_too_long_is_closed(make_http_node, sockets):
    """Between requests a keep-alive connection may wait http_idle_timeout;
    then the node closes it quietly (no answer to a request never made)."""
    node = make_http_node(http_idle_timeout=0.3)
    sock = connect(node, "127.0.0.2", sockets)
    sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200") and data.count(b"HTTP/1.1") == 1


def test_metric_series_growth_made_up_methods_add_no_series(make_http_node):
    """The metric series growth: 20,000 requests with made-up methods grew
    /metrics from 8.7 KB to 11.6 MB, one series per method -- even with a
    token set, since requests refused 401 were counted too. Labels now come
    from fixed sets (known verbs and "other"; route templates and
    "unmatched"), so 2,000 made-up methods, with and without the token, on
    known and unknown paths, add a handful of series."""
    node = make_http_node(http_token=TOKEN)
    rng = random.Random(7)
    authorised, anonymous = Http(node.url, token=TOKEN), Http(node.url)
    try:
        for i in range(2000):
            method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(8))
            client = authorised if i % 2 else anonymous
            path = rng.choice(["/status", "/tasks/x", f"/made-up/{i}", "/queue"])
            status, _, _ = client.request(method, path)
            assert status in (401, 404, 405), status
        text = authorised.get("/metrics")[1].decode()
    finally:
        authorised.close()
        anonymous.close()
    series = [line for line in text.splitlines() if line.startswith("miyaq_http_requests_total{")]
    methods = {re.search(r'method="([^"]*)"', line).group(1) for line in series}
    routes = {re.search(r'route="([^"]*)"', line).group(1) for line in series}
    assert methods <= {"GET", "other"}, methods
    assert routes <= {"unmatched", "/status", "/tasks/{id}", "/queue", "/metrics"}, routes
    assert len(series) <= 12, series
