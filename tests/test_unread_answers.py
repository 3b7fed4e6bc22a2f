"""Connections that do not read their answers (miyaq.core.unread).

A request of a few bytes can have a large answer, and many small answers
add up; ZeroMQ queues what a connection does not read by a count of
messages, not bytes. A node counts what it sends a connection less what the
kernel says it took (over TCP what its peer acknowledged; over a unix socket
everything, once its socket is found empty), and refuses that connection's
requests ``busy`` once the count reaches a budget, until it has read what
it was sent.
"""
from __future__ import annotations

import msgpack
import pytest
import zmq

from miyaq.cluster.peer_versions import PEER_PROTOCOL
from miyaq.core.unread import UnreadAnswers, acked_bytes, unsent_bytes, wire_bytes
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


def no_tcp(fd: int) -> None:
    """What :func:`miyaq.core.unread.acked_bytes` says of a unix socket: nothing."""
    return None


def test_a_connection_that_never_reads_gets_its_budget_of_large_answers_then_busy() -> None:
    """Fault: a connection asks for large answers again and again and its
    socket never empties. It is sent answers until their bytes reach the
    budget, then refused; a small answer to a request let in always goes."""
    sockets = Sockets()
    unread = UnreadAnswers(budget=10 * MiB, large=64 * 1024, unsent=sockets, acked=no_tcp)
    unread.asked(b"slow", 7)
    sockets.unsent[7] = 3 * MiB            # full: the peer takes nothing
    sent = [unread.may_send(b"slow", 2 * MiB) for _ in range(8)]
    assert sent == [True] * 5 + [False] * 3
    assert unread.unread(b"slow") == 10 * MiB
    assert unread.may_send(b"slow", 1000)  # small: its request was let in
    assert unread.unread(b"slow") == 10 * MiB + 1000


def test_a_connection_that_reads_its_answers_is_never_refused() -> None:
    """No fault: a client reads each answer before its next request, so its
    socket is empty whenever a large answer is about to go."""
    sockets = Sockets()
    unread = UnreadAnswers(budget=4 * MiB, large=64 * 1024, unsent=sockets, acked=no_tcp)
    for _ in range(100):
        unread.asked(b"reader", 9)
        sockets.unsent[9] = 0
        assert unread.may_send(b"reader", 3 * MiB)
        sockets.unsent[9] = 3 * MiB        # sent; read before the next request
    assert unread.refused == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_many_connections_that_never_read_one_large_answer_each_are_bounded_together() -> None:
    """Fault: many connections each long-poll the RESULT of one task and read
    nothing; the task ends with a 1 MiB result. Each is far under its own
    budget, so before the fix each was sent its copy: 1,000 of them grew a
    node from 73 to 942 MB (``max_waiters``, 10,000, would be 10 GB). Now
    the answers stop at the budget of all connections together (8 MiB
    here), refused ``busy`` with a message saying so, and go again once
    the connections that owe bytes took them (looked at again only after
    ``TOTAL_LOOK_EVERY``)."""
    sockets, clock = Sockets(), Clock()
    unread = UnreadAnswers(budget=32 * MiB, large=64 * 1024, unsent=sockets, acked=no_tcp,
                           total_budget=8 * MiB, clock=clock)
    names = [f"poller-{i}".encode() for i in range(20)]
    for fd, name in enumerate(names, start=10):
        unread.asked(name, fd)
        sockets.unsent[fd] = 4096          # a full socket: nothing more is taken
    sent = [unread.may_send(name, MiB) for name in names]
    assert sent == [True] * 8 + [False] * 12
    assert unread.total == 8 * MiB
    refusal = unread.refusal(names[-1])
    assert refusal.code == "busy" and "all connections together" in refusal.message
    assert unread.may_send(names[-1], 1000)            # a small answer still goes
    for fd in range(10, 18):
        sockets.unsent[fd] = 0             # the first eight read everything
    assert not unread.may_send(names[9], MiB)          # not looked at again yet
    clock.now += 1.0
    assert unread.may_send(names[9], MiB)              # looked at: their bytes are off the total
    assert unread.total == MiB + 1000


