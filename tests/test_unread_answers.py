"""Connections that do not read their answers (miyaq.core.unread).

A request of a few bytes can have a large answer; ZeroMQ queues what a
connection does not read by a count of messages, not bytes. A node sends a
connection large answers only while it has read what it was sent (its
socket found empty), up to a budget of bytes between two such looks.
"""
from __future__ import annotations

import msgpack
import pytest
import zmq

from miyaq.core.unread import UnreadAnswers
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0      # seconds: a guard against a hang, not a timing assertion
MiB = 1024 * 1024


class Sockets:
    """What the kernel would say of each descriptor's unsent bytes."""

    def __init__(self) -> None:
        self.unsent: dict[int, int] = {}

    def __call__(self, fd: int) -> int:
        if fd not in self.unsent:
            raise OSError(9, "Bad file descriptor")
        return self.unsent[fd]


def test_a_connection_that_never_reads_gets_its_budget_of_large_answers_then_busy() -> None:
    """Fault: a connection asks for large answers again and again and its
    socket never empties. It is sent answers until their bytes reach the
    budget, then refused; small answers always go."""
    sockets = Sockets()
    unread = UnreadAnswers(budget=10 * MiB, large=64 * 1024, unsent=sockets)
    unread.asked(b"slow", 7)
    sockets.unsent[7] = 3 * MiB            # full: the peer takes nothing
    sent = [unread.may_send(b"slow", 2 * MiB) for _ in range(8)]
    assert sent == [True] * 5 + [False] * 3
    assert unread.unread(b"slow") == 10 * MiB and unread.refused == 3
    assert unread.may_send(b"slow", 1000)  # small: never held back


def test_a_connection_that_reads_its_answers_is_never_refused() -> None:
    """No fault: a client reads each answer before its next request, so its
    socket is empty whenever a large answer is about to go."""
    sockets = Sockets()
    unread = UnreadAnswers(budget=4 * MiB, large=64 * 1024, unsent=sockets)
    for _ in range(100):
        unread.asked(b"reader", 9)
        sockets.unsent[9] = 0
        assert unread.may_send(b"reader", 3 * MiB)
        sockets.unsent[9] = 3 * MiB        # sent; read before the next request
    assert unread.refused == 0


def test_reading_what_was_sent_restores_the_budget_and_a_closed_socket_forgets_it() -> None:
    """A refused connection that reads everything is answered again; one
    whose descriptor was closed (gone) is not held to an old count; one
    that never asked by a socket (-1) is not followed; the followed are bounded."""
    sockets = Sockets()
    unread = UnreadAnswers(budget=MiB, large=1024, max_followed=3, unsent=sockets)
    unread.asked(b"a", 3)
    sockets.unsent[3] = 500_000
    assert unread.may_send(b"a", MiB) and not unread.may_send(b"a", MiB)
    sockets.unsent[3] = 0
    assert unread.may_send(b"a", MiB)
    del sockets.unsent[3]
    assert unread.may_send(b"a", MiB) and unread.unread(b"a") == MiB
    unread.asked(b"in-process", -1)
    assert unread.may_send(b"in-process", 10 * MiB) and unread.unread(b"in-process") == 0
    for name in (b"b", b"c", b"d"):
        unread.asked(name, 4)
    assert unread.unread(b"a") == 0 and unread.may_send(b"a", 10 * MiB)    # forgotten: the least recent


def test_a_node_holds_a_bounded_amount_for_a_connection_that_never_reads(procs, client_for) -> None:
    """Attack: a connection sends 200 TASKS listings of 10,000 tasks (about
    1.3 MB each) and reads nothing. On the node before this, every answer
    waited in it: 200 requests held about 300 MiB until the connection
    closed. Now it is sent the budget's worth (32 MiB) and the rest is
    answered busy; once it has read what it was sent it is answered again,
    and a client that reads its answers is never refused."""
    from test_memory_limits import rss_mib

    node = procs.node()
    client = client_for(node.endpoint)
    for i in range(10_000):
        client.submit("echo", [i], countdown=3600)
    client.flush(WAIT)
    before = rss_mib(node.pid)
    ctx = zmq.Context()
    try:
        slow = ctx.socket(zmq.DEALER)
        slow.setsockopt(zmq.LINGER, 0)
        slow.setsockopt(zmq.RCVHWM, 1)      # its libzmq takes one message, then leaves the rest to the node
        slow.setsockopt(zmq.RCVBUF, 4096)
        slow.connect(node.endpoint)
        for i in range(200):
            slow.send_multipart([c.TAG, c.TASKS, msgpack.packb({"req": i, "limit": 10_000})])
        # About 26 answers fit the budget: the rest are refused. Waiting for
        # 150 refusals is waiting for the node to have handled that many.
        wait_for(lambda: client.status()["errors"].get("busy", 0) >= 150, timeout=WAIT,
                 what="the listings past the budget answered busy")
        grown = rss_mib(node.pid) - before
        answers = [_answer(slow) for _ in range(200)]
        assert answers.count("busy") >= 150 and answers.count("tasks") + answers.count("busy") == 200, answers
        slow.send_multipart([c.TAG, c.TASKS, msgpack.packb({"req": "again", "limit": 10_000})])
        assert _answer(slow) == "tasks"      # read everything: answered again
    finally:
        ctx.destroy(linger=0)
    assert grown < 100, (before, grown)
    assert client.status()["errors"]["busy"] == answers.count("busy")
    for _ in range(20):
        assert len(client.tasks(limit=10_000)) == 10_000
    assert node.alive()


