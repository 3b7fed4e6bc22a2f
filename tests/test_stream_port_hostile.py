"""Hostile connections to a node's replication stream port (its XPUB).

A node's SUB sends the port one thing: one subscription to its own topic.
Before, the port took any subscription, of any size, as many as a
connection sent (two 8 MiB prefixes grew a node by 768 MB; 200,000 distinct
60-byte ones by 560 MB), and kept queueing for a subscriber that never read
as long as it sent ZMTP PINGs (any traffic reset libzmq's heartbeat). Each
test speaks raw ZMTP 3.0 to a publisher of its own (no keys) and drives its
checks by calling ``heartbeat`` as the node's role does.
"""
from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
import zmq

from miyaq.cluster.stream import ZmqStreamPublisher
from miyaq.cluster.stream_numbering import topic
from miyaq.runtime.sockets import SocketFactory
from miyaq.testing.harness import free_port
from test_node_lifecycle import until

pytestmark = pytest.mark.timeout(90)

LARGE = b"x" * 100_000


# -- a raw ZMTP 3.0 peer (NULL mechanism) ---------------------------------------------
def _command(body: bytes) -> bytes:
    return bytes([0x04, len(body)]) + body


def _frame(body: bytes) -> bytes:
    if len(body) < 256:
        return bytes([0, len(body)]) + body
    return bytes([0x02]) + struct.pack(">Q", len(body)) + body


PING = _command(b"\x04PING" + b"\x00\x00")


