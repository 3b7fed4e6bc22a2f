"""What a connection can make a node hold before the node reads it.

Fault simulated: a client (or, at the peer port, a stranger or a buggy
peer) sends faster than the node handles what it sends -- bodies that take
longer to decode than to send, or a node busy elsewhere. libzmq reads each
connection ahead of the application up to the socket's receive high-water
mark, a count of messages: at the 100,000 of the other sockets, one
connection sending 14 MiB bodies held 3.5 GB in a node within seconds
(measured, 2026-12-04). A node's service and peer ports now set the count
from a byte budget (``miyaq.runtime.sockets.INBOUND_QUEUE_BYTES``): past it
libzmq stops reading that connection and TCP holds the sender back, and
nothing is lost -- every message arrives once the node reads again.

The budget is made small here (32 MiB, messages of 1 MiB) so the test
sends tens of messages, not a gigabyte.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import pytest
import zmq

import miyaq.runtime.sockets as sockets_module
from miyaq.cluster.peer import PeerEndpoint
from miyaq.core.service import ServiceEndpoint
from miyaq.protocol import commands as c
from miyaq.runtime import Supervisor
from miyaq.runtime.sockets import SocketFactory
from miyaq.testing.ports import free_port

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
#: Messages the kernel's socket buffers of one loopback connection may hold
#: besides the node's queue (a few MiB each way) and the sender's one.
IN_THE_KERNEL = 24
STALLED = 2.0     # seconds without a send going through: the sender is held back
SEND_AT_MOST = 200


def _service(sockets: SocketFactory, bind: str) -> tuple[Any, Callable[[], None]]:
    endpoint = ServiceEndpoint(sockets, bind)
    return endpoint.sock.sock, endpoint.close


def _peer(sockets: SocketFactory, bind: str) -> tuple[Any, Callable[[], None]]:
    supervisor = Supervisor("inbound queue test", on_fatal=lambda name, exc: pytest.fail(f"{name} died"))
    endpoint = PeerEndpoint(sockets, supervisor, "me", bind)
    return endpoint.router.sock, endpoint.close


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets_module, "INBOUND_QUEUE_BYTES", 32 * MiB)
    monkeypatch.setattr(sockets_module, "MIN_INBOUND_HWM", 4)


def _flood(endpoint: str, body: bytes) -> tuple[zmq.Context, zmq.Socket, int]:
    """Send ``[TAG, SUBMIT, body]`` until the node's side stops taking them
    (nothing goes through for ``STALLED`` seconds) or ``SEND_AT_MOST`` went."""
    ctx = zmq.Context()
    sender = ctx.socket(zmq.DEALER)
    sender.setsockopt(zmq.LINGER, 0)
    sender.setsockopt(zmq.SNDHWM, 1)
    sender.connect(endpoint)
    sent, last = 0, time.monotonic()
    while sent < SEND_AT_MOST and time.monotonic() - last < STALLED:
        try:
            sender.send_multipart([c.TAG, c.SUBMIT, body], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            time.sleep(0.01)
            continue
        sent += 1
        last = time.monotonic()
    return ctx, sender, sent


@pytest.mark.parametrize("make", [_service, _peer], ids=["service port", "peer port"])
def test_a_connection_flooding_a_port_is_held_back_and_loses_nothing(small_budget: None, make: Any) -> None:
    sockets = SocketFactory(max_message=MiB)
    bind = f"tcp://127.0.0.1:{free_port()}"
    router, close = make(sockets, bind)
    assert router.getsockopt(zmq.RCVHWM) == sockets.inbound_hwm == 32 * MiB // sockets.frame_limit
    ctx, sender, sent = _flood(bind, bytes(MiB - 64))
    try:
        # Before: every one of the 200 messages (200 MiB) was taken into the node.
        assert sockets.inbound_hwm <= sent <= sockets.inbound_hwm + IN_THE_KERNEL, sent
        received, deadline = 0, time.monotonic() + 30
        while received < sent and time.monotonic() < deadline:
            if router.poll(100):
                frames = router.recv_multipart()
                assert frames[1:3] == [c.TAG, c.SUBMIT] and len(frames[3]) == MiB - 64
                received += 1
        assert received == sent
    finally:
        ctx.destroy(linger=0)
        close()
        sockets.close()


def test_the_budget_counts_messages_of_the_largest_size_and_never_fewer_than_the_floor() -> None:
    """The count the ports use: the budget over the largest frame, at least
    ``MIN_INBOUND_HWM`` (so pipelined small messages keep their pace), at
    most the other sockets' 100,000."""
    budget, floor = sockets_module.INBOUND_QUEUE_BYTES, sockets_module.MIN_INBOUND_HWM
    for max_message, expected in ((16 * MiB, max(floor, budget // (16 * MiB + sockets_module.FRAME_SLACK))),
                                  (MiB, budget // (MiB + sockets_module.FRAME_SLACK)),
                                  (256, sockets_module.HWM),
                                  (512 * MiB, floor)):
        sockets = SocketFactory(green=False, max_message=max_message)
        try:
            assert sockets.inbound_hwm == expected, max_message
        finally:
            sockets.close()
