"""A client follows nodes that move: members restarted at a new address (a
container, a pod, a rolling upgrade) leave their old endpoints behind.

The client's core is driven by hand (made-up RING replies, made-up ``now``)
for the rules -- discovery asks a node that can answer; a learned endpoint
no RING reply named for ``DEPARTED_GRACE`` is retired once nothing is in
flight on it, its index reused -- and real threaded and asyncio clients,
against raw ROUTERs playing the nodes, show a new member learned once the
old ones departed (``MAX_NODES`` made small, as in the audit that found the
fault) and the departed connections closed."""
from __future__ import annotations

import asyncio
import threading
import time
from time import monotonic
from typing import Any

import msgpack
import pytest
import zmq

import miyaq
import miyaq.aio
from miyaq.client import learned_nodes
from miyaq.client import nodes as nodes_module
from miyaq.client import operations as ops
from miyaq.client.core import ClientCore
from miyaq.client.nodes import Nodes
from miyaq.constants import DEPARTED_GRACE     # the client retires departed nodes after the cluster's grace
from miyaq.client.pending import Pending
from miyaq.errors import MiyaqError, Unavailable
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import green as green_runtime
from raw_nodes import CountingNode

pytestmark = pytest.mark.timeout(60)

GIVEN = "tcp://127.0.0.1:7450"


