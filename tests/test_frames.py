"""Frame-by-frame sends and reads (:func:`miyaq.runtime.messages.send_frames`,
:func:`~miyaq.runtime.messages.recv_frames`): the same outcome as
``send_multipart(frames, NOBLOCK)`` and ``recv_multipart(flags)``, failures
included -- a refused message leaves nothing half-sent on the socket; and a
libzmq delivery fact the clients and peer links rely on."""
from __future__ import annotations

import time

import pytest
import zmq

from miyaq.runtime.messages import recv_frames, send_frames


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _router_and_dealer(ctx: zmq.Context, hwm: int = 1000) -> tuple[zmq.Socket, zmq.Socket, bytes]:
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, hwm)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVHWM, hwm)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hello")
    assert router.poll(5000)
    identity, _ = router.recv_multipart()
    return router, dealer, identity


def test_a_message_arrives_whole_and_in_order(ctx):
    router, dealer, identity = _router_and_dealer(ctx)
    send_frames(router, [identity, b"MQ1", b"TASK", b"x" * 100])
    send_frames(router, [identity, b"one frame"])
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"MQ1", b"TASK", b"x" * 100]
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"one frame"]


def test_a_ctrl_c_between_two_frames_ends_the_message_so_the_next_one_stands_alone(ctx, monkeypatch):
    """Fault (an audit, a client interrupted with Ctrl-C in a stress loop): a
    KeyboardInterrupt raised after a message's first frames were queued and
    before its last. The message stayed open and the socket glued the next
    one onto it: the node got 5 frames and dropped both. Now the interrupted
    message is ended at once (an empty last frame: the peer refuses that one)
    and the next arrives whole."""
    from miyaq.runtime import messages
    router, dealer, identity = _router_and_dealer(ctx)
    real = messages._backend_send
    calls = []

    def interrupted_third_frame(sock, frame, flags):
        calls.append(frame)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(sock, frame, flags)

    monkeypatch.setattr(messages, "_backend_send", interrupted_third_frame)
    with pytest.raises(KeyboardInterrupt):
        send_frames(router, [identity, b"MQ1", b"TASK", b"cut"])
    monkeypatch.setattr(messages, "_backend_send", real)
    send_frames(router, [identity, b"MQ1", b"TASK", b"whole"])
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"MQ1", b""]
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"MQ1", b"TASK", b"whole"]


def test_a_message_to_a_peer_that_is_gone_raises_and_leaves_nothing_behind(ctx):
    """Fault: a ROUTER_MANDATORY send to an unknown routing id (a client that
    went away). The first frame is refused; the next message to a peer that is
    there arrives intact, with no stray frames of the refused one before it."""
    router, dealer, identity = _router_and_dealer(ctx)
    with pytest.raises(zmq.ZMQError) as err:
        send_frames(router, [b"nobody", b"MQ1", b"REPLY", b"lost"])
    assert err.value.errno == zmq.EHOSTUNREACH
    send_frames(router, [identity, b"MQ1", b"REPLY", b"kept"])
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"MQ1", b"REPLY", b"kept"]


def test_a_full_peer_raises_again_and_takes_later_messages_whole(ctx):
    """Fault: the peer does not read and its queue is at the high-water mark.
    The send raises ``zmq.Again`` like ``send_multipart(..., NOBLOCK)``; once
    the peer read, whole messages go through again."""
    router, dealer, identity = _router_and_dealer(ctx, hwm=10)
    sent = 0
    with pytest.raises(zmq.Again):
        for sent in range(10_000):      # bounded: the queues hold tens of messages at most
            send_frames(router, [identity, b"MQ1", str(sent).encode()])
    got = []
    while dealer.poll(500):
        got.append(dealer.recv_multipart())
    assert got == [[b"MQ1", str(i).encode()] for i in range(sent)]
    send_frames(router, [identity, b"MQ1", b"after"])
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"MQ1", b"after"]


def test_recv_frames_reads_each_message_whole_and_only_it(ctx):
    """Messages of several frames, one frame and an empty frame, sent back to
    back: each read returns exactly the frames of one message, in order --
    none of the next message's frames mixed in."""
    router, dealer, identity = _router_and_dealer(ctx)
    messages = [[b"MQ1", b"TASK", b"x" * 100], [b"one frame"], [b"MQ1", b"", b"after an empty frame"]]
    for frames in messages:
        send_frames(router, [identity, *frames])
    got = []
    for _ in messages:
        assert dealer.poll(5000)
        got.append(recv_frames(dealer, zmq.NOBLOCK))
    assert got == messages
    assert all(type(frame) is bytes for frames in got for frame in frames)


def test_recv_frames_without_a_message_raises_again(ctx):
    """Fault: nothing waits on the socket. With NOBLOCK the read raises
    ``zmq.Again`` like ``recv_multipart(NOBLOCK)`` and consumes nothing: the
    message sent next is read whole."""
    router, dealer, identity = _router_and_dealer(ctx)
    with pytest.raises(zmq.Again):
        recv_frames(dealer, zmq.NOBLOCK)
    send_frames(router, [identity, b"MQ1", b"REPLY", b"late"])
    assert dealer.poll(5000)
    assert recv_frames(dealer, zmq.NOBLOCK) == [b"MQ1", b"REPLY", b"late"]
    with pytest.raises(zmq.Again):
        recv_frames(dealer, zmq.NOBLOCK)


def test_an_immediate_dealer_drops_replies_it_had_not_read_when_its_connection_closes(ctx):
    """A libzmq fact miyaq's clients and peer links are built on: a DEALER
    with IMMEDIATE (every client socket, every peer link) drops what a
    connection delivered but was not read yet when that connection closes.
    So once a connection closed, whatever was not answered on it never will
    be, and the client resends or fails it at once (docs/semantics.md).
    Without IMMEDIATE the same replies are still read."""
    got = {}
    for immediate in (0, 1):
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IMMEDIATE, immediate)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hello")
        assert router.poll(5000)
        peer, _ = router.recv_multipart()
        for i in range(3):
            router.send_multipart([peer, b"reply %d" % i])
        assert dealer.poll(5000)          # delivered: the first can be read now
        router.close(linger=5000)         # the others leave too, then the connection closes
        time.sleep(0.3)                   # let the close reach the dealer (not a timing assertion)
        got[immediate] = []
        while dealer.poll(100):
            got[immediate].append(dealer.recv())
        dealer.close()
    assert got[0] == [b"reply 0", b"reply 1", b"reply 2"]
    assert got[1] == []
