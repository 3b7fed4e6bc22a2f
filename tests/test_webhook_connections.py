"""The webhook deliverer's connections (miyaq.gateway.connections): one
delivery on a connection from its request to the end of its answer, a
connection kept only when its answer was read to the end, at most
``webhook_pool_size`` open to a destination. Each fault test's docstring
names what the destination does wrong. The deliveries run in a native
thread with a hub of its own, against a raw socket server in threads."""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from loopback_server import LoopbackServer
from loopback_server import read_head
from test_http_tls import make_cert

from miyaq.gateway import connections as connections_module
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.outbound import Outbound, Outcome
from miyaq.runtime import green
from miyaq.runtime.http import client_context
from miyaq.store.task import Task
from miyaq.testing.harness import in_own_hub

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawDestination(LoopbackServer):
    """A loopback HTTP destination that answers the n-th request head
    (1-based, over all connections; each head is kept) with ``answer(n)`` bytes, after
    ``hold`` seconds (and closes the connection after each answer if
    ``close_after``); it counts connections, and the most open at once."""

    def __init__(self, answer: Callable[[int], bytes], hold: float = 0.0, close_after: bool = False) -> None:
        self.answer = answer
        self.hold = hold
        self.close_after = close_after
        self.heads: list[bytes] = []
        self.requests = 0
        self.connections = 0
        self.open = 0
        self.most_open = 0
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                while (head := read_head(conn)) is not None:
                    with self.lock:
                        self.heads.append(head)
                        self.requests += 1
                        n = self.requests
                    threading.Event().wait(self.hold)
                    conn.sendall(self.answer(n))
                    if self.close_after:
                        return
            except OSError:
                return
            finally:
                with self.lock:
                    self.open -= 1


def deliver_all(destination: RawDestination, tasks: int, pool_size: int, timeout: float,
                rounds: int = 1, pause: float = 0.0) -> list[Outcome]:
    """Deliver ``tasks`` tasks at once to ``destination``, ``rounds`` times
    one after the other (``pause`` seconds between), through one Outbound;
    every outcome, in order."""
    def run() -> list[Outcome]:
        outbound = Outbound(pool_size, 5.0, Destinations("", True))
        outcomes: list[Outcome] = []
        try:
            for _ in range(rounds):
                greenlets = [green.Greenlet.spawn(outbound.send, Task(f"t{n}", "hooks", None, b"", url=(
                    f"http://127.0.0.1:{destination.port}/hook/{n}")), timeout) for n in range(tasks)]
                green.joinall(greenlets, raise_error=True)
                outcomes += [greenlet.value for greenlet in greenlets]
                green.sleep(pause)
        finally:
            outbound.close()
        return outcomes

    return in_own_hub(run)