def member(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def ring(*ports: int, given: bool = True) -> dict[str, Any]:
    """A RING reply's body naming the members at ``ports`` (and the given node's, with ``given``)."""
    members = {"n0": {"service": GIVEN, "weight": 1}} if given else {}
    members.update({f"n{port}": {"service": member(port), "weight": 1} for port in ports})
    return {"epoch": 1, "vnodes": 16, "members": members}


class Transport:
    """The core's transport, as the drivers do it: a new connection opens at
    :attr:`Nodes.next_slot`; ``disconnect`` closes one; ``up`` are connected."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        self.open: dict[int, str] = dict(enumerate(nodes.endpoints))
        self.up: set[int] = set(self.open)
        self.sent: list[tuple[int, bytes, dict[str, Any]]] = []
        self.closed: list[str] = []

    def send(self, node: int, frames: list[bytes]) -> bool:
        if node not in self.up or node not in self.open:
            return False
        self.sent.append((node, frames[1], msgpack.unpackb(frames[2], raw=False)))
        return True

    def connect(self, endpoint: str) -> bool:
        slot = self.nodes.next_slot
        assert slot not in self.open, "dialled over an open connection"
        self.open[slot] = endpoint
        self.up.add(slot)
        return True

    def disconnect(self, node: int) -> None:
        self.closed.append(self.open.pop(node))
        self.up.discard(node)

    def reconnect(self, node: int) -> None:
        pass

    def rings(self) -> list[tuple[int, int]]:
        """(node, req) of each RING sent since last asked."""
        asked = [(node, body["req"]) for node, command, body in self.sent if command == c.RING]
        self.sent = [s for s in self.sent if s[1] != c.RING]
        return asked


class Waiter:
    def __init__(self) -> None:
        self.outcome: Any = None

    def set(self, value: Any) -> None:
        self.outcome = value

    def fail(self, error: MiyaqError) -> None:
        self.outcome = error


def client_core(given: int = 1) -> tuple[ClientCore, Nodes, Transport]:
    nodes = Nodes([GIVEN] + [member(7000 + i) for i in range(1, given)], discover=False)
    transport = Transport(nodes)
    return ClientCore(transport, nodes, max_batch=64, ack_timeout=5.0, max_message=1 << 20), nodes, transport


def three_nodes_up(up: set[int]) -> tuple[ClientCore, Nodes, Transport]:
    """A core of three given nodes (discovering), those of ``up`` connected, the others down."""
    nodes = Nodes([GIVEN, member(7001), member(7002)])
    transport = Transport(nodes)
    core = ClientCore(transport, nodes, max_batch=64, ack_timeout=5.0, max_message=1 << 20)
    for node in range(3):
        nodes.mark(node, node in up)
    transport.up = set(up)
    return core, nodes, transport


def answer_ring(core: ClientCore, node: int, body: dict[str, Any], now: float) -> None:
    """Node ``node`` answers a RING (the core's limits ask: the reply it reads as its own)."""
    core._ask_limits(node)
    transport = core.transport
    assert isinstance(transport, Transport)
    (asked, req), = transport.rings()
    assert asked == node
    core.on_frames(node, codec.encode(c.REPLY, {**body, "req": req}), now)


# -- the core ---------------------------------------------------------------------------------

def test_discovery_asks_a_node_whose_connection_is_up() -> None:
    """Fault: two of a client's three nodes are down (their connections
    closed: the nodes moved); discovery asked them in their turn, round-robin,
    and two rounds in three reached nobody. Every round now asks the one
    node that is up."""
    core, nodes, transport = three_nodes_up({2})
    now = 0.0
    for _ in range(6):
        core.on_timer(now)
        now += nodes_module.DISCOVERY_INTERVAL
    assert [node for node, _ in transport.rings()] == [2] * 6


def test_discovery_spreads_over_the_nodes_that_are_up() -> None:
    """Fault: as above, with two nodes up: both are asked in turn, the down one never."""
    core, nodes, transport = three_nodes_up({0, 2})
    now = 0.0
    for _ in range(4):
        core.on_timer(now)
        now += nodes_module.DISCOVERY_INTERVAL
    assert sorted(node for node, _ in transport.rings()) == [0, 0, 2, 2]


def test_a_member_gone_from_the_ring_for_the_grace_is_retired_and_its_index_reused(monkeypatch) -> None:
    """Fault: the members of a cluster restart at new addresses, one after
    another, with the client's endpoints bounded (``MAX_NODES`` 3: the
    given node and two learned). The client kept every endpoint it ever
    learned and, full, learned no new one: its submits went to dead
    endpoints. Now a learned endpoint no RING reply named for
    ``DEPARTED_GRACE`` seconds is closed and its index given to the next
    new member; the given endpoint stays whatever the ring says."""
    monkeypatch.setattr(learned_nodes, "MAX_NODES", 3)
    core, nodes, transport = client_core()
    answer_ring(core, 0, ring(7001, 7002), 0.0)
    assert nodes.in_use() == [GIVEN, member(7001), member(7002)]
    # 7001 restarts as 7003: not learned while 7001 is within its grace (no room).
    answer_ring(core, 0, ring(7002, 7003), 10.0)
    assert nodes.in_use() == [GIVEN, member(7001), member(7002)] and transport.closed == []
    answer_ring(core, 2, ring(7002, 7003, given=False), DEPARTED_GRACE - 1)
    assert transport.closed == []
    # The grace passed: 7001 is closed and its index retired; 7002 (named) and the
    # given endpoint (named by no reply since 10 s) stay. The index is reused
    # only REUSE_AFTER later: 7003 takes it then.
    answer_ring(core, 2, ring(7002, 7003, given=False), DEPARTED_GRACE + 11)
    assert transport.closed == [member(7001)] and nodes.retired == {1}
    answer_ring(core, 2, ring(7002, 7003, given=False), DEPARTED_GRACE + 11 + learned_nodes.REUSE_AFTER)
    assert nodes.endpoints == [GIVEN, member(7003), member(7002)] and not nodes.retired
    assert transport.open == {0: GIVEN, 1: member(7003), 2: member(7002)}
    assert nodes.index(member(7003)) == 1
    with pytest.raises(ValueError):
        nodes.index(member(7001))
    # The placement names only the members of the reply, by their indexes.
    placement = nodes.placement
    assert placement is not None and sorted(placement.index.values()) == [1, 2]


def test_a_retired_index_is_left_free_and_skipped_until_a_new_member_takes_it(monkeypatch) -> None:
    """Fault: a member left for good (no one came in its place): its
    connection stayed, asked round-robin by submits and requests for ever.
    Retired, its index is never picked, ordered or found by its endpoint
    again; a later member takes it."""
    core, nodes, transport = client_core()
    answer_ring(core, 0, ring(7001, 7002), 0.0)
    answer_ring(core, 0, ring(7002), DEPARTED_GRACE)
    assert transport.closed == [member(7001)] and nodes.retired == {1}
    assert nodes.in_use() == [GIVEN, member(7002)] and not nodes.knows(member(7001))
    assert {nodes.pick() for _ in range(12)} == {0, 2}
    assert nodes.order(None) == [0, 2]
    answer_ring(core, 0, ring(7002, 7001), DEPARTED_GRACE + 5)     # it came back at the same address
    assert nodes.in_use() == [GIVEN, member(7001), member(7002)] and transport.open[1] == member(7001)


@pytest.mark.parametrize("in_flight", ["unacknowledged submit", "result wait", "unsent request",
                                       "limits ask"])
def test_a_departed_member_with_something_in_flight_is_kept_until_it_is_answered(in_flight: str) -> None:
    """Fault: a member left the ring while the client waited on it (a submit
    it had not acknowledged, a RESULT long-poll it held): closing its
    connection then would lose the answer on the way. It is kept until
    nothing is in flight on it, then retired at the next RING reply."""
    core, nodes, transport = client_core()
    answer_ring(core, 0, ring(7001), 0.0)
    now = 1.0
    waiter = Waiter()
    if in_flight == "unacknowledged submit":
        p = Pending({"id": "t1", "name": "echo", "body": b""}, waiter, now, now + 1000.0)
        p.node = 1
        core.submit(p, now)
        assert [node for node, command, _ in transport.sent if command == c.SUBMIT] == [1]
    elif in_flight == "result wait":
        core.request(1, c.RESULT, {"req": core.next_req(), "id": "t1", "timeout": 300.0}, waiter, now + 1000.0, now)
    elif in_flight == "unsent request":
        transport.up.discard(1)
        core.request(1, c.TASK, {"req": core.next_req(), "id": "t1"}, waiter, now + 1000.0, now)
        assert core.requests.unsent
    else:
        core._ask_limits(1)
    transport.sent.clear()
    answer_ring(core, 0, ring(), DEPARTED_GRACE + 2)
    assert transport.closed == [] and nodes.in_use() == [GIVEN, member(7001)]
    # The answer comes; the next RING reply retires it.
    if in_flight == "unacknowledged submit":
        core.on_frames(1, codec.encode(c.SUBMITTED, {"results": [["t1", "accepted", None]]}), DEPARTED_GRACE + 3)
    elif in_flight == "result wait":
        req = next(iter(core.requests.open))
        core.on_frames(1, codec.encode(c.REPLY, {"req": req, "state": "done", "result": b""}), DEPARTED_GRACE + 3)
    elif in_flight == "unsent request":
        core.on_timer(DEPARTED_GRACE + 3)           # past its wait for a connection: it fails
    else:
        (req, _), = core._limits_asks.items()
        core.on_frames(1, codec.encode(c.REPLY, {"req": req, **ring()}), DEPARTED_GRACE + 3)
    assert waiter.outcome is not None or in_flight == "limits ask"
    answer_ring(core, 0, ring(), DEPARTED_GRACE + 2000.0)
    assert transport.closed == [member(7001)] and nodes.in_use() == [GIVEN]


def test_a_result_wait_on_a_retired_node_asks_the_others() -> None:
    """Fault: a task's handle names the node that accepted it; that node left
    the ring and was retired. ``result()`` raised ValueError ("not one this
    client knows") instead of asking the nodes that hold the task now."""
    core, nodes, transport = client_core()
    answer_ring(core, 0, ring(7001, 7002), 0.0)
    answer_ring(core, 0, ring(7002), DEPARTED_GRACE)
    assert nodes.retired == {1}
    op = ops.wait_result(nodes, "t1", 10.0, member(7001), 5.0)
    ask = next(op)
    assert isinstance(ask, ops.Ask) and ask.node == 0
    with pytest.raises(StopIteration) as done:
        op.send({"state": "done", "result": b""})
    assert done.value.value == {"state": "done", "result": b""}


def test_a_result_wait_whose_node_is_retired_while_another_holds_it_asks_on() -> None:
    """Fault: the node that accepted a task closed its connection during a
    ``result()``; the wait moved on to another node, which held the
    long-poll, and meanwhile the first was retired (it left the ring). When
    that long-poll ended without an outcome, the next round asked the
    retired node first by its endpoint: ``ValueError`` ("not one this client
    knows") instead of the result (an audit's run; a rolling upgrade under a
    long ``call()``). Each round now checks the node is still known."""
    core, nodes, transport = client_core()
    answer_ring(core, 0, ring(7001, 7002), 0.0)
    op = ops.wait_result(nodes, "t1", 60.0, member(7001), 5.0)
    first = next(op)
    assert isinstance(first, ops.Ask) and first.node == 1
    answer_ring(core, 0, ring(7002), DEPARTED_GRACE)      # node 1 left the ring meanwhile
    assert nodes.retired == {1}
    again = op.send({"state": "ready", "timeout": True})  # that round ended without an outcome
    assert isinstance(again, ops.Ask) and again.node != 1 and again.command == c.RESULT


def test_a_request_naming_a_node_retired_before_it_was_sent_is_not_answered_by_another(monkeypatch) -> None:
    """Fault: a caller turned ``node=`` into its index in its own thread;
    before its request reached the core, a RING reply retired that node and
    gave its index to a new member at once -- the request went to the new
    member, whose answer was read as the named node's (a review audit: 4 of
    1,000 ``status(node=...)`` calls). A retired index is reused only
    ``REUSE_AFTER`` later, and a request that finds its index retired fails
    ``Unavailable``."""
    monkeypatch.setattr(learned_nodes, "MAX_NODES", 3)
    core, nodes, transport = client_core()
    answer_ring(core, 0, ring(7001, 7002), 0.0)
    named = nodes.index(member(7001))           # in the caller's thread
    answer_ring(core, 0, ring(7002, 7003), DEPARTED_GRACE + 1)     # 7001 left; 7003 is new
    waiter = Waiter()
    core.request(named, c.STATUS, {"req": core.next_req()}, waiter, DEPARTED_GRACE + 60, DEPARTED_GRACE + 1)
    assert not [s for s in transport.sent if s[1] == c.STATUS]      # sent to nobody, least of all 7003
    assert isinstance(waiter.outcome, Unavailable) and "left the ring" in waiter.outcome.message


def test_a_node_reached_on_a_unix_socket_keeps_only_its_current_tcp_name() -> None:
    """Fault: a client given a node's unix socket took every TCP endpoint
    that node ever named as its own for good; the node moved its TCP service
    and a new member came up at the old address: the client never dialled
    the new member, and a request naming it went to the old node over the
    socket (a review audit). A node reached on a unix socket keeps one
    alias, its current TCP endpoint."""
    local = "ipc:///tmp/miyaq-test-a.sock"
    nodes = Nodes([local], discover=False)
    dialled: list[str] = []

    def dial(endpoint: str) -> bool:
        dialled.append(endpoint)
        return True

    first = {"node": "a", "epoch": 1, "vnodes": 16, "members": {"a": {"service": member(7001), "weight": 1}}}
    nodes.from_ring(first, local, dial, now=0.0)
    assert nodes.aliases == {member(7001): 0} and dialled == []
    moved = {"node": "a", "epoch": 2, "vnodes": 16,
             "members": {"a": {"service": member(7002), "weight": 1}, "b": {"service": member(7001), "weight": 1}}}
    assert nodes.from_ring(moved, local, dial, now=1.0) == [member(7001)]
    assert nodes.aliases == {member(7002): 0}
    assert nodes.index(member(7001)) == 1 and nodes.index(member(7002)) == 0


# -- real clients -----------------------------------------------------------------------------

class MovingCluster:
    """Raw ROUTERs playing a cluster's nodes: each answers a RING with the
    ring of the moment (:meth:`set_ring`) and any other request with an empty
    REPLY, in a thread of their own; a monitor on each tells when a client's
    connection to it closed."""

    def __init__(self, count: int) -> None:
        self.nodes = [CountingNode() for _ in range(count)]
        self.monitors = [node.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED) for node in self.nodes]
        self.lost: list[int] = [0] * count        # connections each saw close
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="moving-cluster", daemon=True)

    def set_ring(self, *members: int) -> None:
        """The ring names the nodes of these indexes (the first: the one the client was given)."""
        body = {"epoch": 1, "vnodes": 16,
                "members": {f"n{i}": {"service": self.nodes[i].endpoint, "weight": 1} for i in members}}
        for node in self.nodes:
            node.replies = {c.RING: body}

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self.nodes:
                node.pump(5)

    def count_lost(self) -> list[int]:
        for i, monitor in enumerate(self.monitors):
            while monitor.poll(0):
                monitor.recv_multipart()
                self.lost[i] += 1
        return self.lost

    def __enter__(self) -> "MovingCluster":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        for node, monitor in zip(self.nodes, self.monitors):
            monitor.close(0)
            node.sock.disable_monitor()
            node.close()


