"""The hub-driven plain socket (:class:`miyaq.runtime.hub_socket.HubSocket`) and
the descriptor waiter under it (:class:`miyaq.runtime.green.FdWait`): a
reader greenlet parks only while nothing can be read, wakes for messages,
for a send from another greenlet that consumed ZeroMQ's signal, on its
timeout and on close."""
from __future__ import annotations

import os
from typing import Any, Callable
import time

import pytest

from miyaq.runtime import Supervisor, green
from miyaq.runtime.messages import recv_frames, send_frames
from miyaq.runtime.sockets import SocketFactory, zmq


@pytest.fixture
def pair():
    factory = SocketFactory(green=True)
    router = factory.hub_router("tcp://127.0.0.1:0")
    endpoint = router.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    dealer = factory.hub_dealer(endpoint)
    yield router, dealer
    factory.close()


def test_messages_cross_both_ways(pair):
    router, dealer = pair
    dealer.send([b"ping"])
    (identity, body), user = router.recv()
    assert body == b"ping" and user is None
    router.send([identity, b"pong"])
    assert dealer.recv() == ([b"pong"], None)
    assert router.recv_nowait() is None and dealer.recv_nowait() is None


def test_recv_times_out_with_none(pair):
    router, _ = pair
    assert router.recv(0.05) is None


def test_a_parked_reader_gets_every_message_while_others_send_on_its_socket(pair):
    """Fault: sends from other greenlets process ZeroMQ's commands and may
    consume the descriptor's signal meant for the parked reader; every
    message must still arrive."""
    router, dealer = pair
    sup = Supervisor("test")
    got: list[bytes] = []
    n = 300

    def reader() -> None:
        while len(got) < n:
            (identity, body), _ = router.recv()
            got.append(body)
            router.send([identity, b"ack"])

    def writer() -> None:
        for i in range(n):
            dealer.send([str(i).encode()])
            if i % 7 == 0:
                green.sleep(0)

    sup.spawn("reader", reader)
    sup.spawn("writer", writer)
    acks = 0
    while acks < n:
        frames = dealer.recv(5.0)
        assert frames is not None, f"stalled after {len(got)} messages"
        acks += 1
    assert got == [str(i).encode() for i in range(n)]
    sup.kill()


def test_close_wakes_a_parked_reader(pair):
    router, _ = pair
    sup = Supervisor("test")
    outcome: list[str] = []

    def reader() -> None:
        try:
            router.recv()
            outcome.append("message")
        except zmq.ZMQError:
            outcome.append("closed")

    sup.spawn("reader", reader)
    green.sleep(0.01)
    router.close()
    for _ in range(100):
        if outcome:
            break
        green.sleep(0.01)
    assert outcome == ["closed"]


def test_fd_wait_wakes_on_data_on_wake_and_times_out():
    r, w = os.pipe()
    try:
        waiter = green.FdWait(r)
        assert waiter.wait(0.01) is False and not waiter.waiting
        os.write(w, b"x")
        assert waiter.wait(1.0) is True
        os.read(r, 1)
        sup = Supervisor("test")
        sup.spawn("waker", waiter.wake)
        assert waiter.wait(1.0) is True
        waiter.close()
    finally:
        os.close(r)
        os.close(w)


def test_a_parked_subscriber_gets_every_message_while_others_connect_and_disconnect_it():
    """Fault: another greenlet connects the parked reader's SUB to a new
    publisher and disconnects it (a ring change) while messages arrive; those
    operations may consume the descriptor's signal meant for the reader.
    Every message must still arrive, each within a bounded wait."""
    factory = SocketFactory(green=True)
    try:
        pub = factory.publisher("tcp://127.0.0.1:0", plain=True)
        endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        other = factory.publisher("tcp://127.0.0.1:0", plain=True)
        other_endpoint = other.getsockopt(zmq.LAST_ENDPOINT).decode()
        sub = factory.hub_subscriber([b"t"], max_frames=2)
        sub.connect(endpoint)
        for _ in range(200):         # the subscription reaches the PUB (slow joiner), bounded
            pub.send_multipart([b"t", b"hello"])
            if sub.recv(0.05) is not None:
                break
        else:
            raise AssertionError("the subscription never reached the publisher")
        while sub.recv_nowait() is not None:
            pass
        sup = Supervisor("test")
        n = 200

        def churn() -> None:
            for _ in range(n):
                sub.connect(other_endpoint)
                green.sleep(0)
                sub.disconnect(other_endpoint)
                green.sleep(0)

        def writer() -> None:
            for i in range(n):
                pub.send_multipart([b"t", str(i).encode()])
                green.sleep(0)

        sup.spawn("churn", churn)
        sup.spawn("writer", writer)
        got = []
        while len(got) < n:
            message = sub.recv(5.0)
            assert message is not None, f"stalled after {len(got)} messages"
            got.append(message[0][1])
        assert got == [str(i).encode() for i in range(n)]
        sup.kill()
    finally:
        factory.close()


def test_has_message_answers_as_zmq_events_does(pair):
    """``has_message`` asks through zmq_poll, not pyzmq's getsockopt: for an
    empty socket, one with a message waiting (as it arrives), and one whose
    last message was read, it answers as ZMQ_EVENTS does."""
    from miyaq.runtime.messages import has_message
    router, dealer = pair

    def events_say(sock) -> bool:
        return bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    assert not has_message(router.sock) and not events_say(router.sock)
    dealer.send([b"one"])
    with green.Timeout(10):
        while not has_message(router.sock):
            green.sleep(0.001)
    assert events_say(router.sock)
    router.recv_nowait()
    assert not has_message(router.sock) and not events_say(router.sock)