def test_an_answer_with_a_status_below_200_never_hands_its_connection_to_another_delivery():
    """Fault: the destination answers every request with status ``099``
    (geventhttpclient, used before, took it for an interim answer and read
    past it, while its shared pool handed the same socket to a second
    delivery: "file descriptor was closed in another greenlet", or gevent's
    ConcurrentObjectUseError). Two deliveries at once each fail retryably,
    an answer that is not HTTP, on a connection of their own."""
    destination = RawDestination(lambda n: b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n")
    try:
        outcomes = deliver_all(destination, tasks=2, pool_size=2, timeout=5.0)
    finally:
        destination.close()
    assert [(o.kind, o.retryable) for o in outcomes] == [("connection", True)] * 2
    assert destination.connections == 2


class StreamingHeaders(RawDestination):
    """Answers a status line, then header lines without end (up to 2 GB or
    60 s, far more than any test waits for), never the blank line."""

    def __init__(self, line: bytes) -> None:
        super().__init__(lambda n: b"")
        self.line = line
        self.sent = 0

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                started = time.monotonic()
                while self.sent < 2 * 10**9 and time.monotonic() - started < 60:
                    conn.sendall(self.line)
                    self.sent += len(self.line)
            except OSError:
                return


@pytest.mark.parametrize("line", [
    pytest.param(b"X-A: " + b"a" * 8000 + b"\r\n", id="many-long-lines"),
    pytest.param(b"X-A: a\r\n", id="many-short-lines"),
    pytest.param(b"a" * 65536, id="one-endless-line"),
])
def test_a_destination_streaming_headers_without_end_is_cut_off_not_held(line):
    """Fault: the destination answers a status line and then header lines
    without end (geventhttpclient, used before, kept every byte until the
    attempt's timeout: a node grew by a gigabyte in seconds). The answer is
    refused as not HTTP once past http.client's bounds (a 64 KiB line, 100
    header lines), retryably, long before the timeout; what the server
    managed to send is a few of its writes, not the stream."""
    destination = StreamingHeaders(line)
    try:
        [outcome] = deliver_all(destination, tasks=1, pool_size=1, timeout=30.0)
    finally:
        destination.close()
    assert (outcome.kind, outcome.retryable) == ("connection", True), outcome
    assert destination.sent < 50 * 10**6


STREAMER = """
import socket, sys, time
head, unit = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
blob = unit * max(1, 65536 // len(unit))
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.recv(65536)
conn.sendall(head)
started = time.monotonic()
try:
    while time.monotonic() - started < 60:
        conn.sendall(blob)
except OSError:
    pass
"""


class Streaming:
    """A destination in a process of its own (faster than the node reads:
    its socket never runs dry): answers ``head``, then ``unit`` over and
    over until the node closes the connection, or 60 s."""

    def __init__(self, head: bytes, unit: bytes) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", STREAMER, head.hex(), unit.hex()],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.mark.parametrize("head,unit", [
    pytest.param(b"", b"HTTP/1.1 100 Continue\r\n\r\n", id="endless-100-continue"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n",
                 b"T: tttttttttttttttttttt\r\n", id="endless-chunked-trailers"),
])
def test_a_destination_streaming_what_http_client_skips_is_cut_at_the_timeout(head, unit):
    """Fault: the destination streams, without a pause, what ``http.client``
    reads past without a bound -- ``100 Continue`` answers, or trailers after
    a chunked body. Its socket never runs dry, so a cooperative read never
    waited and no ``green.Timeout`` could fire: before 2026-12-05 the delivery
    held the node's hub (HTTP, ZeroMQ, timers) for as long as the stream
    lasted. Now the attempt ends at its timeout, retryably, and the hub's
    other greenlets run meanwhile."""
    destination = Streaming(head, unit)
    ticks = [0]

    def run() -> Outcome:
        outbound = Outbound(1, 5.0, Destinations("", True))
        done = []

        def ticker() -> None:
            while not done:
                ticks[0] += 1
                green.sleep(0.01)

        other = green.Greenlet.spawn(ticker)
        try:
            return outbound.send(Task("t", "hooks", None, b"", url=f"http://127.0.0.1:{destination.port}/h"), 1.0)
        finally:
            done.append(True)
            other.join()
            outbound.close()

    try:
        outcome = in_own_hub(run)
    finally:
        destination.close()
    assert (outcome.kind, outcome.retryable, outcome.error["type"]) == ("timeout", True, "Timeout"), outcome
    assert ticks[0] > 1