def quick_discovery(monkeypatch: Any) -> None:
    """Discovery every 50 ms, a grace of 0.3 s, and room for three endpoints
    (the audit's fault: the bound reached while every member moved); a
    retired index is free again after 0.5 s instead of ``REUSE_AFTER``'s 5 s
    (the tests of the core above check that wait on a made-up clock: here
    each test waited 5 s for it)."""
    monkeypatch.setattr(nodes_module, "DISCOVERY_INTERVAL", 0.05)
    monkeypatch.setattr(nodes_module, "FIRST_DISCOVERY_GAP", 0.05)
    monkeypatch.setattr(learned_nodes, "DEPARTED_GRACE", 0.3)
    monkeypatch.setattr(learned_nodes, "MAX_NODES", 3)
    monkeypatch.setattr(learned_nodes, "REUSE_AFTER", 0.5)


def sleeping_until(sleep: Any) -> Any:
    """``wait_for`` sleeping with ``sleep`` (gevent's: the gevent client runs only while the test waits)."""
    def until(predicate: Any, what: str) -> None:
        deadline = monotonic() + 15.0
        while not predicate():
            assert monotonic() < deadline, f"timed out waiting for {what}"
            sleep(0.01)
    return until


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_a_client_learns_members_that_moved_and_closes_the_old_connections(monkeypatch, green: bool) -> None:
    """Fault: both learned members of a cluster restart at new addresses
    while the client's endpoints are at their bound (``MAX_NODES`` 3, as the
    audit lowered it): the client kept the dead endpoints, learned none of
    the new ones, and its submits failed "no connection to ...". Now the
    departed ones are closed (their nodes see the connection go) and the new
    members take their places; a request reaches a new member. The threaded
    client and the gevent client (the I/O loop's poller) alike."""
    quick_discovery(monkeypatch)
    until = sleeping_until(green_runtime.sleep if green else time.sleep)
    with MovingCluster(5) as cluster:
        given, old1, old2, new1, new2 = (node.endpoint for node in cluster.nodes)
        cluster.set_ring(0, 1, 2)
        client = miyaq.Client([given], request_timeout=5.0, green=green)
        try:
            until(lambda: set(client.nodes.in_use()) == {given, old1, old2} and len(client.nodes.up) == 3,
                  "the two members learned and connected")
            cluster.set_ring(0, 3, 4)
            until(lambda: set(client.nodes.in_use()) == {given, new1, new2}, "the moved members learned")
            until(lambda: cluster.count_lost()[1:3] == [1, 1], "the departed connections closed")
            assert len(client.nodes.endpoints) == 3 and cluster.count_lost()[3:] == [0, 0]
            assert client.status(node=new2) == {}
            assert sum(sock is not None for sock in client._io.socks) == 3
        finally:
            client.close(flush=False)


