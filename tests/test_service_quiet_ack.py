"""A producer's acknowledgement does not wait for another producer's batches
read after it in the same burst of the node's service reader (the noisy
neighbours audit, 2026-12-06): a connection's first SUBMIT of a burst is
answered once it is handled, its later ones at the burst's end.

The node's hub is held while the messages arrive, so that one burst reads
them all; the burst is bounded by its work only (its time slice is turned
off: on a loaded machine it would end the burst at a moment no test can
choose). What is counted is the tasks the node handled in that burst
before the quiet producer's SUBMITTED was sent."""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import zmq
from gateway_harness import NodeThread

from miyaq.constants import SERVICE_BURST_WORK
from miyaq.protocol import codec
from miyaq.protocol import commands as c

pytestmark = pytest.mark.timeout(60)

BATCH = 256
BATCHES = SERVICE_BURST_WORK // BATCH     # the neighbour's messages: one burst's work, whole


def submit_frames(count: int) -> list[bytes]:
    tasks = [{"id": uuid.uuid4().hex, "name": "job", "queue": "bulk", "body": b"\x92\x90\x80"} for _ in range(count)]
    return [c.TAG, c.SUBMIT, codec.pack({"tasks": tasks})]


def dealer(ctx: zmq.Context, node: NodeThread, name: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, name)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(f"tcp://127.0.0.1:{node.config.port}")
    sock.send_multipart([c.TAG, c.STATUS, codec.pack({"req": 1})])    # connected and known to the node
    assert sock.recv_multipart()[1] == c.REPLY
    return sock


def submitted(sock: zmq.Socket, expected: int) -> list[int]:
    """Read SUBMITTED messages until ``expected`` results came; the count of each message."""
    counts: list[int] = []
    while sum(counts) < expected:
        frames = sock.recv_multipart()
        assert frames[1] == c.SUBMITTED, frames
        results = codec.unpack(frames[2])["results"]
        assert all(r[1] == c.ACCEPTED for r in results), results
        counts.append(len(results))
    return counts


@pytest.fixture()
def node():
    node = NodeThread(heartbeat=60.0)
    try:
        yield node
    finally:
        node.stop()


def test_a_quiet_submit_is_answered_before_the_rest_of_a_neighbours_burst(node):
    """Fault: a neighbour's connection has a whole burst of batches waiting
    (8 SUBMITs of 256 tasks) when a quiet producer's one-task SUBMIT comes.
    The reader takes them in turns (libzmq's fair queue), so the quiet one
    is read first or second -- and before, its SUBMITTED left with every
    other acknowledgement at the burst's end, after all 2,049 tasks were
    handled. Now it leaves once its own message is handled: after at most
    the one batch read before it. The neighbour's tasks are all accepted,
    in two SUBMITTED (its first message's, then the rest's) instead of one."""
    endpoint = node.node.core.endpoint      # type: ignore[union-attr]
    seen: dict[str, Any] = {}

    def install() -> None:
        endpoint.sock.turn_over = lambda: False      # the burst ends on its work alone
        send = endpoint._send

        def probe(identity: bytes, command: bytes, packed: bytes) -> bool:
            if identity == b"quiet" and command == c.SUBMITTED:
                seen.setdefault("work", endpoint.work)
            return send(identity, command, packed)

        endpoint._send = probe

    node.call(install)
    ctx = zmq.Context()
    try:
        neighbour = dealer(ctx, node, b"neighbour")
        quiet = dealer(ctx, node, b"quiet")
        holding = threading.Thread(target=node.call, args=(lambda: time.sleep(0.5),))
        holding.start()
        time.sleep(0.1)                  # the node's hub is held: what comes waits to be read in one burst
        for _ in range(BATCHES):
            neighbour.send_multipart(submit_frames(BATCH))
        quiet.send_multipart(submit_frames(1))
        holding.join()
        assert submitted(quiet, 1) == [1]
        counts = submitted(neighbour, BATCHES * BATCH)
    finally:
        ctx.destroy(linger=0)
    assert seen["work"] <= BATCH + 1, f"the quiet SUBMITTED waited for {seen['work']} tasks of the burst"
    assert len(counts) <= 2, counts