def test_an_answer_that_closes_its_connection_is_read_whole():
    """The destination answers ``Connection: close``: ``http.client`` closes
    the socket before the body is read, and the body must still be read
    from it (the answer's reader keeps the descriptor open)."""
    destination = RawDestination(lambda n: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
    try:
        [outcome] = deliver_all(destination, tasks=1, pool_size=1, timeout=5.0)
    finally:
        destination.close()
    assert outcome.kind == "2xx" and b"hello" in (outcome.result or b""), outcome


def test_interim_answers_are_read_past_and_their_connection_reused():
    """The destination sends ``103 Early Hints`` before its ``200``: the
    delivery is done with the final answer, and the next one goes over the
    same connection."""
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    destination = RawDestination(lambda n: hints + OK)
    try:
        outcomes = deliver_all(destination, tasks=1, pool_size=1, timeout=5.0, rounds=2)
    finally:
        destination.close()
    assert [o.kind for o in outcomes] == ["2xx", "2xx"]
    assert destination.connections == 1


def test_endless_interim_answers_are_not_http():
    """Fault: the destination sends interim answers without end."""
    hints = b"HTTP/1.1 102 Processing\r\n\r\n"
    destination = RawDestination(lambda n: hints * 50)
    try:
        [outcome] = deliver_all(destination, tasks=1, pool_size=1, timeout=5.0)
    finally:
        destination.close()
    assert (outcome.kind, outcome.retryable) == ("connection", True), outcome
    assert "interim" in outcome.error["message"]


def test_an_idle_connection_the_destination_closed_is_not_used():
    """Fault: the destination closes each kept-alive connection right after
    its answer (without saying ``Connection: close``). The next delivery does
    not send on the closed one (which would fail it): it opens another."""
    destination = RawDestination(lambda n: OK, close_after=True)
    try:
        outcomes = deliver_all(destination, tasks=1, pool_size=1, timeout=5.0, rounds=3, pause=0.2)
    finally:
        destination.close()
    assert [o.kind for o in outcomes] == ["2xx"] * 3
    assert destination.connections == 3


def test_connections_are_reused_and_at_most_pool_size_are_open_at_once():
    """Six deliveries at once to one destination with a pool of two, twice:
    at most two connections are ever open, and the second round reuses the
    first round's (two connections in all)."""
    destination = RawDestination(lambda n: OK, hold=0.05)
    try:
        outcomes = deliver_all(destination, tasks=6, pool_size=2, timeout=10.0, rounds=2)
    finally:
        destination.close()
    assert [o.kind for o in outcomes] == ["2xx"] * 12
    assert destination.most_open <= 2
    assert destination.connections == 2


@pytest.mark.parametrize("close_after, keep", [(False, 0.3), (True, 3600.0)],
                         ids=["idle-past-the-keep", "closed-by-the-destination"])
def test_idle_connections_are_closed_once_unused_or_closed_by_the_destination(monkeypatch, close_after, keep):
    """Fault: a burst of deliveries left its kept-alive connections open for
    good once it was over -- until the destination was used again or pushed
    out by 256 newer ones, up to 256 × ``webhook_pool_size`` descriptors,
    most already closed by the other end (an audit: 2,048 in CLOSE_WAIT 30 s
    after a burst to 64 destinations). A sweep closes those unused past
    ``IDLE_KEEP`` and those the destination closed, and stops once none is
    kept."""
    monkeypatch.setattr(connections_module, "IDLE_KEEP", keep)
    monkeypatch.setattr(connections_module, "IDLE_SWEEP", 0.05)
    destination = RawDestination(lambda n: OK, hold=0.05, close_after=close_after)

    def idle(outbound: Outbound) -> int:
        return sum(len(d.idle) for d in outbound.connections._kept.values())

    def run() -> tuple[list[str], int, int, int]:
        outbound = Outbound(4, 5.0, Destinations("", True))
        try:
            greenlets = [green.Greenlet.spawn(outbound.send, Task(f"t{n}", "hooks", None, b"", url=(
                f"http://127.0.0.1:{destination.port}/hook/{n}")), 5.0) for n in range(4)]
            green.joinall(greenlets, raise_error=True)
            kept = idle(outbound)
            for _ in range(100):        # at most 5 s, the outbound still open
                if idle(outbound) == 0 and destination.open == 0:
                    break
                green.sleep(0.05)
            return [g.value.kind for g in greenlets], kept, idle(outbound), destination.open
        finally:
            outbound.close()

    try:
        kinds, kept, left, still_open = in_own_hub(run)
    finally:
        destination.close()
    assert kinds == ["2xx"] * 4 and kept == 4
    assert left == 0 and still_open == 0


def test_a_connection_whose_answer_was_not_http_is_closed_not_reused():
    """Fault: the destination answers the first request with a status line
    that is not HTTP (``HTTP/1.1 2OO``). That delivery fails retryably and
    its connection is closed; the next delivery opens a new one and succeeds."""
    destination = RawDestination(lambda n: b"HTTP/1.1 2OO OK\r\n\r\n" if n == 1 else OK)
    try:
        outcomes = deliver_all(destination, tasks=1, pool_size=2, timeout=5.0, rounds=2)
    finally:
        destination.close()
    assert [(o.kind, o.retryable) for o in outcomes] == [("connection", True), ("2xx", False)]
    assert destination.connections == 2


class TlsDestination(RawDestination):
    """The same over TLS, with a self-signed certificate for localhost; it
    records the server name each client asked for and each request's head."""

    def __init__(self, cert: Path, key: Path, answer: Callable[[int], bytes]) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.names: list[str | None] = []
        self.context.sni_callback = lambda sock, name, context: self.names.append(name)
        super().__init__(answer)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            secure = self.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        with secure:
            try:
                head = read_head(secure)
                if head is not None:
                    self.heads.append(head)
                    secure.sendall(self.answer(1))
            except OSError:
                return


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("hook-cert"), "hooks")


