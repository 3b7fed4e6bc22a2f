"""A socket's monitor closed while the socket lives must not wedge the
process's ZeroMQ I/O thread (miyaq.runtime.socket_monitors.quiet_monitor).

libzmq sends a monitor's events from the context's I/O thread and waits for
room. A node that closed a peer DEALER's monitor before the DEALER (the
peer link retiring a member's channels, as the member restarted) could have
the DEALER's next event -- its connection closing -- sent to a monitor
nobody reads: the I/O thread blocked for good, every socket of the node
silent (workers and peers dropped it after their heartbeat timeout, every
handshake with it failed after 30 s). A chaos run saw it (2026-12-06,
seed 1091431659: n2 heard no one for the last 60 s). Now the socket stops
sending events (``disable_monitor``) before its monitor is closed.
"""
from __future__ import annotations

import time
from typing import Any

import pytest
import zmq

from hub_waits import until
from miyaq.cluster import peer as peer_module
from miyaq.cluster.peer import PeerEndpoint
from miyaq.runtime import Supervisor
from miyaq.runtime.socket_monitors import quiet_monitor
from miyaq.runtime.sockets import SocketFactory
from miyaq.testing.harness import free_port

pytestmark = pytest.mark.timeout(60)

EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def _moves_a_message(ctx: zmq.Context) -> bool:
    """Can ``ctx`` still carry a message over TCP (a fresh ROUTER/DEALER pair)?"""
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        router.linger = dealer.linger = 0
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"ping")
        return bool(router.poll(3000))
    finally:
        router.close(0)
        dealer.close(0)


def test_a_monitor_closed_after_quiet_monitor_leaves_the_io_thread_running() -> None:
    """Fault: a DEALER's monitor is closed while the DEALER lives, then its
    peer goes away (the DEALER's engine reports DISCONNECTED). With the
    socket quieted first the context still carries messages. (Without it
    libzmq blocked its I/O thread on that event: 6 of 6 runs, /tmp/wedge.)"""
    ctx = zmq.Context()
    peer_ctx = zmq.Context()
    server = peer_ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    server.linger = dealer.linger = 0
    port = server.bind_to_random_port("tcp://127.0.0.1")
    monitor = dealer.get_monitor_socket(EVENTS, addr=f"inproc://wedge-{free_port()}")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hello")
    assert server.poll(3000), "no connection"
    server.recv_multipart()
    quiet_monitor(dealer)
    monitor.close(0)
    time.sleep(0.2)
    server.close(0)                  # the peer goes away
    time.sleep(0.5)
    try:
        assert _moves_a_message(ctx), "the context's I/O thread is blocked"
    finally:
        dealer.close(0)
        ctx.term()
        peer_ctx.term()
    quiet_monitor(dealer)            # closed: left as it is, no error


def test_a_retired_peer_link_quiets_its_dealers_before_their_monitors_close(monkeypatch) -> None:
    """The peer link retires a member's channels when it leaves the ring or
    restarts (``fresh``): each DEALER is quieted when it is retired, before
    the answer reader closes its monitor; and at the link's close."""
    quieted: list[Any] = []
    real = peer_module.quiet_monitor
    monkeypatch.setattr(peer_module, "quiet_monitor", lambda sock: (quieted.append(sock), real(sock)))
    supervisor = Supervisor("peer test", on_fatal=lambda name, exc: pytest.fail(f"{name} died"))
    sockets = SocketFactory()
    link = PeerEndpoint(sockets, supervisor, "me", f"tcp://127.0.0.1:{free_port()}")
    try:
        link.start()
        link.connect({"a": f"tcp://127.0.0.1:{free_port()}", "b": f"tcp://127.0.0.1:{free_port()}"})
        old = list(link.links["a"].dealers.values())
        link.connect({"a": link.links["a"].endpoint, "b": link.links["b"].endpoint}, fresh={"a"})
        assert quieted == old
        until(lambda: not link._retired, "the answer reader to close the retired sockets")
        kept = list(link.links["b"].dealers.values()) + list(link.links["a"].dealers.values())
    finally:
        supervisor.kill()
        link.close()
        sockets.close()
    assert quieted[len(old):] == kept or sorted(map(id, quieted[len(old):])) == sorted(map(id, kept))


def test_a_worker_link_quiets_its_socket_before_its_monitor_closes(monkeypatch, node, client, thread_worker) -> None:
    """The worker's link to a node closes its socket and monitor when the
    worker stops, when the link is retired and before each reconnect (a
    fresh socket). The same hazard as the peer link's: the socket is
    quieted first, while its monitor is still open, so an event of the
    closing connection is never sent to a monitor nobody reads."""
    from apps import basic
    from miyaq.worker import link_socket
    seen: list[tuple[Any, bool]] = []
    real = link_socket.quiet_monitor

    def record(sock: Any) -> None:
        link = next(link for link in w.links if link.sock is not None and link.sock.sock is sock)
        seen.append((sock, not link.monitor.closed))
        real(sock)

    monkeypatch.setattr(link_socket, "quiet_monitor", record, raising=False)
    tw = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1)
    w = tw.worker
    assert client.call("add", [2, 3], timeout=20) == 5
    raw = w.links[0].sock.sock
    tw.stop()
    assert seen == [(raw, True)], "the link's socket was not quieted before its monitor closed"