class RawSubscriber:
    """A TCP connection that speaks just enough ZMTP to subscribe, and reads only when told."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
        props = bytes([11]) + b"Socket-Type" + struct.pack(">I", 3) + b"SUB"
        self.sock.sendall(greeting + _command(b"\x05READY" + props))
        # The node's greeting and READY: a frame sent before them would be
        # taken for a handshake command (and the connection refused).
        self.sock.settimeout(10)
        got = self._read(64 + 2)
        self._read(got[65])
        self.closed_by_node = False

    def _read(self, size: int) -> bytes:
        got = b""
        while len(got) < size:
            more = self.sock.recv(size - len(got))
            assert more, "the node closed the connection in the handshake"
            got += more
        return got

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed_by_node = True

    def closed(self) -> bool:
        """The node ended the connection (what it sent so far is read and
        thrown away). Sends a PING: the connection is not dropped for its
        silence (the tests' heartbeat timeout is 0.5 s)."""
        self.send(PING)
        if self.closed_by_node:
            return True
        self.sock.setblocking(False)
        try:
            while True:
                if not self.sock.recv(65536):
                    self.closed_by_node = True
                    break
        except BlockingIOError:
            pass
        except OSError:
            self.closed_by_node = True
        return self.closed_by_node

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stream() -> Iterator[tuple[ZmqStreamPublisher, int, SocketFactory]]:
    sockets = SocketFactory(green=False)
    port = free_port()
    publisher = ZmqStreamPublisher(sockets, "a", f"tcp://127.0.0.1:{port}", heartbeat_ms=(100, 500))
    try:
        yield publisher, port, sockets
    finally:
        publisher.close()
        sockets.close()


def _legit_hears(publisher: ZmqStreamPublisher, sub: zmq.Socket) -> bool:
    """A legitimate subscriber of ``b`` hears what is published for it."""
    publisher.send("b", [["probe"]])
    try:
        frames = sub.recv_multipart(zmq.NOBLOCK)
    except zmq.Again:
        return False
    return frames[0] == topic("b")


def _legit(sockets: SocketFactory, port: int) -> zmq.Socket:
    sub = sockets.subscriber([topic("b")], plain=True)
    sub.connect(f"tcp://127.0.0.1:{port}")
    return sub


def test_an_oversized_subscription_drops_its_connection(stream) -> None:
    """Fault: a stranger subscribes with an 8 MiB prefix. The port takes no
    frame over SUBSCRIPTION_FRAME_LIMIT: the connection is dropped before the
    prefix is kept, and a node's subscriber still hears the stream."""
    publisher, port, sockets = stream
    raw = RawSubscriber(port)
    sub = _legit(sockets, port)
    try:
        raw.send(_frame(b"\x01" + b"p" * (8 << 20)))
        until(raw.closed, "the connection with an 8 MiB subscription dropped")
        until(lambda: _legit_hears(publisher, sub), "a node's subscriber hearing the stream")
    finally:
        raw.close()
        sub.close(0)


@pytest.mark.parametrize("subscriptions", [
    [b""],                                                   # everything
    [b"q" * 60],                                             # a prefix that is no node's topic
    [topic("b"), topic("c")],                                # a second topic
    [topic(f"n{i}") for i in range(2000)],                   # many distinct topics
], ids=["everything", "no-topic", "second-topic", "many-topics"])
def test_a_connection_that_subscribes_to_more_than_one_node_topic_is_dropped(stream, subscriptions) -> None:
    """Fault: a stranger subscribes to everything, to a prefix that is no
    node's topic, or to more than one topic (each distinct prefix libzmq
    keeps costs about 48 bytes a byte). Its connection is dropped and counted
    in ``refused``; a node's subscriber, which subscribes to its own topic
    once, still hears the stream."""
    publisher, port, sockets = stream
    raw = RawSubscriber(port)
    sub = _legit(sockets, port)
    try:
        raw.send(b"".join(_frame(b"\x01" + name) for name in subscriptions))

        def dropped() -> bool:
            publisher.heartbeat(["b"])      # the role's heartbeat reads the subscriptions too
            return raw.closed()
        until(dropped, "the connection's subscriptions refused")
        assert publisher.guard.refused >= 1
        until(lambda: _legit_hears(publisher, sub), "a node's subscriber hearing the stream")
        assert publisher.guard.refused == 1, "the node's own subscriber was refused"
    finally:
        raw.close()
        sub.close(0)


def test_a_subscriber_that_sends_pings_and_never_reads_is_dropped(stream) -> None:
    """Fault: a subscriber of a node's topic never reads what it is sent and
    sends a ZMTP PING now and then, which reset libzmq's heartbeat timeout:
    the port queued every message for it up to the high-water mark (100,000
    messages). The kernel says it takes nothing while bytes wait for it:
    after the heartbeat timeout it is dropped (``stalled``), and a node's
    subscriber that reads stays."""
    publisher, port, sockets = stream
    raw = RawSubscriber(port, rcvbuf=4096)
    sub = _legit(sockets, port)
    try:
        raw.send(_frame(b"\x01" + topic("b")))
        until(lambda: _legit_hears(publisher, sub), "a node's subscriber hearing the stream")

        def dropped() -> bool:
            # The stranger only sends PINGs: it must not read here (before,
            # the check read what had come, a few KiB each 10 ms, so on a
            # loaded host the port saw it take bytes and kept it: 1 run in 5).
            for _ in range(20):
                publisher.send("b", [["large", LARGE]])
            raw.send(PING)
            while True:     # the node's own subscriber reads what it is sent
                try:
                    sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
            publisher.heartbeat(["b"])
            return publisher.guard.stalled >= 1
        until(dropped, "the subscriber that never reads dropped")
        assert publisher.guard.stalled == 1
        until(raw.closed, "the dropped subscriber's connection closed")
        until(lambda: _legit_hears(publisher, sub), "a node's subscriber still hearing the stream")
        assert publisher.guard.stalled == 1, "the node's own subscriber, which reads, was dropped"
    finally:
        raw.close()
        sub.close(0)


def test_a_descriptor_that_is_now_another_ports_connection_is_never_shut_down(stream) -> None:
    """Fault: a stranger sends the port a bad subscription and closes its
    connection at once; before the port reads the frame, libzmq has closed
    that connection's descriptor and the number has gone to another
    connection of the process -- a worker's on the service port, a peer
    link, an HTTP caller. The frame names the number: the port shut that
    other connection down. A descriptor whose local port is not the
    stream's is no connection of it, and is left alone."""
    publisher, _, _ = stream
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    other, _ = listener.accept()
    try:
        publisher.guard._drop(other.fileno())      # what a stale frame naming that number led to
        assert publisher.guard._subscribed(other.fileno(), topic("c"))     # taken for gone: nothing kept
        assert other.fileno() not in publisher.guard.subscribers
        other.sendall(b"still here")
        client.settimeout(10)
        assert client.recv(16) == b"still here"
    finally:
        for s in (client, other, listener):
            s.close()


def test_forgetting_a_destination_forgets_what_was_published_to_it(stream) -> None:
    """Fault: the port counts the bytes published to each destination (what a
    subscriber is measured against) and kept a count for every destination
    ever published to: nodes that joined and left with new ids left one each
    for good, where ``forget`` had let their sequence numbers go."""
    publisher, _, _ = stream
    for n in range(50):
        publisher.send(f"gone-{n}", [["probe"]])
    assert len(publisher.published) == 50
    for n in range(50):
        publisher.forget(f"gone-{n}")
    assert publisher.published == {} and publisher.seqs == {}
