"""A worker follows the ring's members: a node the ring no longer names
(it came back at another address, it was removed) stops being linked to
once the grace is over and nothing of it is held here. Raw ROUTERs play the
nodes (tests/played_node.py): the test sends the ``nodes`` lists a ring
would; endpoints where nothing listens stand for nodes gone. A real
:class:`~miyaq.worker.runner.Worker` runs in a thread. No timing is
asserted: waits are bounded guards (``wait_for``), and a RECONNECT answered
by a READY tells the test the worker has read what came before it."""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import pytest
from fuzz_inputs import pack
from played_node import PlayedNode

import miyaq
import miyaq.worker.ring as ring
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import green
from miyaq.testing.harness import refusing_port, wait_for

pytestmark = pytest.mark.timeout(60)

app = miyaq.App()
released: set[str] = set()      # the "hold" tasks the test lets end


@app.task(name="hold")
def hold(name: str) -> str:
    while name not in released:
        green.sleep(0.01)
    return name


class RingNode(PlayedNode):
    """A played node that counts the READYs it got, and names the ring's
    members in the heartbeats the test has it send."""

    def __init__(self) -> None:
        super().__init__()
        self.readies = 0

    def read(self, peer: bytes, command: bytes, data: Any) -> None:
        if command == c.READY:
            self.readies += 1
        super().read(peer, command, data)

    def ring(self, *endpoints: str) -> None:
        """A HEARTBEAT naming ``endpoints`` as the ring's members."""
        self.send(codec.encode(c.HEARTBEAT, {"node": "n0", "nodes": list(endpoints)}))

    def read_so_far(self) -> None:
        """Return once the worker has handled everything sent it before: it
        answers a RECONNECT with a READY, after what came first."""
        seen = self.readies
        self.send([c.TAG, c.RECONNECT, pack({})])
        wait_for(lambda: self.pump() or self.readies > seen, what="the worker's READY after a RECONNECT")


@pytest.fixture
def played():
    """Factory for played nodes, closed at the end."""
    made: list[RingNode] = []

    def make() -> RingNode:
        node = RingNode()
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


@pytest.fixture
def nowhere():
    """Factory for endpoints where nothing listens (nodes gone), held until the end."""
    with ExitStack() as stack:
        yield lambda: f"tcp://127.0.0.1:{stack.enter_context(refusing_port())}"


@pytest.fixture
def grace(monkeypatch):
    """Set the departed-node grace (seconds); every list heard checks for links to retire."""
    monkeypatch.setattr(ring, "DEPARTED_NODE_CHECK", 0.0)
    return lambda seconds: monkeypatch.setattr(ring, "DEPARTED_NODE_GRACE", seconds)


def linked_worker(node: RingNode, thread_worker: Any, endpoints: list[str], **options: Any) -> Any:
    worker = thread_worker(app, endpoints, **options).worker
    wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
    return worker


def endpoints_of(worker: Any) -> set[str]:
    return {link.endpoint for link in list(worker.links)}


def test_a_link_to_a_node_the_ring_no_longer_names_is_retired(played, nowhere, grace, thread_worker) -> None:
    """Fault: a node of the ring came back at a new address (a container
    with a new IP); the ring no longer names its old one. Before, the
    worker kept its link to the old address for ever: it retried it, logged
    that it could not reach it about once a minute, and its heartbeat thread
    kept a socket to it. Now, once no list has named it for the grace, the
    link is retired: its socket, monitor and greenlets closed, the heartbeat
    thread's socket too. A node named again before the grace is kept, and
    an endpoint given to the worker is never retired, named or not."""
    grace(0.2)
    a, gone, given = played(), nowhere(), nowhere()
    worker = linked_worker(a, thread_worker, [a.endpoint, given])
    a.ring(a.endpoint, gone)
    wait_for(lambda: a.pump() or endpoints_of(worker) == {a.endpoint, gone, given}, what="the ring's node linked")
    wait_for(lambda: worker.pulse.sockets == 3, what="heartbeats to three nodes")
    link = next(link for link in list(worker.links) if link.endpoint == gone)

    a.ring(a.endpoint)
    a.read_so_far()
    assert link.absent_since is not None
    a.ring(a.endpoint, gone)        # named again: its absence starts over
    a.read_so_far()
    assert link.absent_since is None and gone in endpoints_of(worker)

    wait_for(lambda: a.ring(a.endpoint) or a.pump() or gone not in endpoints_of(worker),
             what="the link to the departed node retired")
    assert endpoints_of(worker) == {a.endpoint, given}
    assert link.retired and link.sock is None and link.monitor is None
    assert worker.pulse.endpoints == [a.endpoint, given]
    wait_for(lambda: worker.pulse.sockets == 2, what="the heartbeat thread's socket to it closed")
    wait_for(lambda: not [name for name in worker.supervisor.live() if gone in name],
             what="the link's greenlets ended")
    a.read_so_far()         # the worker still serves the node that remains