def _yield_until(done: Callable[[], bool]) -> None:
    """Let the hub run until ``done()``, for at most 10 s (the test's
    assertions say what was missing)."""
    for _ in range(1000):
        if done():
            return
        green.sleep(0.01)


def test_a_reader_kept_busy_by_its_socket_lets_other_greenlets_run(pair):
    """Fault: a flood -- messages keep waiting on the socket, so its reader
    never has to wait. Another greenlet of the hub (a node's housekeeping,
    its other sockets' readers) must still run while messages are left:
    before, a node under a steady REPLICATE or submit flood ran its reader
    burst after burst (gevent's monitor saw the peer reader hold the hub
    for over 0.2 s in a three-node bench), and housekeeping silent for
    STALL makes a node take itself for frozen. Each message here costs the
    reader 2 ms of blocking work, so 40 of them outlast green.HUB_SLICE
    on any machine."""

    router, dealer = pair
    n = 40
    for i in range(n):
        dealer.send([str(i).encode()])
    while not router.readable():     # every message has arrived before the reader starts
        green.sleep(0.01)
    green.sleep(0.3)
    read: list[int] = []
    other_ran_after: list[int] = []
    sup = Supervisor("test")

    def reader() -> None:
        while len(read) < n:
            (_, body), _ = router.recv()
            busy_until = time.perf_counter() + 0.002
            while time.perf_counter() < busy_until:
                pass                 # work that does not yield (a REPLICATE's records)
            read.append(int(body))

    def other() -> None:
        green.sleep(0)
        other_ran_after.append(len(read))

    sup.spawn("reader", reader)
    sup.spawn("other", other)
    _yield_until(lambda: len(read) == n)
    sup.kill()
    assert read == list(range(n))
    assert other_ran_after and other_ran_after[0] < n, other_ran_after


# -- HubPoller: several plain sockets, one reader ------------------------------------------------
@pytest.fixture
def router_and_dealers():
    factory = SocketFactory(green=True)
    router = factory.hub_router("tcp://127.0.0.1:0")
    endpoint = router.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    dealers = [factory.dealer(endpoint, plain=True) for _ in range(2)]
    yield router, dealers
    factory.close()


def _echo(router, until_closed: list[bool]) -> None:
    while not until_closed:
        message = router.recv(0.05)
        if message is not None:
            (identity, body), _ = message
            router.send([identity, b"re:" + body])


def test_a_hub_poller_reports_the_sockets_with_messages_and_times_out_with_none(router_and_dealers):
    router, (a, b) = router_and_dealers
    poller = SocketFactory.hub_poller()
    poller.register(a)
    poller.register(b)
    assert poller.poll(50) == []
    stop: list[bool] = []
    sup = Supervisor("test")
    sup.spawn("echo", _echo, router, stop)
    send_frames(b, [b"x"])
    poller.recheck(b)
    ready = poller.poll(5000)
    assert [s for s, _ in ready] == [b]
    assert recv_frames(b, zmq.NOBLOCK) == [b"re:x"]
    with pytest.raises(ValueError):
        poller.register(a, zmq.POLLOUT)
    stop.append(True)
    sup.kill()


def test_a_socket_registered_while_the_reader_waits_is_watched_at_once(router_and_dealers):
    """Fault: a peer joins the ring while the answer reader is parked on
    the sockets it had (a 100 ms poll in the node; for ever here): the new
    DEALER's answers must wake it, not wait for its next poll."""
    router, (a, b) = router_and_dealers
    poller = SocketFactory.hub_poller()
    poller.register(a)
    got: list[Any] = []
    stop: list[bool] = []
    sup = Supervisor("test")
    sup.spawn("echo", _echo, router, stop)
    sup.spawn("reader", lambda: got.extend(poller.poll(None)))
    green.sleep(0.05)              # the reader is parked on a alone
    poller.register(b)
    send_frames(b, [b"late"])
    _yield_until(lambda: bool(got))
    stop.append(True)
    sup.kill()
    assert [s for s, _ in got] == [b]


def test_a_parked_poller_gets_every_answer_while_others_send_on_its_sockets(router_and_dealers):
    """Fault: requests leave on the DEALERs from other greenlets while the
    reader is parked; each send may take the descriptor's edge of an answer
    that arrived. With ``recheck`` after each send, every answer is read."""
    router, dealers = router_and_dealers
    poller = SocketFactory.hub_poller()
    for d in dealers:
        poller.register(d)
    n = 300
    got: list[bytes] = []
    stop: list[bool] = []
    sup = Supervisor("test")
    sup.spawn("echo", _echo, router, stop)

    def reader() -> None:
        while len(got) < n:
            for sock, _ in poller.poll(None):
                while True:
                    try:
                        got.append(recv_frames(sock, zmq.NOBLOCK)[0])
                    except zmq.Again:
                        break

    def writer() -> None:
        for i in range(n):
            sock = dealers[i % 2]
            send_frames(sock, [str(i).encode()])
            poller.recheck(sock)
            if i % 7 == 0:
                green.sleep(0)

    sup.spawn("reader", reader)
    sup.spawn("writer", writer)
    _yield_until(lambda: len(got) == n)
    stop.append(True)
    sup.kill()
    assert sorted(got) == sorted(b"re:" + str(i).encode() for i in range(n))
