"""Connections below the message level that must not stop a node: a peer
that speaks ZMTP 1.0 (libzmq's reading of any first byte other than 0xFF),
and peers that choose routing ids libzmq would give to the next anonymous
connection (docs/security.md, "Routing ids").
"""
from __future__ import annotations

import socket
from typing import Any

import msgpack
import pytest
import zmq
from peer_fixtures import FakePeer, PeerDealer, clustered_node

import miyaq
from miyaq.cluster.peer_requests import QUERY
from miyaq.store.records import transfer_record
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(90)

#: What an unseeded C library's ``rand()`` returns first: the start of a
#: ROUTER's anonymous routing ids in a process nothing seeded (libzmq's
#: ``generate_random``; the second ``rand()`` is even, so no high bit).
UNSEEDED_FIRST_ID = 0x6B8B4567
#: Five bytes of ZMTP 1.0: an anonymous identity frame, then a one-byte message.
ZMTP10_MESSAGE = b"\x01\x00\x02\x00x"


def send_zmtp10(port: int) -> None:
    """Connect over plain TCP, speak ZMTP 1.0, wait for the node to read it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(ZMTP10_MESSAGE)
        raw.settimeout(2)
        try:
            raw.recv(64)      # the node's greeting or its close: it has read what was sent
        except (socket.timeout, ConnectionError):
            pass


def test_a_zmtp_1_0_message_on_the_service_port_does_not_stop_the_node(procs):
    """Fault: a peer speaks ZMTP 1.0 to the service port of a node without
    keys (five bytes: an identity frame and a message; a TLS ClientHello or
    any other protocol's first bytes are read the same way). Such a
    connection's messages carry no metadata, so asking for the descriptor
    it came by raised EINVAL, outside any ``try``: the critical service
    reader died and the node stopped (exit 1). The message is now read as
    one from an unknown descriptor and the node keeps serving."""
    node = procs.node()
    send_zmtp10(node.port)
    with miyaq.Client(node.endpoint, submit_timeout=10, request_timeout=10) as client:
        wait_for(lambda: client.status()["errors"].get("bad_frame") == 1, what="the ZMTP 1.0 message read")
        client.submit("after", [], wait=True)
    assert node.alive(), node.log_tail()


def test_a_zmtp_1_0_message_on_the_peer_port_does_not_stop_the_node():
    """Fault: the same five bytes to a clustered node's peer port: the
    critical peer-request reader died the same way and the node stopped.
    Its peer port goes on answering requests, and its service port too."""
    peer = FakePeer()
    node = clustered_node(peer).start()
    try:
        send_zmtp10(node.config.peer)
        dealer = PeerDealer(f"tcp://127.0.0.1:{node.config.peer}")
        try:
            for _ in range(3):      # answered: the reader that read the ZMTP 1.0 message goes on
                assert "states" in dealer.request(QUERY, {"ids": ["nothing-here"]})
        finally:
            dealer.close()
        with miyaq.Client(node.endpoint, submit_timeout=10, request_timeout=10) as client:
            assert "errors" in client.status()
    finally:
        node.stop()
        peer.close()


def test_peers_that_choose_the_next_anonymous_routing_ids_do_not_abort_the_node(procs, ctx):
    """Fault: libzmq names a connection that sets no routing id ``0x00`` +
    a counter that starts at ``rand()``, and aborts the process if that
    name was already chosen by a peer (any peer may choose its own id, one
    starting with ``0x00`` too). Nothing seeded ``rand()``, so in every node
    process the counter started at the same number: 64 connections that
    chose the next ids, then one ordinary client, and the node died of
    SIGABRT (the audit's run: 23 were enough). The node now seeds it from
    ``os.urandom`` before it makes a ROUTER, and the same connections
    leave it serving."""
    node = procs.node()
    planted: list[Any] = []
    try:
        for k in range(64):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, b"\x00" + (UNSEEDED_FIRST_ID + k).to_bytes(4, "big"))
            sock.connect(node.endpoint)
            sock.send_multipart([c.TAG, c.STATUS, msgpack.packb({"req": 1})])
            planted.append(sock)
        for sock in planted:        # every one registered under the id it chose
            assert sock.poll(10_000), node.log_tail()
            sock.recv_multipart()
        with miyaq.Client(node.endpoint, submit_timeout=10, request_timeout=10) as client:
            assert client.status()["errors"] == {}
        assert node.alive(), node.log_tail()
    finally:
        for sock in planted:
            sock.close()


def test_a_pull_consumers_name_that_leaves_the_node_is_not_its_routing_id(node, ctx):
    """Fault: without keys a pull consumer was named ``pull:`` + its routing
    id in hex, and the name went out in STARTED events and handed-off
    records, which anyone may read on a node without keys: it told a
    stranger where libzmq's counter of anonymous routing ids stood (the
    next ids, connected to, aborted the node at the next ordinary
    connection) and the id under which another connection could ack the
    consumer's task. The name is now a keyed hash of the id."""
    routing_id = b"\x00" + (0x1234ABCD).to_bytes(4, "big")
    consumer = ctx.socket(zmq.DEALER)
    consumer.setsockopt(zmq.LINGER, 0)
    consumer.setsockopt(zmq.ROUTING_ID, routing_id)
    consumer.connect(node.endpoint)
    try:
        with miyaq.Client(node.endpoint, submit_timeout=10) as client:
            task_id = client.submit("named", [], queue="pull-name", wait=True).id
        consumer.send_multipart([c.TAG, c.RECEIVE, msgpack.packb({"req": 1, "queues": ["pull-name"], "timeout": 10})])
        assert consumer.poll(10_000)
        answer = msgpack.unpackb(consumer.recv_multipart()[2], raw=False)
        assert answer["task"]["id"] == task_id
        assert node.node is not None
        task = node.node.core.engine.table.live[task_id]
        (_, principal), = task.lessees
        sent = transfer_record(task)["lessee"][1]
        assert principal.startswith("pull:") and sent == principal
        assert routing_id.hex() not in principal and routing_id.hex()[2:] not in principal
    finally:
        consumer.close()


def test_a_connection_that_sets_a_live_workers_routing_id_does_not_take_its_deliveries(node, ctx):
    """Fault: a worker (another language's) sets its routing id, and a
    second connection -- any key holder, a producer's included, or a
    stranger on a node without keys -- connects with the same id. With
    ``ROUTER_HANDOVER`` it took the worker's place: it received the
    worker's deliveries and could report on its tasks. The node no longer
    hands a connection's place over: the worker keeps its deliveries."""
    def dealer() -> Any:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, b"billing-worker-1")
        sock.connect(node.endpoint)
        return sock

    worker = dealer()
    intruder = None
    try:
        worker.send_multipart([c.TAG, c.READY, msgpack.packb({"worker": "billing-1", "queues": ["billing"],
                                                              "capacity": 10})])
        assert worker.poll(10_000), "no WELCOME"
        assert worker.recv_multipart()[1] == c.WELCOME
        intruder = dealer()
        intruder.send_multipart([c.TAG, c.STATUS, msgpack.packb({"req": 7})])
        with miyaq.Client(node.endpoint, submit_timeout=10) as client:
            wait_for(lambda: client.status()["totals"]["workers"] == 1, what="the worker registered")
            ids = {client.submit("charge", [i], queue="billing", wait=True).id for i in range(3)}
        delivered: set[str] = set()
        while delivered != ids:
            assert worker.poll(10_000), f"the worker got {sorted(delivered)} of {sorted(ids)}"
            _, command, body = worker.recv_multipart()
            if command == c.DISPATCH:
                delivered |= {t[0] for t in msgpack.unpackb(body, raw=False)["tasks"]}
        while intruder.poll(0):
            assert intruder.recv_multipart()[1] != c.DISPATCH, "the intruder got a delivery"
    finally:
        worker.close()
        if intruder is not None:
            intruder.close()
