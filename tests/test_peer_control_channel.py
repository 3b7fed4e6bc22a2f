"""A QUERY has a connection of its own to each peer (the control channel).

Fault (network audit, 2026-12-05): on a narrow link between nodes, a
standby copy's QUERY ("did you run this task?") waited in the one DEALER's
pipe and TCP buffers behind megabytes of REPLICATE copies; its answer came
after the asker's patience, which took the silence for a dead holder and
ran the task a second time with no failure at all. Now the peer link keeps
two DEALERs per member (:mod:`miyaq.cluster.peer_channels`): copies and
resyncs on ``bulk``, QUERY on ``control``.

The peer here is a raw ROUTER the test reads when it chooses, so a backlog
of copies can wait unread. Nothing is timed: only the order messages
arrive in, and what ends which request.
"""
from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq as plain_zmq

from hub_waits import until
from miyaq.cluster import peer as peer_module, peer_requests
from miyaq.cluster.peer import PeerEndpoint
from miyaq.cluster.peer_requests import ANSWER, QUERY, REPLICATE, SYNC, PeerRequests
from miyaq.protocol.commands import TAG
from miyaq.runtime import Supervisor, green
from miyaq.runtime import fairness
from miyaq.runtime.fairness import HUB_SLICE
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.testing.harness import free_port


pytestmark = pytest.mark.timeout(60)

WAIT = 15.0          # a guard against a hang, not a timing assertion
COPIES = 20
COPY_BYTES = 512 * 1024


