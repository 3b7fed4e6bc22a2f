"""Signs an operator paged at night needs from a node (docs/operations.md):
which address a refused connection came from, failed and refused
handshakes as metrics, and how long the oldest running task has run.

The foreign peers are raw TCP connections that speak ZMTP 3.0 by hand (or
not at all), so each test knows the address the node should name.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import time
from typing import Any

import pytest
import zmq
from gateway_harness import FIXTURES, Http, wait_for as wait_until
from secure_harness import make_keys
from test_metrics import scrape, value

from miyaq.gateway.task_timings import TaskTimings
from miyaq.runtime.messages import MessageRefused, SenderAddress
from miyaq.runtime.sockets import SocketFactory
from miyaq.store.task import Task
from miyaq.testing.harness import wait_for

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)


# -- a raw ZMTP 3.0 DEALER (NULL mechanism) ------------------------------------------
def _frame(body: bytes, more: bool) -> bytes:
    return bytes([0x01 if more else 0x00, len(body)]) + body


class RawDealer:
    """A TCP connection that greets as a ZMTP 3.0 DEALER and sends messages
    frame by frame; :attr:`address` is its own end, as the node sees it."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        host, own_port = self.sock.getsockname()[:2]
        self.address = f"{host}:{own_port}"
        self.sock.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00")
                          + b"\x00" * 32)
        props = bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER"
        ready = b"\x05READY" + props
        self.sock.sendall(bytes([0x04, len(ready)]) + ready)
        # The node's greeting and READY: a frame sent before them would be
        # taken for a handshake command (and the connection refused).
        got = self._read(64 + 2)
        self._read(got[65])

    def _read(self, size: int) -> bytes:
        got = b""
        while len(got) < size:
            more = self.sock.recv(size - len(got))
            assert more, "the node closed the connection in the handshake"
            got += more
        return got

    def send(self, frames: list[bytes]) -> None:
        last = len(frames) - 1
        self.sock.sendall(b"".join(_frame(f, i < last) for i, f in enumerate(frames)))

    def close(self) -> None:
        self.sock.close()


# -- the address of a refused message --------------------------------------------------
def _hub_and_port(factory: SocketFactory) -> tuple[Any, int]:
    hub = factory.hub_router("tcp://127.0.0.1:0", max_frames=4, sources=True)
    return hub, int(hub.sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])


def test_a_refused_message_names_the_address_it_came_from():
    """Fault: something that is not a miyaq client (a REQ socket's extra
    frame, here five frames from a raw ZMTP peer on 127.0.0.2) reaches a
    service ROUTER. The node's line about it could not say which machine
    sent it: the socket now tells the IP the refused message came from."""
    factory = SocketFactory(green=True)
    try:
        hub, port = _hub_and_port(factory)
        peer = RawDealer(port, source="127.0.0.2")
        try:
            peer.send([b"MQ1", b"STATUS", b"\x80", b"", b"extra"])
            with pytest.raises(MessageRefused):
                assert hub.recv(10.0) is not None
            assert str(hub.sender_address()) == "127.0.0.2"
        finally:
            peer.close()
            hub.close()
    finally:
        factory.close()


def test_the_address_is_the_senders_after_its_descriptor_went_to_another_connection():
    """Fault: a sender connects, sends one bad message and closes; libzmq
    closes its descriptor and the next connection (another machine, here
    127.0.0.3) gets the same number before the line is written. The first
    build of this named the descriptor's peer (``getpeername``): another
    connection's address, in up to 85% of such lines (review, 2026-12-06).
    The address is the one libzmq stored with the message."""
    factory = SocketFactory(green=True)
    try:
        hub, port = _hub_and_port(factory)
        sender = RawDealer(port, source="127.0.0.2")
        sender.send([b"MQ1", b"STATUS", b"\x80", b"", b"extra"])
        with pytest.raises(MessageRefused):
            hub.recv(10.0)
        fd = hub.source.fd
        sender.close()

        def closed() -> bool:
            try:
                socket.socket(fileno=fd).detach()     # still open?
            except OSError:
                return True
            return False

        wait_for(closed, what="libzmq to close the sender's descriptor")
        innocent = RawDealer(port, source="127.0.0.3")
        try:
            assert str(hub.sender_address()) == "127.0.0.2"
        finally:
            innocent.close()
            hub.close()
    finally:
        factory.close()


def test_an_address_libzmq_does_not_give_is_said_so(tmp_path):
    """No frame (a socket made without ``sources``), an IPv6 peer and a unix
    socket: a line says what libzmq gives, never raises."""
    assert str(SenderAddress(None)) == "an address libzmq did not give"
    ctx = zmq.Context()
    try:
        for endpoint, expect in [("tcp://[::1]:0", "::1"), (f"ipc://{tmp_path}/s", f"process {os.getpid()}")]:
            router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
            try:
                for sock in (router, dealer):
                    sock.setsockopt(zmq.IPV6, 1)
                    sock.setsockopt(zmq.LINGER, 0)
                router.bind(endpoint)
                dealer.connect(router.getsockopt(zmq.LAST_ENDPOINT).decode())
                dealer.send_multipart([b"MQ1", b"x"])
                router.recv()
                assert expect in str(SenderAddress(router.recv(copy=False)))
            finally:
                router.close()
                dealer.close()
    finally:
        ctx.term()