def test_the_total_follows_every_count_that_changes() -> None:
    """The total is the sum of the followed connections' counts, through
    answers, ERRORs, sends taken back, looks, a routing id on a new
    connection and connections forgotten past ``max_followed``."""
    sockets = Sockets()
    unread = UnreadAnswers(budget=MiB, large=1024, max_followed=3, unsent=sockets, acked=no_tcp)
    for fd, name in ((3, b"a"), (4, b"b")):
        unread.asked(name, fd)
        sockets.unsent[fd] = 10
    unread.may_send(b"a", 5000)
    unread.sent(b"b", 700)
    unread.sent(b"b", -200)
    unread.may_send_error(b"a", 100)
    unread.asked(b"b", 9)                  # the same routing id on a new connection: starts afresh
    sockets.unsent[9] = 10
    unread.may_send(b"b", 2048)
    for name in (b"c", b"d"):              # b"a" goes: the least recent
        unread.asked(name, 5)
    sockets.unsent[5] = 0
    unread.may_send(b"c", 300)
    assert unread.total == sum(unread.unread(n) for n in (b"a", b"b", b"c", b"d")) == 2048 + 300


def test_reading_what_was_sent_restores_the_budget_and_a_closed_socket_forgets_it() -> None:
    """A refused connection that reads everything is answered again; one
    whose descriptor was closed (gone) is not held to an old count; one
    that never asked by a socket (-1) is not followed; the followed are bounded."""
    sockets = Sockets()
    unread = UnreadAnswers(budget=MiB, large=1024, max_followed=3, unsent=sockets, acked=no_tcp)
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
    # busy or not, an answer says the peer protocol its node speaks: one
    # without it would have the asker write to it in version 1 (peer_versions)
    assert decoded.get("speaks") == PEER_PROTOCOL, decoded.keys()
    if "code" in decoded:
        return decoded["code"]
    assert len(decoded["tasks"]) >= 100, decoded.keys()
    return "page"


# -- every answer counts (small ones, SUBMITTED and ERROR too) -------------------------------


