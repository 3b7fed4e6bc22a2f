"""A frozen peer: a node's process stopped (SIGSTOP, a paused VM) while its
connections stay open, the kernel still taking what fits in its buffers.

ZeroMQ queues for a connection by a count of messages (100,000), not bytes:
before, a node held every replication message and every request meant for a
frozen peer until that count -- 1.4 GB in eight seconds of 100 KB messages,
measured. The stream's PUB and the peer link's sockets now send ZMTP
heartbeats (``peer_heartbeat_timeout``): a connection that stops answering them is
dropped, and what was queued for it with it. Each test freezes a real
process (a plain ZeroMQ socket in an interpreter of its own) and shortens
the heartbeats so it runs in a second.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import miyaq
from miyaq.protocol import commands as c
from miyaq.cluster.peer import PeerEndpoint
from miyaq.cluster.stream import ZmqStreamPublisher
from miyaq.cluster.stream_numbering import topic
from miyaq.runtime import Supervisor
from miyaq.runtime.connections import connection_events
from miyaq.runtime.sockets import SocketFactory
from miyaq.testing.harness import free_port, wait_for
from test_node_lifecycle import until

pytestmark = pytest.mark.timeout(90)

HEARTBEAT_MS = (100, 500)      # the tests' heartbeats: PING every 0.1 s, dropped after 0.5 s of silence
LARGE = b"x" * 100_000


class Child:
    """A script in an interpreter of its own; a thread collects its stdout's lines."""

    def __init__(self, script: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                                     stdout=subprocess.PIPE, text=True)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def said(self) -> bool:
        """It printed a line not read yet."""
        return not self.lines.empty()

    def line(self) -> str:
        """Its next line (the hub runs meanwhile)."""
        until(self.said, "a line from the child")
        return self.lines.get_nowait()

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        try:
            os.kill(self.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def _closed_or_ready(monitor: Any, want: str) -> Callable[[], bool]:
    def seen() -> bool:
        closed, ready, _ = connection_events(monitor)
        return bool(closed if want == "closed" else ready)
    return seen


def test_a_frozen_subscriber_is_dropped_by_the_stream_and_what_was_queued_for_it_freed(children) -> None:
    """Fault: the node a replication stream publishes to is frozen. Its
    connection is dropped once it stops answering heartbeats, so the 300
    large messages published after the freeze are not all kept for it (the
    kernel's buffers take a few); thawed, it connects again and hears the
    stream (a gap it resyncs on, in a node)."""
    sockets = SocketFactory(green=False)
    bind = f"tcp://127.0.0.1:{free_port()}"
    publisher = ZmqStreamPublisher(sockets, "a", bind, heartbeat_ms=HEARTBEAT_MS)
    monitor = sockets.connection_monitor(publisher.pub, ready=True)
    child = Child(f"""
        import zmq
        sub = zmq.Context().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, {topic("b")!r})
        sub.setsockopt(zmq.RCVHWM, 10)
        sub.connect({bind!r})
        large = probed = 0
        while True:
            frames = sub.recv_multipart()
            if frames[1] == b"end":
                print(large, flush=True)
                break
            if frames[1] == b"probe" and not probed:
                probed = 1
                print("subscribed", flush=True)
            large += len(frames[1]) > 1000
    """)
    children.append(child)
    try:
        until(_closed_or_ready(monitor, "ready"), "the subscriber's handshake")

        def subscribed() -> bool:      # its subscription reached the publisher: messages are queued for it
            publisher.pub.send_multipart([topic("b"), b"probe"])
            return child.said()
        until(subscribed, "the subscriber hearing the stream")
        assert child.line() == "subscribed"
        child.freeze()
        for _ in range(300):
            publisher.pub.send_multipart([topic("b"), LARGE])
        until(_closed_or_ready(monitor, "closed"), "the frozen subscriber's connection dropped")
        child.thaw()
        until(_closed_or_ready(monitor, "ready"), "the thawed subscriber back")

        def ended() -> bool:
            publisher.pub.send_multipart([topic("b"), b"end"])   # it may miss the first after connecting
            return child.said()
        until(ended, "the thawed subscriber hearing the stream")
        heard = int(child.line())
        assert heard < 300, f"the subscriber got all {heard} large messages: none were dropped for it"
    finally:
        publisher.close()
        monitor.close(0)
        sockets.close()


def test_a_request_to_a_frozen_peer_ends_when_its_connection_is_dropped(children) -> None:
    """Fault: a peer node freezes with a request of ours unanswered (a
    REPLICATE with a task's body, say). Its connection is dropped once it
    stops answering heartbeats: the request ends then (``on_lost``), not
    after its 60 s timeout, and what was queued for the peer goes with the
    connection; thawed, the peer is linked to again and gets our requests."""
    supervisor = Supervisor("frozen peer test", on_fatal=lambda name, exc: pytest.fail(f"{name} died"))
    sockets = SocketFactory()
    link = PeerEndpoint(sockets, supervisor, "me", f"tcp://127.0.0.1:{free_port()}", heartbeat_ms=HEARTBEAT_MS)
    child = Child("""
        import msgpack, zmq
        router = zmq.Context().socket(zmq.ROUTER)
        print(router.bind_to_random_port("tcp://127.0.0.1"), flush=True)
        while True:          # each request's marker
            ids = msgpack.unpackb(router.recv_multipart()[-1])["ids"]
            print(ids[0] if len(ids[0]) < 100 else "large", flush=True)
    """)
    children.append(child)
    try:
        link.start()
        link.connect({"frozen": f"tcp://127.0.0.1:{child.line()}"})

        def delivered(marker: str) -> Callable[[], bool]:
            def asked() -> bool:   # IMMEDIATE: a request goes once the handshake is over
                link.request("frozen", b"QUERY", {"ids": [marker]}, 60.0, lambda answer: None)
                return child.said()
            return asked
        until(delivered("hello"), "the link up")
        child.freeze()
        lost: list[str] = []
        assert link.request("frozen", b"QUERY", {"ids": ["t1"]}, 60.0, lambda answer: lost.append("timeout"),
                            on_lost=lambda: lost.append("lost"))
        for _ in range(200):
            link.request("frozen", b"QUERY", {"ids": ["t" * 100_000]}, 60.0, lambda answer: None)
        until(lambda: lost, "the request to the frozen peer ended")
        assert lost == ["lost"]
        child.thaw()
        heard: list[str] = []

        def after_heard() -> bool:
            link.request("frozen", b"QUERY", {"ids": ["after"]}, 60.0, lambda answer: None)
            while child.said():
                heard.append(child.lines.get_nowait())
            return "after" in heard
        until(after_heard, "a request reaching the thawed peer")
        # What the kernel's buffers held when the connection was dropped still
        # arrives; what ZeroMQ held for the peer does not.
        assert heard.count("large") < 200, f"the thawed peer got all {heard.count('large')} large requests"
    finally:
        supervisor.kill()
        link.close()
        sockets.close()


def test_a_client_drops_a_frozen_node_and_its_request_fails_at_once(procs, client_for) -> None:
    """Fault: the node a client talks to freezes (or its host vanishes
    without closing the connection). The client's heartbeats go unanswered
    for its ``heartbeat_timeout`` (1 s here), the connection is dropped, and
    a request waiting on it fails with ``Unavailable`` then -- not with
    ``Timeout`` after its 30 s (before: the connection stayed open until the
    kernel gave up, minutes). Thawed, the node is used again."""
    node = procs.node()
    client = client_for(node.endpoint, request_timeout=30, heartbeat_timeout=1.0)
    assert client.status()["node"]
    node.signal(signal.SIGSTOP)
    try:
        with pytest.raises(miyaq.Unavailable):
            client.status()
    finally:
        node.signal(signal.SIGCONT)
    wait_for(lambda: _answers(client), timeout=30, what="the thawed node answering again")


def _answers(client: miyaq.Client) -> bool:
    try:
        return bool(client.request(c.STATUS, {}, timeout=2)["node"])
    except (miyaq.Unavailable, miyaq.Timeout):
        return False
