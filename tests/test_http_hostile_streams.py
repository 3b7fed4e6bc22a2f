"""HTTP clients that never let the gateway's buffer run dry, never read
their answers, or bend the protocol (docs/http.md, "Slow and abusive
clients").

The hostile client plays from 127.0.0.2 (the whole of 127.0.0.0/8 reaches a
node bound to 127.0.0.1), a well-behaved one from 127.0.0.1. No test
asserts a duration: each checks who was answered and which connection the
node closed; the hostile loops are bounded in count and time.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from gateway_harness import FIXTURES, WAIT, Http, metrics_text, read_all
from gateway_harness import connect_from as connect
from miyaq.testing.harness import wait_for

http_node, api, make_http_node, make_web_worker = FIXTURES

ATTACK_GUARD = 20.0     # seconds a hostile loop may run at most (the node cuts it far sooner)


#: The attacker, in a process of its own: in a thread of the test process it
#: shares the GIL with the node's thread and never outruns the parser (the
#: test passed on the code that froze). It prints "sending" once it has sent
#: a first batch, and exits 0 when the node cuts it, 3 at ``ATTACK_GUARD``.
ENDLESS_TRAILERS = """
import socket, sys, time
sock = socket.socket()
sock.bind(("127.0.0.2", 0))
sock.connect(("127.0.0.1", int(sys.argv[1])))
line = b"X-Trailer: " + b"a" * 8000 + b"\\r\\n"
try:
    sock.sendall(b"POST /tasks HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
                 b"Transfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n")
    sock.sendall(line * 64)
    print("sending", flush=True)
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        sock.sendall(line * 64)
except OSError:
    sys.exit(0)
sys.exit(3)
"""


def test_endless_chunk_trailers_are_cut_at_the_body_timeout_and_others_are_served(make_http_node):
    """Fault: a client sends a chunked body's last chunk and then trailer
    lines without end, faster than they are parsed. gevent parsed them out
    of a buffer that never ran dry, so nothing yielded: the whole node (its
    ZeroMQ port too) froze for as long as the client sent, and the body
    timeout, a timer that needs a yield, never fired. Now the connection
    yields at every slice of the hub: another client is answered while the
    attack goes on, and the attacker is cut at the body timeout."""
    node = make_http_node(http_body_timeout=3.0)
    attacker = subprocess.Popen([sys.executable, "-c", ENDLESS_TRAILERS, str(node.config.http_port),
                                 str(ATTACK_GUARD)], stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout is not None and attacker.stdout.readline().strip() == "sending"
        other = Http(node.url)
        try:
            status, body, _ = other.get("/status")
            answered_during_attack = attacker.poll() is None
        finally:
            other.close()
        code = attacker.wait(ATTACK_GUARD + WAIT)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    assert status == 200, body
    assert answered_during_attack, "the node answered only once the attacker stopped"
    assert code == 0, f"the node never cut a client sending trailers for {ATTACK_GUARD:g}s"


def test_a_client_that_never_reads_its_answers_loses_its_connection(make_http_node, sockets):
    """Fault: a client pipelines requests whose answers it never reads. The
    node's send blocked for ever, and the connection kept its slot of the
    client's cap (and of the node's) until the client went away. Now a
    piece of an answer not taken within the body timeout closes the
    connection: the same address is served again, and the refusal is
    counted (``send_timeout``)."""
    node = make_http_node(http_body_timeout=1.0, http_max_client_connections=1)
    hoarder = connect(node, "127.0.0.2", sockets, rcvbuf=4096)
    hoarder.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 200)

    def served_again() -> bool:
        sock = connect(node, "127.0.0.2", sockets)
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return read_all(sock).startswith(b"HTTP/1.1 200")

    wait_for(served_again, timeout=WAIT, interval=0.2, what="127.0.0.2 served again")
    assert 'miyaq_http_refused_total{reason="send_timeout"} 1.0' in metrics_text(node.url)


def test_expect_100_continue_answered_without_its_body_gets_no_stray_100(make_http_node, sockets):
    """Fault: a request with ``Expect: 100-continue`` is answered (404)
    without its body being read. Discarding the body sent ``100 Continue``
    after the final answer -- taken by the client for the go-ahead of its
    next request -- and then waited for a body that never came. Now the
    answer is the only one, and the connection closes."""
    node = make_http_node(http_body_timeout=1.0)
    sock = connect(node, "127.0.0.2", sockets)
    sock.sendall(b"POST /no-such-endpoint HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n")
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 404"), answer
    assert b"100 Continue" not in answer and answer.count(b"HTTP/1.1 ") == 1, answer


@pytest.mark.parametrize("lines", [3, 1], ids=["three-of-30-KB", "one-of-70-KB"])
def test_request_headers_over_their_budget_are_refused_431(make_http_node, sockets, lines):
    """Fault: a request's header lines, each under 64 KiB and fewer than 100,
    add up to megabytes (6.4 MB a request was accepted and held for as long
    as the request, a long-poll's hour). Past 64 KiB together: 431 and the
    connection closes; a request with ordinary headers is served."""
    node = make_http_node()
    sock = connect(node, "127.0.0.2", sockets)
    big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * (90_000 // lines)) for i in range(lines))
    try:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + big + b"\r\n")
    except OSError:
        pass   # closed while sending: the answer is read below
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431") and b'"code":"too_large"' in answer, answer
    ok = connect(node, "127.0.0.2", sockets)
    ok.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Small: " + b"v" * 30_000
               + b"\r\nConnection: close\r\n\r\n")
    assert read_all(ok).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("url", ["http://a..b/hook", "http://" + "a" * 64 + ".example/hook"])
def test_a_webhook_host_that_is_no_host_name_is_refused_400(api, url):
    """Fault: a webhook URL whose host has an empty label or one over 63
    characters: resolving it raised UnicodeError out of the enqueue check, a
    500 and a traceback. Now 400 invalid_field naming ``url``, nothing stored."""
    status, body, _ = api.post("/queue", {"url": url})
    assert status == 400 and body["error"]["code"] == "invalid_field" and body["error"]["field"] == "url", body
    assert "is not a valid host name" in body["error"]["message"]
    assert api.get("/status")[1]["totals"]["live"] == 0


def test_a_charset_holding_a_nul_is_refused_400(api):
    """Fault: ``Content-Type: application/json; charset=utf-8\\x00``: the codec
    lookup's ValueError was a 500 with a traceback. Now 400 naming Content-Type."""
    status, body, _ = api.post("/tasks", raw=b'{"name": "job"}', content_type="application/json; charset=utf-8\x00")
    assert status == 400 and body["error"]["field"] == "Content-Type", body