def test_a_link_that_holds_a_running_task_is_retired_once_it_finished(played, grace, thread_worker) -> None:
    """Fault: a node left the ring while a task it gave this worker ran
    here. Before, the link to it was never retired (see above); retired at
    once, the task's result would have had no way to its node. Now the link
    stays while the task runs and its result waits to be sent, and is
    retired once the node has it."""
    grace(0.0)
    a, b = played(), played()
    worker = linked_worker(a, thread_worker, [a.endpoint], concurrency=1)
    a.ring(a.endpoint, b.endpoint)
    wait_for(lambda: a.pump() or b.pump() or b.link is not None, what="the worker's READY to the ring's node")
    b.send([c.TAG, c.DISPATCH, pack({"tasks": [["t1", "default", "hold", pack([["t1"], {}]), 1, 30.0]]})])
    wait_for(lambda: b.pump() or "t1" in worker.running, what="the task running")

    a.ring(a.endpoint)
    a.read_so_far()
    assert b.endpoint in endpoints_of(worker)      # past the grace, but it holds the running task

    released.add("t1")
    wait_for(lambda: b.pump() or "t1" in b.done, what="the result at its node")
    wait_for(lambda: a.ring(a.endpoint) or a.pump() or endpoints_of(worker) == {a.endpoint},
             what="the link retired once it held nothing")
    assert worker.pulse.endpoints == [a.endpoint]


def test_new_nodes_are_linked_past_max_nodes_once_old_ones_departed(played, nowhere, grace, thread_worker,
                                                                      monkeypatch) -> None:
    """Fault: the ring's nodes came back at new addresses again and again
    (rolling restarts of containers). Before, each address added a link and
    none went, and past MAX_NODES (256) the worker linked no new node: it
    ended linked only to dead addresses while the live nodes had no worker
    (an audit's run, the limit lowered to 6). Now the old addresses are
    retired, and each new node is linked and registered with."""
    grace(0.0)
    monkeypatch.setattr(ring, "MAX_NODES", 3)
    a = played()
    worker = linked_worker(a, thread_worker, [a.endpoint])
    for _ in range(4):
        moved = nowhere()
        a.ring(a.endpoint, moved)
        wait_for(lambda: a.pump() or endpoints_of(worker) == {a.endpoint, moved}, what="the node at its new address")
    last = played()
    a.ring(a.endpoint, last.endpoint)
    wait_for(lambda: a.pump() or last.pump() or last.link is not None, what="the worker's READY to the last node")
    assert endpoints_of(worker) == {a.endpoint, last.endpoint}
    wait_for(lambda: worker.pulse.sockets == 2, what="heartbeats to the two members only")


def test_a_node_whose_own_lists_leave_it_out_is_retired_from_its_own_link(played, grace, thread_worker) -> None:
    """Fault: a node taken out of the ring runs on (drained, say) and its
    heartbeats name the ring without it. Before, the worker kept its link
    for good. Now the list that retires the link may come on that link
    itself: its reader, the greenlet handling the list, closes its own
    socket and ends without a crash (a reader that died would stop the
    worker), and the worker serves its other node on."""
    grace(0.0)
    a, b = played(), played()
    worker = linked_worker(a, thread_worker, [a.endpoint])
    a.ring(a.endpoint, b.endpoint)
    wait_for(lambda: a.pump() or b.pump() or b.link is not None, what="the worker's READY to the ring's node")
    wait_for(lambda: b.ring(a.endpoint) or b.pump() or endpoints_of(worker) == {a.endpoint},
             what="the link retired on its own list")
    wait_for(lambda: not [name for name in worker.supervisor.live() if b.endpoint in name],
             what="the link's greenlets ended")
    assert not worker.crashed and not worker.supervisor.crashes
    a.read_so_far()
