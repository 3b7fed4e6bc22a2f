"""The webhook deliverer's connections (miyaq.gateway.connections): one
delivery on a connection from its request to the end of its answer, a
connection kept only when its answer was read to the end, at most
``webhook_pool_size`` open to a destination. Each fault test's docstring
names what the destination does wrong. The deliveries run in a native
thread with a hub of its own, against a raw socket server in threads."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest

from miyaq.gateway.destinations import Destinations
from miyaq.gateway.outbound import Outbound, Outcome
from miyaq.runtime import green
from miyaq.store.task import Task

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawDestination:
    """A loopback HTTP destination that answers the n-th request head
    (1-based, over all connections) with ``answer(n)`` bytes, after
    ``hold`` seconds; it counts connections, and the most open at once."""

    def __init__(self, answer: Callable[[int], bytes], hold: float = 0.0) -> None:
        self.answer = answer
        self.hold = hold
        self.lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open += 1
                self.most_open = max(self.most_open, self.open)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                while True:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        head += chunk
                    with self.lock:
                        self.requests += 1
                        n = self.requests
                    threading.Event().wait(self.hold)
                    conn.sendall(self.answer(n))
            except OSError:
                return
            finally:
                with self.lock:
                    self.open -= 1

    def close(self) -> None:
        self.server.close()


def deliver_all(destination: RawDestination, tasks: int, pool_size: int, timeout: float,
                rounds: int = 1) -> list[Outcome]:
    """Deliver ``tasks`` tasks at once to ``destination``, ``rounds`` times
    one after the other, through one Outbound; every outcome, in order."""
    outcomes: list[Outcome] = []
    failures: list[BaseException] = []

    def run() -> None:
        outbound = Outbound(pool_size, 5.0, Destinations("", True))
        try:
            for _ in range(rounds):
                greenlets = [green.Greenlet.spawn(outbound.send, Task(f"t{n}", "hooks", None, b"", url=(
                    f"http://127.0.0.1:{destination.port}/hook/{n}")), timeout) for n in range(tasks)]
                green.joinall(greenlets)
                for greenlet in greenlets:
                    if greenlet.exception is not None:
                        failures.append(greenlet.exception)
                    else:
                        outcomes.append(greenlet.value)
        except BaseException as exc:      # reported to the test below
            failures.append(exc)
        finally:
            outbound.close()
            green.destroy_hub()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(45)
    assert not thread.is_alive()
    assert not failures, failures
    return outcomes


def test_an_answer_with_a_status_below_200_never_hands_its_connection_to_another_delivery():
    """Fault: the destination answers every request with status ``099``,
    which the HTTP parser takes for an interim answer and reads past. Two
    deliveries at once each end as a retryable timeout on a connection of
    their own (geventhttpclient's shared pool handed the second one the
    first one's socket: one of them failed with "file descriptor was closed
    in another greenlet", or gevent's ConcurrentObjectUseError escaped it)."""
    destination = RawDestination(lambda n: b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n")
    try:
        outcomes = deliver_all(destination, tasks=2, pool_size=2, timeout=1.0)
    finally:
        destination.close()
    assert [(o.kind, o.retryable) for o in outcomes] == [("timeout", True)] * 2
    assert destination.connections == 2


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