class RawPeer:
    """Member p1's peer ROUTER, read only when the test says (a peer busy
    elsewhere, or at the far end of a narrow link): what it read is kept in
    order as (routing id, command, body)."""

    def __init__(self) -> None:
        self.ctx = plain_zmq.Context()
        self.sock = self.ctx.socket(plain_zmq.ROUTER)
        self.sock.setsockopt(plain_zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.read: list[tuple[bytes, bytes, dict[str, Any]]] = []

    def read_one(self) -> bool:
        """Read the next message if one is there."""
        if not self.sock.poll(0):
            return False
        identity, _, command, body = self.sock.recv_multipart()
        self.read.append((identity, command, msgpack.unpackb(body, raw=False)))
        return True

    def read_until(self, command: bytes) -> tuple[bytes, dict[str, Any]]:
        """Read (in the hub) until a ``command`` arrives; its routing id and body."""
        def found() -> tuple[bytes, dict[str, Any]] | None:
            while self.read_one():
                if self.read[-1][1] == command:
                    return self.read[-1][0], self.read[-1][2]
            return None
        return until(found, f"a {command!r} at the peer")

    def read_both(self) -> None:
        """Read (in the hub) until a QUERY and a REPLICATE have arrived, in either order."""
        until(lambda: self.read_one() and {QUERY, REPLICATE} <= {c for _, c, _ in self.read},
              "a QUERY and a REPLICATE at the peer")

    def answer(self, identity: bytes, req: int, body: dict[str, Any]) -> None:
        self.sock.send_multipart([identity, TAG, ANSWER, msgpack.packb({**body, "req": req, "from": "p1"})])

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.fixture
def link() -> Iterator[tuple[PeerEndpoint, RawPeer]]:
    """Node "me"'s peer link, started, connected to a raw peer p1 with both
    its connections up (a QUERY and a REPLICATE went, and were read)."""
    supervisor = Supervisor("peer test", on_fatal=lambda name, exc: pytest.fail(f"{name} died"))
    sockets = SocketFactory()
    me = PeerEndpoint(sockets, supervisor, "me", f"tcp://127.0.0.1:{free_port()}")
    peer = RawPeer()
    try:
        me.start()
        me.connect({"p1": peer.endpoint})
        # IMMEDIATE: a request goes only once its connection is up.
        until(lambda: me.request("p1", QUERY, {"ids": []}, WAIT, lambda answer: None), "the QUERY's connection")
        until(lambda: me.request("p1", REPLICATE, {"tasks": []}, WAIT, lambda answer: None), "the copies' connection")
        peer.read_both()
        peer.read.clear()
        yield me, peer
    finally:
        supervisor.kill()
        me.close()
        sockets.close()
        peer.close()


def send_backlog(me: PeerEndpoint, answers: list[Any]) -> None:
    """COPIES REPLICATEs of COPY_BYTES each, all sent (the peer reads none yet)."""
    for n in range(COPIES):
        assert me.request("p1", REPLICATE, {"tasks": [], "n": n, "pad": b"x" * COPY_BYTES}, 60.0, answers.append)


def test_a_query_sent_after_a_backlog_of_copies_reaches_the_peer_before_them(link) -> None:
    """Fault: 20 copies of 512 KiB are on their way to a peer that has not
    read them (a burst on a narrow link), then a standby copy asks the peer
    a QUERY. On one DEALER the QUERY arrived after all 20; on its own
    connection it is among the first messages the peer reads."""
    me, peer = link
    send_backlog(me, [])
    assert me.request("p1", QUERY, {"ids": ["t1"]}, 60.0, lambda answer: None)
    green.sleep(0.3)        # both connections deliver what they can; the peer reads nothing yet
    peer.read_until(QUERY)
    order = [command for _, command, _ in peer.read]
    assert order.index(QUERY) < 3, f"the QUERY was message {order.index(QUERY) + 1} of {len(order)} read"
    until(lambda: peer.read_one() and len(peer.read) == COPIES + 1, "the rest of the copies")
    assert sorted(body["n"] for _, command, body in peer.read if command == REPLICATE) == list(range(COPIES))


def test_a_query_is_answered_on_its_own_connection_while_copies_wait_unread(link) -> None:
    """The peer answers the QUERY by the routing id it came from: its
    control connection, not the copies'. The answer reaches the asker while
    every copy is still unanswered. (How many copies the peer read before
    the QUERY depends on whether the QUERY had reached it when it began to
    read -- the test above waits for that -- so it is not asserted here: it
    failed 1 run in about 10 on a loaded host, the QUERY still in flight.)"""
    me, peer = link
    copies: list[Any] = []
    answers: list[Any] = []
    send_backlog(me, copies)
    assert me.request("p1", QUERY, {"ids": ["t1"]}, 60.0, answers.append)
    identity, body = peer.read_until(QUERY)
    copy_connections = {i for i, command, _ in peer.read if command == REPLICATE}
    assert identity not in copy_connections
    peer.answer(identity, body["req"], {"states": {"t1": ["done"]}})
    answer = until(lambda: answers, "the QUERY's answer")[0]
    assert answer["states"] == {"t1": ["done"]}
    assert copies == [] and me.unanswered() == {"p1": COPIES + 2}   # the copies, and the fixture's two probes


def test_each_connection_that_closes_ends_the_requests_sent_on_it_that_have_an_on_lost(link, caplog) -> None:
    """The peer reads a QUERY and a REPLICATE, both with an ``on_lost``, and
    its process exits (both its connections close) before it answers:
    both end at once -- the control connection's monitor ends the QUERY,
    the bulk one's the copy -- not at their 60 s timeout."""
    me, peer = link
    lost: list[bytes] = []
    answers: list[Any] = []
    with caplog.at_level(logging.INFO, logger="miyaq.cluster.peer"):
        assert me.request("p1", QUERY, {"ids": ["t1"]}, 60.0, answers.append, lambda: lost.append(QUERY))
        assert me.request("p1", REPLICATE, {"tasks": []}, 60.0, answers.append, lambda: lost.append(REPLICATE))
        peer.read_both()
        peer.close()
        until(lambda: len(lost) == 2, "both requests to end")
    assert sorted(lost) == [QUERY, REPLICATE] and answers == []
    assert "the control connection to peer p1 closed with 1 request(s) unanswered" in caplog.text
    assert "the bulk connection to peer p1 closed with 1 request(s) unanswered" in caplog.text


def test_a_closed_connection_ends_only_the_requests_of_its_own_channel() -> None:
    """A request's answer comes back on the connection it went on: when only
    one of the two connections to a node closes (its heartbeats timed out,
    say), the requests on the other may still be answered and keep waiting."""
    BULK, CONTROL = peer_requests.BULK, peer_requests.CONTROL
    sent: list[str] = []

    class Link(PeerRequests):
        def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
            sent.append(BULK)
            return True

        def _send_control(self, node_id: str, frames: list[bytes]) -> bool:
            sent.append(CONTROL)
            return True

    link = Link(Supervisor("peer test"), "me", 1 << 20)
    lost: list[bytes] = []
    for command in (QUERY, REPLICATE, SYNC):
        link.request("p1", command, {}, 60.0, lambda answer: None, lambda c=command: lost.append(c))
    assert sent == [CONTROL, BULK, BULK]
    assert link.connection_lost("p1", CONTROL) == 1 and lost == [QUERY]
    assert link.unanswered() == {"p1": 2}
    assert link.connection_lost("p1", BULK) == 2 and lost == [QUERY, REPLICATE, SYNC]
    assert link.unanswered() == {}
    with pytest.raises(ValueError, match="no peer channel 'bulky'"):
        link.connection_lost("p1", "bulky")


def test_a_link_without_a_control_channel_sends_everything_as_before() -> None:
    """A link that knows one channel (the in-memory transport) only has
    ``_send_request``: a QUERY goes there, and ``connection_lost`` with no
    channel ends every request with an ``on_lost``."""
    sent: list[bytes] = []

    class Link(PeerRequests):
        def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
            sent.append(frames[1])
            return True

    link = Link(Supervisor("peer test"), "me", 1 << 20)
    lost: list[bytes] = []
    link.request("p1", QUERY, {}, 60.0, lambda answer: None, lambda: lost.append(QUERY))
    link.request("p1", REPLICATE, {}, 60.0, lambda answer: None, lambda: lost.append(REPLICATE))
    assert sent == [QUERY, REPLICATE]
    assert link.connection_lost("p1") == 2 and lost == [QUERY, REPLICATE]


def test_both_connections_are_closed_when_retired_and_when_the_link_closes(link) -> None:
    """Each member has two DEALERs and two monitors, all distinct; a member
    gone from the ring has all four closed by the reader, and closing the
    link closes those of the members left."""
    me, peer = link
    first = me.links["p1"].sockets()
    assert len(first) == 4 and len({id(s) for s in first}) == 4
    assert me.dealers["p1"] is not me.controls["p1"]
    me.connect({})
    assert me.links == {} and me.dealers == {} and me.endpoints == {}
    until(lambda: all(s.closed for s in first), "the retired sockets to close")
    me.connect({"p1": peer.endpoint})
    second = me.links["p1"].sockets()
    me.close()
    assert all(s.closed for s in second) and me.links == {}


def test_a_link_whose_second_dealer_cannot_be_made_is_left_unmade_and_made_later(monkeypatch, caplog) -> None:
    """Fault: the process runs out of file descriptors between the two
    DEALERs of a member. The one made is closed (a member has both channels
    or none), the member is left for the role to link again, and once
    descriptors are free the link has both."""
    real = SocketFactory.watched_dealer
    made: list[Any] = []
    calls = [0]

    def second_fails(self: SocketFactory, connect: str, **options: Any) -> tuple[Any, Any]:
        calls[0] += 1
        if calls[0] == 2:
            raise zmq.ZMQError(errno.EMFILE)
        pair = real(self, connect, **options)
        made.extend(pair)
        return pair

    monkeypatch.setattr(SocketFactory, "watched_dealer", second_fails)
    supervisor = Supervisor("peer test")
    sockets = SocketFactory()
    me = PeerEndpoint(sockets, supervisor, "me", f"tcp://127.0.0.1:{free_port()}")
    try:
        with caplog.at_level(logging.WARNING):
            me.connect({"p1": f"tcp://127.0.0.1:{free_port()}"})
        assert me.unlinked == {"p1"} and me.links == {}
        assert len(made) == 2 and all(s.closed for s in made)
        assert "peer link: no socket to member p1 now" in caplog.text
        me.connect({"p1": f"tcp://127.0.0.1:{free_port()}"})
        assert me.unlinked == set() and sorted(me.links["p1"].dealers) == [peer_requests.BULK,
                                                                           peer_requests.CONTROL]
    finally:
        me.close()
        sockets.close()


def test_both_dealers_of_a_member_are_made_alike(link) -> None:
    """The control DEALER has every option the bulk one has: IMMEDIATE,
    the reconnect backoff, ZMTP heartbeats, the peer frame limit."""
    me, _ = link
    options = (zmq.IMMEDIATE, zmq.RECONNECT_IVL, zmq.RECONNECT_IVL_MAX, zmq.HEARTBEAT_IVL, zmq.HEARTBEAT_TIMEOUT,
               zmq.MAXMSGSIZE, zmq.LINGER, zmq.SNDHWM, zmq.RCVHWM)
    bulk, control = me.dealers["p1"], me.controls["p1"]
    assert [bulk.getsockopt(o) for o in options] == [control.getsockopt(o) for o in options]
    assert control.getsockopt(zmq.IMMEDIATE) == 1 and control.getsockopt(zmq.HEARTBEAT_IVL) > 0
    assert control.getsockopt(zmq.MAXMSGSIZE) == me.sockets.frame_limit


def test_a_loop_on_one_channel_remakes_that_channel_alone(link, monkeypatch) -> None:
    """Fault: the control connection loops back to this node (its own QUERY
    comes back to it: a TCP self-connect) while the copies' connection is
    healthy, a REPLICATE in flight on it, and another member waits to be
    linked (no socket for it at the last try). Before, the loop made both
    DEALERs anew: the REPLICATE's answer, sent on the old copies'
    connection, was never read (its callback got silence at its deadline,
    its ``on_lost`` never ran), and the waiting member was dropped from
    the ones the role links again. Now only the looped DEALER is made anew."""
    me, peer = link
    bulk_before, control_before = me.dealers["p1"], me.controls["p1"]
    me.unlinked.add("p2")      # as connect() leaves a member it had no socket for
    answers: list[Any] = []
    assert me.request("p1", REPLICATE, {"tasks": []}, 60.0, answers.append, on_lost=lambda: answers.append("lost"))
    rep_identity, rep_body = peer.read_until(REPLICATE)
    assert me.request("p1", QUERY, {"ids": ["t"]}, 60.0, lambda answer: None)
    q_identity, q_body = peer.read_until(QUERY)
    # The control DEALER reads a request, its own: a loop.
    peer.sock.send_multipart([q_identity, TAG, QUERY, msgpack.packb(q_body)])
    until(lambda: me.controls["p1"] is not control_before, "the control DEALER made anew")
    assert me.dealers["p1"] is bulk_before
    assert me.unlinked == {"p2"}
    peer.answer(rep_identity, rep_body["req"], {"ids": []})
    got = until(lambda: answers, "the REPLICATE's answer")
    assert got[0] not in ("lost", None) and got[0]["ids"] == [], got
    until(lambda: me.request("p1", QUERY, {"ids": []}, WAIT, lambda answer: None), "the new control connection")
    peer.read_until(QUERY)


def test_an_answer_read_after_its_deadline_because_a_burst_was_cut_short_is_not_taken_for_silence(
        link, monkeypatch) -> None:
    """Fault (chaos, seed 87, 2026-12-08, a machine under heavy load): the
    answer reader handled one answer slowly (a loaded hub, a large answer:
    past its 20 ms share of the hub, ``HUB_SLICE``), so it ended its burst
    with the next answer still unread in the socket -- and then expired the
    requests whose deadline had come meanwhile. A QUERY whose answer had
    come in time was called back with silence, and the standby copy that
    asked could run a task the "silent" holder held ready (the run had seven
    tasks run twice, 0.2-0.8 s apart, by a node that had just rejoined and
    was resyncing; its logs do not say which answer was late). Now a burst
    cut short expires nothing: the next one reads what was left first
    (``EXPIRY_HOLD_MAX`` bounds how long).

    The peer answers two QUERYs at once; the first's callback holds the hub
    past HUB_SLICE (real time) while the node's clock moves past the
    second's deadline (a patched clock, not a wait: nothing here is timed)."""
    me, peer = link
    shift = [0.0]
    monkeypatch.setattr(peer_module, "monotonic", lambda: time.monotonic() + shift[0])
    got: dict[str, Any] = {}
    second_timeout = 30.0

    def slow(answer: Any) -> None:
        got["first"] = answer
        shift[0] = second_timeout + 1.0     # the second QUERY's deadline has passed meanwhile
        held = time.monotonic()
        while time.monotonic() - held <= 2 * HUB_SLICE:
            time.sleep(HUB_SLICE / 4)       # blocking: the hub (and the answer reader) waits

    assert me.request("p1", QUERY, {"ids": ["t1"]}, 60.0, slow)
    assert me.request("p1", QUERY, {"ids": ["t2"]}, second_timeout, lambda answer: got.setdefault("second", answer))
    until(lambda: peer.read_one() and sum(command == QUERY for _, command, _ in peer.read) == 2, "both QUERYs")
    (first_id, _, first), (second_id, _, second) = [r for r in peer.read if r[1] == QUERY]
    peer.answer(first_id, first["req"], {"states": {"t1": ["done"]}})
    peer.answer(second_id, second["req"], {"states": {"t2": ["ready", False, 0, 0.0]}})
    until(lambda: "second" in got, "the second QUERY's callback")
    assert got["first"]["states"] == {"t1": ["done"]}
    assert got["second"] is not None, "an answer that came before its deadline was taken for silence"
    assert got["second"]["states"] == {"t2": ["ready", False, 0, 0.0]}


def test_a_reader_whose_bursts_all_end_with_answers_unread_still_expires_its_requests(link, monkeypatch) -> None:
    """The hold on expiring is bounded: a reader whose every burst ends
    with answers unread (here none is ever read: its share of the hub is
    always spent) still calls back a request that got no answer with
    silence once ``EXPIRY_HOLD_MAX`` has passed, rather than never. The
    node's clock moves a second at each look (patched: nothing is timed)."""
    me, peer = link
    clock = [time.monotonic()]

    def ticking() -> float:
        clock[0] += 1.0
        return clock[0]

    monkeypatch.setattr(fairness.FairShare, "due", lambda self: True)
    monkeypatch.setattr(peer_module, "monotonic", ticking)
    got: list[Any] = []
    assert me.request("p1", QUERY, {"ids": ["t1"]}, 60.0, lambda answer: got.append(("first", answer)))
    assert me.request("p1", QUERY, {"ids": ["t2"]}, 60.0, lambda answer: got.append(("second", answer)))
    until(lambda: peer.read_one() and sum(command == QUERY for _, command, _ in peer.read) == 2, "both QUERYs")
    identity, _, first = next(r for r in peer.read if r[1] == QUERY)
    peer.answer(identity, first["req"], {"states": {"t1": ["done"]}})     # never read: the socket stays readable
    until(lambda: len(got) == 2, "both QUERYs to end")
    assert sorted(got) == [("first", None), ("second", None)]