def test_small_answers_count_and_a_connection_over_budget_has_its_requests_refused() -> None:
    """Fault: a connection asks again and again for answers under 64 KiB
    (a 60 KB RESULT) and its socket never empties. Before, such answers
    were never counted: 8,000 of them held 458 MB in a node. Now each
    counts, and once the budget is reached the connection's requests are
    refused until it reads."""
    sockets = Sockets()
    unread = UnreadAnswers(budget=MiB, large=64 * 1024, unsent=sockets, acked=no_tcp)
    sockets.unsent[5] = 100_000                  # the peer takes nothing
    let_in = 0
    for _ in range(100):
        if unread.asked(b"hog", 5) is not True:
            break
        let_in += 1
        assert unread.may_send(b"hog", 60_000)   # small: its request was let in
    assert let_in == -(-MiB // 60_000)           # the answers that reach the budget, not one more
    assert unread.unread(b"hog") == let_in * 60_000
    unread.sent(b"hog", 100)                     # a SUBMITTED counts too
    assert unread.unread(b"hog") == let_in * 60_000 + 100
    assert unread.asked(b"hog", 5) is False      # still nothing read
    sockets.unsent[5] = 0                        # it read everything
    assert unread.asked(b"hog", 5) is True and unread.unread(b"hog") == 0


def test_a_reading_connection_costs_a_counter_update_per_answer_and_a_rare_look() -> None:
    """No fault: a client that reads its answers sends 10,000 requests with
    small answers. It is never refused, and its socket is looked at once
    per 64 KiB of answers, not once per answer (the hot path stays a
    comparison and an addition)."""
    looks = []

    def unsent(fd: int) -> int:
        looks.append(fd)
        return 0

    unread = UnreadAnswers(budget=MiB, unsent=unsent, acked=no_tcp, look_every=64 * 1024)
    for _ in range(10_000):
        assert unread.asked(b"reader", 3)
        assert unread.may_send(b"reader", 200)
    assert unread.refused == 0
    assert len(looks) <= 10_000 * 200 // (64 * 1024) + 1


def test_a_far_client_that_reads_is_credited_what_it_acknowledged() -> None:
    """No fault, and the fault it must not be mistaken for: a client across
    a long round trip reads every answer, but whenever its socket is looked
    at, bytes are in flight (sent, not yet acknowledged), so it is never
    found empty. What TCP says it acknowledged is taken off its count, so it
    is never refused; a slow reader that acknowledges less than it is sent
    still reaches the budget."""
    in_flight = 50_000
    sent = acked = 0

    def unsent(fd: int) -> int:
        return in_flight

    def acknowledged(fd: int) -> int:
        return acked

    unread = UnreadAnswers(budget=MiB, unsent=unsent, acked=acknowledged)
    for _ in range(20_000):                      # 20 MiB of answers: 20 budgets
        assert unread.asked(b"far", 3)
        assert unread.may_send(b"far", 1000)
        sent += 1000
        acked = max(sent - in_flight, 0)         # all but what is in flight arrived
    assert unread.refused == 0 and unread.unread(b"far") <= in_flight + 64 * 1024

    slow = UnreadAnswers(budget=MiB, unsent=unsent, acked=acknowledged)
    sent = acked = 0
    for _ in range(20_000):
        if not slow.asked(b"slow", 4):
            break
        slow.may_send(b"slow", 1000)
        sent += 1000
        acked = sent // 2                        # takes half of what it is sent
    assert sent - acked <= MiB + 64 * 1024 + 1000     # held: the budget, and what one look lets through


def test_over_tcp_a_closed_connection_is_not_held_to_its_count_and_a_reused_descriptor_starts_afresh() -> None:
    """A TCP connection refused for what it did not take is forgotten once
    its descriptor is closed (the kernel says nothing of it any more); a
    descriptor that now belongs to another connection (fewer bytes
    acknowledged than before) gives no credit, and counts on from there."""
    acked: dict[int, int] = {6: 0}

    def acknowledged(fd: int) -> int | None:
        return acked.get(fd)

    unread = UnreadAnswers(budget=MiB, acked=acknowledged)
    unread.asked(b"a", 6)
    assert unread.may_send(b"a", 2 * MiB)
    assert unread.asked(b"a", 6) is False        # nothing acknowledged
    acked[6] = MiB + 1                           # it took more than the budget's worth
    assert unread.asked(b"a", 6) and unread.unread(b"a") == MiB - 1
    assert unread.may_send(b"a", MiB)            # over budget again, nothing more acknowledged
    del acked[6]                                 # closed
    assert unread.asked(b"a", 6) and unread.unread(b"a") == 0          # gone, and its queue with it
    assert unread.may_send(b"a", 2 * MiB) and unread.unread(b"a") == 2 * MiB
    acked[6] = 10                                # another connection on descriptor 6
    assert unread.asked(b"a", 6) is False and unread.unread(b"a") == 2 * MiB
    acked[6] = 10 + MiB + 1
    assert unread.asked(b"a", 6) and unread.unread(b"a") == MiB - 1


def test_the_kernel_is_asked_safely_of_a_descriptor_closed_or_taken_since() -> None:
    """Fault: a chaos run (kill, pause, clock faults) stopped a node: the
    peer port asked the kernel what a peer's connection had acknowledged
    through a descriptor that connection had closed, and making the socket
    object raised ``EBADF`` -- outside the ``try``, so the peer reader, a
    critical greenlet, died and took the node down. A descriptor closed, or
    taken since by a file, or a socket that is no TCP one, now says
    nothing (None: the connection is gone), and the descriptor is never
    closed by the asking."""
    import os
    import socket as _socket
    import tempfile

    listener = _socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = _socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        assert isinstance(acked_bytes(server.fileno()), int)
        client.close()
        with tempfile.TemporaryFile() as regular:
            assert acked_bytes(regular.fileno()) is None
            os.fstat(regular.fileno())      # still open: asking did not close it
        spare = os.open(os.devnull, os.O_RDONLY)
        os.close(spare)
        assert acked_bytes(spare) is None
        left, right = _socket.socketpair()
        with left, right:
            assert acked_bytes(left.fileno()) is None
    finally:
        server.close()
        listener.close()


def test_refusals_to_a_connection_that_never_reads_stop_at_their_own_budget() -> None:
    """Fault: a connection over budget keeps sending requests and reads
    nothing: each refusal (an ERROR) would wait in the node like any
    answer, up to ZeroMQ's 100,000 messages. They are counted, and past
    their own budget no ERROR is sent until the connection reads."""
    sockets = Sockets()
    unread = UnreadAnswers(budget=MiB, unsent=sockets, acked=no_tcp, refusals=10_000)
    sockets.unsent[4] = 1
    unread.asked(b"hog", 4)
    assert unread.may_send(b"hog", 2 * MiB)      # one answer past the budget
    sent = []
    for _ in range(200):
        assert unread.asked(b"hog", 4) is False
        unread.refusal(b"hog")
        sent.append(unread.may_send_error(b"hog", 100))
    assert sent == [True] * 100 + [False] * 100
    assert unread.refused == 200 and unread.unsent_errors == 100
    sockets.unsent[4] = 0                        # read: answered again, refusals with it
    assert unread.asked(b"hog", 4) and unread.may_send_error(b"hog", 100)


def test_wire_bytes_are_what_tcp_acknowledges(ctx) -> None:
    """What the count takes off is what the kernel says the peer
    acknowledged: the count must be in the same bytes (the frames' sizes
    and flags on top of the body), or a client that reads would drift
    towards the budget and one that does not away from it."""
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send_multipart([c.TAG, c.STATUS, b"\x80"])
    assert router.poll(int(WAIT * 1000))
    identity = router.recv_multipart()[0]
    fd = _connection_fd(port)
    wait_for(lambda: unsent_bytes(fd) == 0, timeout=WAIT, what="the handshake acknowledged")
    before = acked_bytes(fd)
    assert before is not None
    expected = 0
    for size in (0, 200, 255, 256, 5000, 70_000):
        router.send_multipart([identity, c.TAG, c.REPLY, b"b" * size])
        expected += wire_bytes(c.REPLY, size)
        assert dealer.poll(int(WAIT * 1000))
        dealer.recv_multipart()
    wait_for(lambda: acked_bytes(fd) == before + expected, timeout=WAIT,
             what=f"{expected} bytes acknowledged (so far {(acked_bytes(fd) or 0) - before})")


def _connection_fd(port: int) -> int:
    """The descriptor of this process's accepted connection on ``port``."""
    import os
    import socket
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getsockname()[1] == port and sock.getpeername():
                return int(name)
        except (OSError, IndexError, TypeError):
            pass
        finally:
            sock.detach()
    raise AssertionError(f"no connection on port {port}")


def _slow_dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A connection that reads one message and leaves the rest to the node."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.connect(endpoint)
    return sock


class _CountingAnswers(UnreadAnswers):
    """The node's unread accounting, counting the requests it was asked to
    let in (:meth:`asked`: every request that is answered, let in or not)."""

    asks = 0

    def asked(self, identity: bytes, fd: int) -> bool:
        self.asks += 1
        return super().asked(identity, fd)


def _small_budget(node, budget: int) -> _CountingAnswers:
    """Give ``node``'s service port a small unread budget (before any client connects)."""
    unread = _CountingAnswers(budget=budget)
    node.node.core.endpoint.unread = unread
    return unread


def _all_taken_up(unread: _CountingAnswers, before: int, count: int) -> None:
    """Wait until the node has taken up ``count`` requests since ``before``
    asks (answered or refused), reading the count in this process: a STATUS
    would be one more ask. Reading answers before then lets the requests
    still waiting in the node be answered in full as reading frees the
    budget, and counts their answers against it: two whole-suite runs on a
    loaded machine read 5 and 9.5 answers past the budget so."""
    wait_for(lambda: unread.asks - before >= count, timeout=WAIT, what=f"the node to take up the {count} requests")


def test_results_under_64_kib_never_read_are_refused_busy_past_the_budget(make_node, client_for, ctx) -> None:
    """Fault: a connection sends 200 RESULT requests for a 60,000-byte
    result (under the 64 KiB of a large answer) and reads nothing. Before,
    none was counted: every answer waited in the node and none was refused
    (8,000 held 458 MB). Now the answers reach the budget (here 1 MiB) and
    the rest are answered busy; once the connection has read what it was
    sent it is answered again."""
    node = make_node()
    unread = _small_budget(node, MiB)
    client = client_for(node.endpoint)
    _finished_task(node, client, ctx, "big", 60_000)
    slow = _slow_dealer(ctx, node.endpoint)
    before = unread.asks
    for i in range(200):
        slow.send_multipart([c.TAG, c.RESULT, msgpack.packb({"req": i, "id": "big", "timeout": 0})])
    _all_taken_up(unread, before, 200)
    wait_for(lambda: client.status()["errors"].get("busy", 0) >= 150, timeout=WAIT,
             what="the RESULTs past the budget answered busy")
    answers = [_result_answer(slow) for _ in range(200)]
    assert answers.count("busy") >= 150 and answers.count("result") + answers.count("busy") == 200, answers
    # The budget's worth, the answer that reached it, and what the connection's
    # own side took off the node's socket (it left the node, and its TCP stack
    # acknowledged it): one message in its pipe (RCVHWM 1), one its decoder holds
    # waiting for room there, and what its kernel buffer holds -- on a loaded
    # machine more than the part of one we first allowed (a CI run counted 5
    # past the budget where 4 were allowed; the sibling test below saw the
    # same). Eight past it; before the fix: all 200.
    assert answers.count("result") <= MiB // 60_000 + 8
    slow.send_multipart([c.TAG, c.RESULT, msgpack.packb({"req": "again", "id": "big", "timeout": 0})])
    assert _result_answer(slow) == "result"      # read everything: answered again
    assert unread.refused == answers.count("busy")


def test_submitted_answers_never_read_are_bounded_and_the_submits_refused_busy(make_node, client_for,
                                                                                ctx) -> None:
    """Fault: a connection resends SUBMITs of 256 known ids (each answered
    with a SUBMITTED of ``duplicate`` results, about 20 KB) and reads
    nothing. Before, SUBMITTED went out past the unread check: 2,000 such
    SUBMITs of 1,024 ids held 355 MB in a node. Now SUBMITTED counts like
    every answer, and past the budget (here 1 MiB) the connection's SUBMITs
    are refused whole (ERROR busy, nothing stored) until it reads."""
    node = make_node()
    unread = _small_budget(node, MiB)
    client = client_for(node.endpoint)
    ids = [f"{i:064d}" for i in range(256)]
    producer = ctx.socket(zmq.DEALER)
    producer.setsockopt(zmq.LINGER, 0)
    producer.connect(node.endpoint)
    producer.send_multipart([c.TAG, c.SUBMIT, msgpack.packb({"tasks": [{"id": t, "name": "x"} for t in ids]})])
    assert _next(producer)[0] == c.SUBMITTED
    slow = _slow_dealer(ctx, node.endpoint)
    resend = msgpack.packb({"tasks": [{"id": t, "name": "x"} for t in ids]})
    before = unread.asks
    for _ in range(200):
        slow.send_multipart([c.TAG, c.SUBMIT, resend])
    _all_taken_up(unread, before, 200)
    wait_for(lambda: client.status()["errors"].get("busy", 0) >= 100, timeout=WAIT,
             what="the SUBMITs past the budget refused busy")
    results = busy = answered_bytes = largest = 0
    while results + busy * 256 < 200 * 256:      # one SUBMITTED answers the SUBMITs of a burst
        command, body = _next(slow)
        if command == c.ERROR:
            assert body["code"] == "busy" and "has not read" in body["message"], body
            busy += 1
        else:
            assert command == c.SUBMITTED and {r[1] for r in body["results"]} == {"duplicate"}, body
            results += len(body["results"])
            size = len(msgpack.packb(body))
            answered_bytes += size
            largest = max(largest, size)
    assert busy >= 100 and results + busy * 256 == 200 * 256
    # The budget's worth, the answer of the burst that reached it, and what the
    # connection's own side took off the node's socket (as in the test above:
    # its pipe, its decoder, its kernel buffer). One SUBMITTED answers a whole
    # burst of SUBMITs (here up to ~290 KB), and on a loaded machine bursts
    # and what the other side holds vary: a CI run saw 2.67 MB, 5.5 of the
    # largest past the budget. Eight of them is still far from what went out
    # before the fix: all 200 answers, 7.3 MB.
    assert answered_bytes <= MiB + 8 * largest, (answered_bytes, largest)
    assert unread.refused == busy == client.status()["errors"]["busy"]
    assert client.status()["totals"]["live"] == 256      # nothing stored by a refused SUBMIT
    slow.send_multipart([c.TAG, c.SUBMIT, resend])
    command, body = _next(slow)
    assert command == c.SUBMITTED and len(body["results"]) == 256     # read everything: answered again


def _next(sock: zmq.Socket) -> tuple[bytes, dict]:
    assert sock.poll(int(WAIT * 1000)), "no answer"
    _, command, body = sock.recv_multipart()
    return command, msgpack.unpackb(body)


def _result_answer(sock: zmq.Socket) -> str:
    command, body = _next(sock)
    if command == c.ERROR:
        return body["code"]
    assert command == c.REPLY and len(body["result"]) == 60_000, (command, body.keys())
    return "result"


# -- a fair share of the total: a few connections that never read cannot take it all ------------


def _hog(unread: UnreadAnswers, sockets: Sockets, name: bytes, fd: int, answer: int, requests: int) -> None:
    """A connection that sends ``requests`` requests, each with an answer of
    ``answer`` bytes, and never reads: its socket stays full. A request
    refused, or whose answer was, is answered by an ERROR as the node does."""
    sockets.unsent[fd] = 4096
    for _ in range(requests):
        if not unread.asked(name, fd) or not unread.may_send(name, answer):
            unread.refusal(name)
            unread.may_send_error(name, 100)


@pytest.mark.parametrize("answer", [MiB, 60_000], ids=["large answers", "answers under 64 KiB"])
def test_eight_connections_that_never_read_cannot_starve_a_reading_client_of_large_answers(answer: int) -> None:
    """Fault: eight connections each ask again and again (for answers of
    1 MiB, or of 60 KB: a RESULT under 64 KiB) and never read. Each may owe
    its own 32 MiB, and eight of them are the whole 256 MiB all connections
    together may owe: before, the ninth client -- one that reads every
    answer -- was refused ``busy`` each answer of 64 KiB or more, for as
    long as those eight stayed connected (ZeroMQ has no limit of
    connections per address). Now, once all connections together owe more
    than half the total, a connection owing its fair share (1/256 of the
    total) is refused: the hogs that came once half was taken hold a
    little each, and the reading client is served."""
    sockets, clock = Sockets(), Clock()
    unread = UnreadAnswers(unsent=sockets, acked=no_tcp, clock=clock)      # 32 MiB each, 256 MiB together
    requests = 2 * unread.budget // answer       # twice what its own budget lets through
    for i in range(8):
        _hog(unread, sockets, f"hog-{i}".encode(), 10 + i, answer, requests)
        clock.now += 1.0
    assert unread.total > unread.total_budget // 2 + 4 * MiB     # the first hogs took half, the others some
    sockets.unsent[99] = 0
    for _ in range(20):
        assert unread.asked(b"reader", 99)
        assert unread.may_send(b"reader", MiB), unread.refusal(b"reader").message
        clock.now += 1.0
    assert unread.total < unread.total_budget * 3 // 4


def test_under_pressure_each_connection_may_owe_its_fair_share_and_the_total_stays_bounded() -> None:
    """Fault: many connections that never read (200, 16 MiB together here)
    each take what they are let: they can always fill the total (that is
    what it bounds), but past half of it each holds at most its fair share
    (1/256 of the total) and the answer that reached it, and large answers
    never take the total past its budget. The old growth case too: 1,000
    connections each long-polling one 1 MiB RESULT, never read, stop at the
    total."""
    sockets, clock = Sockets(), Clock()
    total_budget = 16 * MiB
    unread = UnreadAnswers(budget=4 * MiB, unsent=sockets, acked=no_tcp, total_budget=total_budget, clock=clock)
    fair = total_budget // 256
    for i in range(200):
        _hog(unread, sockets, f"hog-{i}".encode(), 10 + i, 100_000, 50)
        assert unread.total <= total_budget + (i + 1) * 50 * 100      # and the hogs' refusals (ERRORs)
        clock.now += 1.0
    held = [unread.unread(f"hog-{i}".encode()) for i in range(200)]
    first = next(i for i in range(200) if sum(held[:i + 1]) > total_budget // 2)
    assert all(h < fair + 100_000 + 50 * 100 for h in held[first + 1:]), held

    polls = UnreadAnswers(unsent=sockets, acked=no_tcp, clock=clock)      # the defaults: 256 MiB together
    answered = 0
    for i in range(1_000):
        name = f"poller-{i}".encode()
        polls.asked(name, 1000 + i)
        sockets.unsent[1000 + i] = 4096
        answered += polls.may_send(name, MiB)
    assert polls.total <= polls.total_budget and answered == 256


def test_a_connection_refused_its_fair_share_is_served_again_once_the_pressure_is_gone() -> None:
    """A connection that owes more than its fair share while all
    connections together owe more than half the total is refused ``busy``
    (the message saying why) from its next look on -- before a large
    answer, or once ``LOOK_EVERY`` more bytes were counted for it -- and so
    are its requests; once the connections that held the total are gone
    and were looked at again (after ``TOTAL_LOOK_EVERY``), its own budget
    is its again."""
    sockets, clock, unread = _far_reader_under_pressure()
    assert unread.total > 8 * MiB
    assert not unread.may_send(b"far", 200_000)             # it owes more than 16 MiB / 256
    refusal = unread.refusal(b"far")
    assert refusal.code == "busy" and "fair share" in refusal.message, refusal.message
    assert unread.asked(b"far", 5) is False                 # its requests too, until the pressure is gone
    for i in range(4):
        del sockets.unsent[10 + i]                          # the hogs went
    assert unread.asked(b"far", 5) is False                 # not looked at again yet
    clock.now += 1.0
    assert unread.asked(b"far", 5) and unread.may_send(b"far", 200_000)
    assert unread.total == unread.unread(b"far") == 800_000


def _far_reader_under_pressure(**options: int) -> tuple[Sockets, Clock, UnreadAnswers]:
    """A connection ``far`` (descriptor 5) that took 600 KB of answers,
    under its 4 MiB budget, then four hogs owing 8 MiB of the 16 MiB total:
    the pressure is on, and ``far`` owes more than its fair share."""
    sockets, clock = Sockets(), Clock()
    unread = UnreadAnswers(budget=4 * MiB, unsent=sockets, acked=no_tcp, total_budget=16 * MiB, clock=clock,
                           **options)
    sockets.unsent[5] = 4096
    unread.asked(b"far", 5)
    for _ in range(3):
        assert unread.may_send(b"far", 200_000) and unread.asked(b"far", 5)    # 600 KB, under its budget
    for i in range(4):
        _hog(unread, sockets, f"hog-{i}".encode(), 10 + i, MiB, 8)
    return sockets, clock, unread


def test_refusals_to_a_connection_past_its_fair_share_stop_at_their_own_budget() -> None:
    """Fault: under pressure (all connections together owe more than half
    the total) a connection that owes more than its fair share, though far
    under its own budget, keeps asking and reads nothing. Its requests are
    refused, and the refusals (ERRORs) are bounded as past its own budget:
    ``refusals`` bytes of them, then none until it reads (mutation,
    review37: bounding them only past its own budget -- up to 4 MiB more
    each here, 32 MiB by default -- passed every test)."""
    sockets, clock, unread = _far_reader_under_pressure(refusals=10_000)
    assert not unread.may_send(b"far", 200_000)             # past its fair share: the pressure is on
    sent = []
    for _ in range(200):
        assert unread.asked(b"far", 5) is False
        unread.refusal(b"far")
        sent.append(unread.may_send_error(b"far", 100))
    assert sent == [True] * 100 + [False] * 100
    assert unread.unread(b"far") == 600_000 + 100 * 100


def test_connections_that_never_read_cannot_starve_a_reading_client_over_real_sockets(make_node, client_for,
                                                                                       ctx) -> None:
    """Fault: eight connections each ask 30 times for a 100 KB RESULT (an
    answer of 64 KiB or more) and read nothing; the node's budgets are
    small here (1 MiB a connection, 4 MiB together). Each owes its own
    budget's worth and four of them the whole total: before, a client
    that reads every answer was then refused ``busy`` for the same RESULT
    for as long as they stayed connected. Now past half the total each
    connection may owe its fair share (16 KiB here) and the reader gets
    its answers."""
    node = make_node()
    unread = _CountingAnswers(budget=MiB, total_budget=4 * MiB)
    node.node.core.endpoint.unread = unread
    client = client_for(node.endpoint)
    _finished_task(node, client, ctx, "big", 100_000)
    hogs = [_slow_dealer(ctx, node.endpoint) for _ in range(8)]
    before = unread.asks
    for i in range(30):
        for hog in hogs:
            hog.send_multipart([c.TAG, c.RESULT, msgpack.packb({"req": i, "id": "big", "timeout": 0})])
    _all_taken_up(unread, before, 8 * 30)
    assert unread.total > 2 * MiB and unread.refused > 0      # the hogs took half the total, and were refused
    reader = ctx.socket(zmq.DEALER)
    reader.setsockopt(zmq.LINGER, 0)
    reader.connect(node.endpoint)
    for i in range(10):
        reader.send_multipart([c.TAG, c.RESULT, msgpack.packb({"req": i, "id": "big", "timeout": 0})])
        command, body = _next(reader)
        assert command == c.REPLY and len(body["result"]) == 100_000, (command, body)
    assert unread.total <= 4 * MiB + 8 * 30 * 200           # large answers within the total (and ERRORs)


def _finished_task(node, client, ctx: zmq.Context, task_id: str, result_size: int) -> None:
    """Make ``node`` hold the task ``task_id`` finished with a result of ``result_size`` bytes."""
    producer = ctx.socket(zmq.DEALER)
    producer.setsockopt(zmq.LINGER, 0)
    producer.connect(node.endpoint)
    producer.send_multipart([c.TAG, c.SUBMIT, msgpack.packb({"tasks": [{"id": task_id, "name": "x"}]})])
    assert _next(producer)[0] == c.SUBMITTED
    worker = ctx.socket(zmq.DEALER)
    worker.setsockopt(zmq.LINGER, 0)
    worker.connect(node.endpoint)
    worker.send_multipart([c.TAG, c.READY, msgpack.packb({"worker": "w1", "queues": ["default"], "capacity": 1})])
    while True:
        command, body = _next(worker)
        if command == c.DISPATCH:
            task = body["tasks"][0]
            done = [[task[0], task[4], b"r" * result_size]]
            worker.send_multipart([c.TAG, c.DONE, msgpack.packb({"done": done})])
            break
    wait_for(lambda: client.status()["outcomes"].get("completed") == 1, timeout=WAIT, what="the task done")
    producer.close()
    worker.close()