def _answer(sock: zmq.Socket) -> str:
    assert sock.poll(int(WAIT * 1000)), "no answer"
    _, command, body = sock.recv_multipart()
    decoded = msgpack.unpackb(body)
    if command == c.ERROR:
        return decoded["code"]
    assert command == c.REPLY, (command, decoded)
    return "tasks" if len(decoded["tasks"]) == 10_000 else f"{len(decoded['tasks'])} tasks"


def test_the_peer_port_holds_a_bounded_amount_for_a_connection_that_never_reads() -> None:
    """Attack: on a keyless cluster's peer port (anyone may connect), a
    connection asks 200 times for the first SYNC page of 1,000 tasks (about
    1 MB each) and reads nothing. Before, each page waited in the node
    (about 200 MB) until the connection closed; now the budget's worth is
    sent and the rest answered busy, and once it has read what it was sent
    it is answered again."""
    from peer_fixtures import FakePeer, clustered_node

    peer = FakePeer()
    # The slow connection answers no heartbeat while its answers wait unread:
    # a long timeout keeps this test about the budget, not about heartbeats.
    node = clustered_node(peer, peer_heartbeat_timeout=600.0).start()
    ctx = zmq.Context()
    try:
        identity, body = peer.next_request(b"SYNC")        # the node's link to the peer is up
        peer.answer(identity, body["req"], {"tasks": [], "stones": [], "next": None})
        producer = ctx.socket(zmq.DEALER)      # not a Client: it would dial the fake peer's service too
        producer.setsockopt(zmq.LINGER, 0)
        producer.connect(node.endpoint)
        for batch in range(10):
            tasks = [{"id": f"t{batch}-{i}", "name": "echo", "body": b"x" * 1_000, "countdown": 3600}
                     for i in range(100)]
            producer.send_multipart([c.TAG, c.SUBMIT, msgpack.packb({"tasks": tasks})])
        accepted = 0
        while accepted < 1_000:
            assert producer.poll(int(WAIT * 1000)), "no SUBMITTED"
            _, command, body = producer.recv_multipart()
            results = msgpack.unpackb(body)["results"]
            assert command == c.SUBMITTED and all(r[1] == "accepted" for r in results), results[:3]
            accepted += len(results)
        slow = ctx.socket(zmq.DEALER)
        slow.setsockopt(zmq.LINGER, 0)
        slow.setsockopt(zmq.RCVHWM, 1)
        slow.setsockopt(zmq.RCVBUF, 4096)
        slow.connect(f"tcp://127.0.0.1:{node.config.peer}")
        for i in range(200):
            slow.send_multipart([c.TAG, b"SYNC", msgpack.packb({"req": i, "from": "p1", "cursor": 0})])
        link = node.node.role.peer
        wait_for(lambda: link.unread.refused >= 150, timeout=WAIT, what="the pages past the budget answered busy")
        answers = [_peer_answer(slow) for _ in range(200)]
        assert answers.count("busy") >= 150 and answers.count("page") + answers.count("busy") == 200, answers
        slow.send_multipart([c.TAG, b"SYNC", msgpack.packb({"req": "again", "from": "p1", "cursor": 0})])
        assert _peer_answer(slow) == "page"      # read everything: answered again
        assert link.errors["busy"] == answers.count("busy")
    finally:
        ctx.destroy(linger=0)
        node.stop()
        peer.close()


def _peer_answer(sock: zmq.Socket) -> str:
    assert sock.poll(int(WAIT * 1000)), "no answer"
    _, _, body = sock.recv_multipart()
    decoded = msgpack.unpackb(body)
    if "code" in decoded:
        return decoded["code"]
    assert len(decoded["tasks"]) >= 100, decoded.keys()
    return "page"