def deliver_one(url: str, timeout: float = 5.0) -> Outcome:
    """One delivery to ``url`` through an Outbound, in a hub of its own."""
    def run() -> Outcome:
        outbound = Outbound(1, 5.0, Destinations("", True))
        try:
            return outbound.send(Task("t", "hooks", None, b"", url=url), timeout)
        finally:
            outbound.close()

    return in_own_hub(run)


def test_an_https_destination_is_verified_against_the_systems_certificates(cert):
    """Fault: an https destination whose certificate no CA of this machine
    signed (self-signed). Nothing is sent: the attempt fails retryably,
    saying why."""
    destination = TlsDestination(*cert, lambda n: OK)
    try:
        outcome = deliver_one(f"https://localhost:{destination.port}/hook")
    finally:
        destination.close()
    assert (outcome.kind, outcome.retryable) == ("connection", True), outcome
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.error["message"]
    assert destination.heads == []


def test_an_https_delivery_names_the_urls_host_to_tls_and_in_host(cert, monkeypatch):
    """With the destination's certificate trusted (here by the test), the
    delivery succeeds; the TLS server name and the Host header are the
    URL's host and port."""
    monkeypatch.setattr(connections_module, "client_context", lambda: client_context(str(cert[0])))
    destination = TlsDestination(*cert, lambda n: OK)
    try:
        outcome = deliver_one(f"https://localhost:{destination.port}/hook")
    finally:
        destination.close()
    assert outcome.kind == "2xx", outcome
    assert destination.names == ["localhost"]
    assert f"\r\nHost: localhost:{destination.port}\r\n".encode() in destination.heads[0]


def test_a_url_with_characters_outside_ascii_is_sent_percent_encoded():
    """A webhook URL whose path and query hold characters outside ASCII
    (valid in a task, not on the wire) is delivered with them
    percent-encoded as UTF-8; what was already percent-encoded stays."""
    destination = RawDestination(lambda n: OK)
    try:
        outcome = deliver_one(f"http://127.0.0.1:{destination.port}/hook/café?q=ü&x=%20y")
    finally:
        destination.close()
    assert outcome.kind == "2xx", outcome
    assert destination.heads[0].startswith(b"POST /hook/caf%C3%A9?q=%C3%BC&x=%20y HTTP/1.1\r\n")


def test_a_tasks_own_host_header_is_not_sent():
    """Fault: a webhook task names its own ``Host`` (``admin.internal``),
    which would reach another site behind the destination's address (a
    load balancer's virtual hosts) than the one its URL names and the
    allow-list checks. The request carries the URL's host, once."""
    destination = RawDestination(lambda n: OK)
    try:
        def run() -> Outcome:
            outbound = Outbound(1, 5.0, Destinations("", True))
            task = Task("t", "hooks", None, b"", url=f"http://127.0.0.1:{destination.port}/hook")
            task.meta = {"headers": {"Host": "admin.internal", "X-Kept": "yes"}}
            try:
                return outbound.send(task, 5.0)
            finally:
                outbound.close()

        outcome = in_own_hub(run)
    finally:
        destination.close()
    assert outcome.kind == "2xx", outcome
    head = destination.heads[0].lower()
    assert head.count(b"\r\nhost: ") == 1 and f"\r\nhost: 127.0.0.1:{destination.port}\r\n".encode() in head
    assert b"\r\nx-kept: yes\r\n" in head and b"admin.internal" not in head


def test_a_kept_connection_waits_as_long_as_the_delivery_using_it_may():
    """Fault: the destination is slow to answer the second request (1 s).
    The connection was opened by a delivery allowed 0.5 s; the second
    delivery, allowed 10 s, reuses it and waits its own time, not the 0.5 s
    of the one that opened it."""
    destination = RawDestination(lambda n: (time.sleep(1.0) if n == 2 else None) or OK)
    try:
        def run() -> list[Outcome]:
            outbound = Outbound(1, 5.0, Destinations("", True))
            url = f"http://127.0.0.1:{destination.port}/hook"
            try:
                return [outbound.send(Task(f"t{n}", "hooks", None, b"", url=url), timeout)
                        for n, timeout in enumerate((0.5, 10.0))]
            finally:
                outbound.close()

        outcomes = in_own_hub(run)
    finally:
        destination.close()
    assert [o.kind for o in outcomes] == ["2xx", "2xx"], outcomes
    assert destination.connections == 1