# -- handshakes ----------------------------------------------------------------------------
def test_a_refused_key_is_logged_with_the_ip_it_came_from(make_node, tmp_path, caplog):
    """Fault: a connection with a key the node does not know. The node's
    warning named the key and the port but not where it came from; it now
    names the IP of the ZAP request (libzmq gives no port there)."""
    keys = make_keys(str(tmp_path / "keys"))
    node = make_node(keys=keys.dir)
    public, secret = zmq.curve_keypair()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, keys.server_public
    try:
        with caplog.at_level(logging.WARNING, logger="miyaq.security.zap"):
            sock.connect(node.endpoint)
            wait_for(lambda: any("CURVE handshake" in r.getMessage() for r in caplog.records),
                     what="the refusal's warning")
    finally:
        sock.close()
        ctx.term()
    line = next(r.getMessage() for r in caplog.records if "CURVE handshake" in r.getMessage())
    assert f"latest {public.decode()} from 127.0.0.1, on the service port" in line, line


def test_failed_handshakes_are_a_metric(make_http_node):
    """Fault: a load balancer's TCP check (connect, close) on the service
    port. The failure was only in STATUS ``security.handshakes_failed``,
    which no alert reads: it is ``miyaq_handshakes_failed_total`` by port
    and reason, each reason's series there (zero) before the first."""
    node = make_http_node()
    client = Http(node.url)
    try:
        before = scrape(client)
        for reason in ("mechanism mismatch", "cryptographic error", "closed in the handshake", "protocol error"):
            assert value(before, "miyaq_handshakes_failed_total", port="service", reason=reason) == 0
        assert value(before, "miyaq_handshakes_refused_total") is None         # no keys: no ZAP handler
        probe = socket.create_connection(("127.0.0.1", node.config.port))
        probe.close()
        wait_until(lambda: value(scrape(client), "miyaq_handshakes_failed_total", port="service",
                               reason="closed in the handshake") == 1, "the failed handshake's count")
    finally:
        client.close()


def test_refused_keys_are_a_metric(make_http_node, tmp_path):
    """Fault: a client with an unknown key, on a node with ``--keys``: the
    refusal was in STATUS only; it is ``miyaq_handshakes_refused_total``."""
    keys = make_keys(str(tmp_path / "keys"))
    node = make_http_node(keys=keys.dir)
    client = Http(node.url)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    public, secret = zmq.curve_keypair()
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, keys.server_public
    try:
        assert value(scrape(client), "miyaq_handshakes_refused_total") == 0
        sock.connect(f"tcp://127.0.0.1:{node.config.port}")
        wait_until(lambda: (value(scrape(client), "miyaq_handshakes_refused_total") or 0) >= 1,
                 "the refused key's count")
    finally:
        sock.close()
        ctx.term()
        client.close()


# -- the oldest running task -----------------------------------------------------------------
def test_the_oldest_running_task_is_a_gauge(make_http_node):
    """Fault: a handler that hangs (here a pull consumer that takes a task
    and never answers). No metric said how long a running task had run;
    ``miyaq_oldest_running_task_seconds`` climbs while it runs and is 0
    once it is done."""
    node = make_http_node()
    client = Http(node.url)
    try:
        assert value(scrape(client), "miyaq_oldest_running_task_seconds") == 0
        client.post("/tasks", {"name": "hang", "queue": "h"})
        task = client.post("/receive", {"queues": ["h"]})[1]["task"]
        first = value(scrape(client), "miyaq_oldest_running_task_seconds")
        assert first is not None and first >= 0
        wait_until(lambda: (value(scrape(client), "miyaq_oldest_running_task_seconds") or 0) > first,
                 "the gauge to climb")
        assert client.post(f"/tasks/{task['id']}/ack", {"attempt": task["attempt"], "result": 1})[1]["ok"]
        assert value(scrape(client), "miyaq_oldest_running_task_seconds") == 0
    finally:
        client.close()


def _task(task_id: str) -> Task:
    return Task(task_id, "q", "job", b"")


def test_the_oldest_running_start_is_read_in_start_order_and_drops_stale_entries():
    """Fault: a task started again while an entry of its earlier start was
    kept (an attempt that ended by a way no hook saw) stayed first, with its
    new start: the oldest age was another task's, and the entry was never
    dropped. Now a start goes last, and an entry whose attempt no longer
    runs is dropped when the gauge is read."""
    timings = TaskTimings(__import__("prometheus_client").CollectorRegistry())
    a, b = _task("a"), _task("b")
    a.attempt = b.attempt = 1
    timings.task_started(a)
    time.sleep(0.01)
    timings.task_started(b)
    b_start = timings._started["b"][1]
    a.attempt = 2
    timings.task_started(a)                     # a again, no hook in between: it is now the youngest
    assert list(timings._started) == ["b", "a"]
    assert timings.oldest_running(lambda task_id, attempt: True) == b_start
    # b's attempt ended unseen: dropped, and a is the oldest
    assert timings.oldest_running(lambda task_id, attempt: task_id != "b") == timings._started["a"][1]
    assert list(timings._started) == ["a"]
    assert timings.oldest_running(lambda task_id, attempt: False) is None
    assert timings._started == {}


def test_a_scrape_drops_at_most_max_stale_entries():
    """Bad state no hook saw, at scale: 1,500 entries whose attempts no
    longer run before a running one. A read drops at most ``MAX_STALE`` of
    them (its cost bounded: one pass, never a walk from the start per entry
    dropped) and answers the next entry's start; the next read finishes the
    job and finds the running task."""
    timings = TaskTimings(__import__("prometheus_client").CollectorRegistry())
    for i in range(1_500):
        timings._started[f"gone{i}"] = (1, float(i))
    timings._started["live"] = (1, 5_000.0)
    running = lambda task_id, attempt: task_id == "live"    # noqa: E731
    assert timings.oldest_running(running) == float(TaskTimings.MAX_STALE)
    assert len(timings._started) == 501
    assert timings.oldest_running(running) == 5_000.0
    assert list(timings._started) == ["live"]