def test_an_asyncio_client_learns_members_that_moved_and_closes_the_old_connections(monkeypatch) -> None:
    """Fault: as for the threaded client, with the asyncio client's driver
    (it must close the departed connections and stop their readers)."""
    quick_discovery(monkeypatch)
    with MovingCluster(5) as cluster:
        given, old1, old2, new1, new2 = (node.endpoint for node in cluster.nodes)
        cluster.set_ring(0, 1, 2)

        async def until(predicate: Any, what: str) -> None:
            for _ in range(1500):
                if predicate():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"timed out waiting for {what}")

        async def main() -> None:
            async with miyaq.aio.Client(given, request_timeout=5.0) as client:
                await client.status()          # starts the driver
                nodes = client._io.nodes
                await until(lambda: set(nodes.in_use()) == {given, old1, old2} and len(nodes.up) == 3,
                            "the two members learned and connected")
                cluster.set_ring(0, 3, 4)
                await until(lambda: set(nodes.in_use()) == {given, new1, new2}, "the moved members learned")
                await until(lambda: cluster.count_lost()[1:3] == [1, 1], "the departed connections closed")
                assert await client.status(node=new1) == {}
                readers = client._io._readers
                assert sorted(readers) == [0, 1, 2] and all(not t.done() for ts in readers.values() for t in ts)

        asyncio.run(asyncio.wait_for(main(), 40))
