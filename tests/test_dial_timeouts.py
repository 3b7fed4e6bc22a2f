"""Every connecting socket of a node, a worker and a client gives up a TCP
connect attempt after its heartbeat timeout, and the stream's SUB has
heartbeats of its own (miyaq.runtime.sockets, ``_dial_timeout``).

Fault these guard against: a partition healed, and the links stayed silent
for seconds after it. A connection dropped by its heartbeat during a
partition is dialled again while the other host cannot be reached, and
that connect waited on the kernel's SYN backoff (1, 3, 7, 15, 31 s... on
most kernels): a peer link crossed again up to about the partition's length
after the heal. The SUB sent no heartbeats: a connection the publisher
dropped during the partition stayed open on the SUB's side until the
publisher's kernel resent its FIN at a doubling timeout (6.4 s after a 20 s
partition, 2026-12-07: docs/operations.md, "After a partition heals").
The options are read back from the sockets each part really makes;
tests/test_partition_heal_netns.py shows a link crossing again after a
healed partition. A client's connections: tests/test_client_arguments.py,
``test_heartbeat_timeout_sets_each_connections_zmtp_heartbeats``.
"""
from __future__ import annotations

import pytest
import zmq as plain_zmq

from miyaq.cluster.peer import PeerEndpoint
from miyaq.cluster.zmq_transport import ZmqTransport
from miyaq.runtime import Supervisor
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.testing.harness import free_port

pytestmark = pytest.mark.timeout(60)


def _dialling(sock: object) -> tuple[int, int, int]:
    """(HEARTBEAT_IVL, HEARTBEAT_TIMEOUT, CONNECT_TIMEOUT) of ``sock``."""
    return tuple(sock.getsockopt(o) for o in (zmq.HEARTBEAT_IVL, zmq.HEARTBEAT_TIMEOUT,  # type: ignore[attr-defined]
                                              zmq.CONNECT_TIMEOUT))


@pytest.fixture
def transport():
    """A ZmqTransport's parts, closed after the test: (make(timeout), opened)."""
    sockets = SocketFactory()
    supervisor = Supervisor("dial test")
    opened: list = []

    def make(timeout: float) -> ZmqTransport:
        return ZmqTransport(sockets, supervisor, f"tcp://127.0.0.1:{free_port()}",
                            f"tcp://127.0.0.1:{free_port()}", heartbeat_timeout=timeout)
    yield make, opened
    for part in opened:
        part.close()
    supervisor.kill()
    sockets.close()


@pytest.mark.parametrize("timeout", [5.0, 20.0])
def test_a_node_s_peer_links_give_up_a_connect_after_the_peer_heartbeat_timeout(transport, timeout):
    """Both DEALERs to a member (bulk and control) abandon a connect attempt
    after ``peer_heartbeat_timeout``."""
    make, opened = transport
    peer = make(timeout).peer_link("me")
    opened.append(peer)
    peer.connect({"p1": f"tcp://127.0.0.1:{free_port()}"})
    ms = round(timeout * 1000)
    assert _dialling(peer.dealers["p1"]) == _dialling(peer.controls["p1"]) == (ms // 5, ms, ms)


@pytest.mark.parametrize("timeout", [5.0, 20.0])
def test_a_node_s_stream_sub_has_heartbeats_and_gives_up_a_connect_after_a_stream_s_silence(transport, timeout):
    """The stream's SUB pings its publishers and drops a connection silent
    for a stream's silence (``peer_heartbeat_timeout`` + 1 s: no shorter
    than what a stream message may take to cross, so a slow link keeps it),
    and abandons a connect attempt after as long."""
    make, opened = transport
    sub = make(timeout).subscriber("me", lambda src, events: None, lambda src, number: None)
    opened.append(sub)
    sub.connect({"p1": f"tcp://127.0.0.1:{free_port()}"})
    silence = round(timeout * 1000) + 1000
    assert _dialling(sub.sub.sock) == (silence // 5, silence, silence)


def test_a_peer_endpoint_made_without_a_transport_dials_with_the_default_timeout():
    """A PeerEndpoint's default heartbeats (5 s) bring the same connect timeout."""
    sockets = SocketFactory()
    me = PeerEndpoint(sockets, Supervisor("dial test"), "me", f"tcp://127.0.0.1:{free_port()}")
    try:
        me.connect({"p1": f"tcp://127.0.0.1:{free_port()}"})
        assert _dialling(me.dealers["p1"]) == (1000, 5000, 5000)
    finally:
        me.close()
        sockets.close()


def test_a_worker_s_link_gives_up_a_connect_after_its_node_timeout(thread_worker, node):
    """``--node-timeout`` is the link's heartbeat timeout and its connect timeout."""
    from apps import basic
    from miyaq.testing.harness import wait_for
    worker = thread_worker(basic.app, node.endpoint, node_timeout=12.0).worker
    link = worker.links[0]
    wait_for(lambda: link.heard, what="the worker registered")
    assert _dialling(link.sock.sock) == (2400, 12000, 12000)
    assert worker.pulse.heartbeat_ms == (2400, 12000)      # its heartbeat thread's sockets: below


def test_a_worker_s_heartbeat_thread_dials_each_node_with_heartbeats_of_its_node_timeout(monkeypatch):
    """The side heartbeats' DEALER to each node (a thread's own socket,
    ``miyaq.worker.pulse``) has ZMTP heartbeats of ``node_timeout`` and gives
    up a connect after it. Fault: it had neither; after a partition longer
    than the node's patience its beats crossed again only at TCP's next
    retransmission, as late after the heal as the partition had lasted."""
    from miyaq.testing.harness import wait_for
    from miyaq.worker.pulse import Pulse
    router = plain_zmq.Context.instance().socket(plain_zmq.ROUTER)
    router.setsockopt(plain_zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    pulse = Pulse("w-dial", [endpoint], 0.02, node_timeout=7.0)
    real_dealer = pulse.factory.dealer
    made: list[tuple[int, int, int]] = []

    def dealer(connect: str, **options: object) -> object:
        sock = real_dealer(connect, **options)
        made.append(_dialling(sock))        # in the thread that owns the socket
        return sock

    monkeypatch.setattr(pulse.factory, "dealer", dealer)
    try:
        pulse.start()
        wait_for(lambda: made, what="the heartbeat thread's socket")
        assert made == [(1400, 7000, 7000)]
        wait_for(lambda: router.poll(0), what="a side heartbeat at the node")
    finally:
        pulse.stop()
        router.close(0)


def test_a_socket_without_heartbeats_keeps_the_kernel_s_connect_timeout():
    """No heartbeat, no limit of the factory's own (a worker's processes'
    ``ipc://`` links, the bench's sockets): CONNECT_TIMEOUT stays libzmq's 0."""
    sockets = SocketFactory(green=False)
    try:
        dealer = sockets.dealer(f"tcp://127.0.0.1:{free_port()}")
        sub = sockets.subscriber([b"t"])
        assert dealer.getsockopt(zmq.CONNECT_TIMEOUT) == sub.getsockopt(zmq.CONNECT_TIMEOUT) == 0
        assert sub.getsockopt(zmq.HEARTBEAT_IVL) == 0
    finally:
        sockets.close()
