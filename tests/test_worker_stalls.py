"""What a worker does when its node is slow, when tasks wait in its backlog,
when a backlogged task is cancelled, and when tasks end together. A raw
ROUTER plays the node (tests/played_node.py), in this process or, to be
frozen, in an interpreter of its own; a real
:class:`~miyaq.worker.runner.Worker` runs in a thread. No timing is
asserted: waits are bounded guards (``wait_for``), and silence is counted
in the worker's own heartbeats."""
from __future__ import annotations

from collections import deque
from typing import Any

import gevent.event
import pytest
from fuzz_inputs import pack
from played_node import PlayedNode
from test_frozen_peer import Child

import miyaq
from miyaq.protocol import commands as c
from miyaq.runtime import green
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(90)

app = miyaq.App()
GATES: dict[str, Any] = {}       # name -> gevent Event, made in the worker's hub by the first handler to wait


def gate(name: str) -> Any:
    if name not in GATES:
        GATES[name] = gevent.event.Event()
    return GATES[name]


@app.task(name="nap")
def nap(seconds: float) -> float:
    green.sleep(seconds)
    return seconds


@app.task(name="wait_gate")
def wait_gate(name: str) -> str:
    gate(name).wait(60)
    return name


@app.task(name="open_gate")
def open_gate(name: str) -> str:
    gate(name).set()
    return name


def delivery(task_id: str, name: str, arg: Any, timeout: float = 30.0, attempt: int = 1) -> list[Any]:
    return [task_id, "default", name, pack([[arg], {}]), attempt, timeout]


class StallingNode(PlayedNode):
    """A played node that welcomes with ``heartbeat``, counts what it reads
    (READYs, each worker message by command, touched ids) and can stop
    answering (``answering = False``: it reads on, but sends nothing, as a
    node whose process runs but whose loop is held up)."""

    def __init__(self, heartbeat: float) -> None:
        super().__init__()
        self.heartbeat = heartbeat
        self.answering = True
        self.readies: list[bytes] = []              # the connection of each READY
        self.counts: dict[bytes, int] = {}          # command -> messages read
        self.touched: list[str] = []
        self.done_from: dict[str, bytes] = {}       # task id -> the connection its DONE came on

    def read(self, peer: bytes, command: bytes, data: Any) -> None:
        self.counts[command] = self.counts.get(command, 0) + 1
        if command == c.READY:
            self.readies.append(peer)
        elif command == c.DONE:
            self.done_from.update((item[0], peer) for item in data["done"])
        elif command == c.TOUCH:
            self.touched.extend(data["ids"])
        super().read(peer, command, data)


@pytest.fixture
def children() -> Any:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


@pytest.fixture
def stalling():
    made: list[StallingNode] = []

    def make(heartbeat: float = 60.0) -> StallingNode:
        node = StallingNode(heartbeat)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def linked(node: StallingNode, thread_worker: Any, **options: Any) -> Any:
    worker = thread_worker(app, node.endpoint, **options).worker
    wait_for(lambda: node.pump() or (node.link is not None and worker.links[0].heard), what="the worker registered")
    return worker


def dispatch(node: StallingNode, *deliveries: list[Any]) -> None:
    node.send([c.TAG, c.DISPATCH, pack({"tasks": list(deliveries)})])


# -- a node that is slow, frozen or hung --------------------------------------------------


def test_a_node_silent_with_its_connection_up_keeps_the_worker_registered(stalling, thread_worker,
                                                                             monkeypatch) -> None:
    """Fault: the node's loop is held up (a burst of work, a pause) for
    longer than heartbeat × liveness while its process -- and so its
    ZeroMQ connection -- is alive. Before, the worker took the silence for
    a lost node: it closed its socket (dropping the results queued on it)
    and sent READY on a new one, and the node, reading that READY, put back
    every task the worker held, which then ran twice (200 of 200 for a node
    paused 3.6 s). Now it says the node is slow and keeps its registration:
    no READY again, its heartbeats and the DONE of a task that ended
    meanwhile go on the same connection, and the node answering again ends
    it. (The bound for a hung node is taken out of the way here.)"""
    monkeypatch.setattr("miyaq.worker.link.HUNG_NODE_LIVENESS", 10_000, raising=False)
    node = stalling(heartbeat=0.05)          # silent past 0.15 s: 3 of the worker's beats
    worker = linked(node, thread_worker, concurrency=2, prefetch=0)
    link = worker.links[0]
    dispatch(node, delivery("t1", "nap", 0.3))
    wait_for(lambda: node.pump() or "t1" in worker.running, what="t1 running")
    node.answering = False
    beats = node.counts.get(c.HEARTBEAT, 0)
    # Ten of the worker's heartbeats: over three times the silence it used to reconnect after.
    wait_for(lambda: node.pump() or len(node.readies) > 1
             or (node.counts.get(c.HEARTBEAT, 0) - beats >= 10 and "t1" in node.done),
             what="ten heartbeats and t1's DONE while the node says nothing")
    assert len(node.readies) == 1, "the worker registered again with a node that was only slow"
    assert node.done_from["t1"] == node.readies[0], "t1's DONE left on another connection"
    assert link.reconnects == 0 and link.slow and not link.lost
    node.answering = True
    wait_for(lambda: node.pump() or not link.slow, what="the node heard again")
    dispatch(node, delivery("t2", "nap", 0.0))
    wait_for(lambda: node.pump() or "t2" in node.done, what="t2 run on the same registration")
    assert len(node.readies) == 1


def test_a_node_that_stays_silent_with_its_connection_up_is_taken_for_hung(stalling, thread_worker,
                                                                          monkeypatch) -> None:
    """Fault: the node's process lives (its ZeroMQ thread answers) but its
    loop never answers again (hung). The worker waits HUNG_NODE_LIVENESS ×
    heartbeat × liveness (2 × 0.15 s here), then opens a new socket and
    registers again."""
    monkeypatch.setattr("miyaq.worker.link.HUNG_NODE_LIVENESS", 2)
    node = stalling(heartbeat=0.05)
    worker = linked(node, thread_worker, concurrency=1, prefetch=0)
    node.answering = False
    wait_for(lambda: node.pump() or len(node.readies) > 1, what="a READY on a new connection")
    assert node.readies[0] != node.readies[1]
    assert worker.links[0].reconnects == 1
    node.answering = True
    node.welcome(node.readies[-1])
    dispatch(node, delivery("t1", "nap", 0.0))
    wait_for(lambda: node.pump() or "t1" in node.done, what="t1 run on the new registration")


FROZEN_NODE = """
    import time, msgpack, zmq
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    peers = []
    while True:
        if sock.poll(50):
            peer, tag, command, body = sock.recv_multipart()
            if command == b"READY":
                peers.append(peer)
                print("ready", len(peers), flush=True)
                sock.send_multipart([peer, tag, b"WELCOME", msgpack.packb({"node": "n0", "heartbeat": 0.05})])
        for peer in peers[-1:]:
            sock.send_multipart([peer, b"MQ1", b"HEARTBEAT", msgpack.packb({"node": "n0"})])
"""


def test_a_frozen_node_loses_its_connection_and_the_worker_registers_again(children, thread_worker,
                                                                          monkeypatch) -> None:
    """Fault: the node's process is frozen (SIGSTOP, a paused VM): its
    ZeroMQ thread stops too and answers none of the worker's ZMTP
    heartbeats, so the connection is dropped (after 0.5 s here) and the
    worker registers again on a new one, which the node reads once it
    thaws. The bound for a hung node is out of the way: only the
    connection's closing can do it."""
    monkeypatch.setattr("miyaq.worker.link.HUNG_NODE_LIVENESS", 10_000)
    child = Child(FROZEN_NODE)
    children.append(child)
    endpoint = f"tcp://127.0.0.1:{child.line()}"
    worker = thread_worker(app, endpoint, concurrency=1, prefetch=0, node_timeout=0.5).worker
    assert child.line() == "ready 1"
    link = worker.links[0]
    wait_for(lambda: link.heard, what="the worker welcomed")
    child.freeze()
    try:
        wait_for(lambda: link.reconnects >= 1, what="the frozen node's connection dropped")
    finally:
        child.thaw()
    assert child.line() == "ready 2"


# -- the backlog ------------------------------------------------------------------------------


def test_a_task_that_waited_in_the_backlog_is_touched_as_it_starts(stalling, thread_worker) -> None:
    """Fault: a prefetched task waits in the worker's backlog while the
    node's lease on it runs (from when the node sent it), and the worker
    counted the task's timeout from its start. A task of 0.7 s with a 1 s
    timeout that waited 0.7 s behind another ran on after the node's lease
    ended, and the node ran it again (8 tasks on a worker of concurrency 4:
    12 runs). Now a task that waited over a quarter of its timeout is
    touched as it starts (the node's lease runs a whole timeout from then,
    as the worker's own deadline); one that did not wait is not."""
    node = stalling()
    worker = linked(node, thread_worker, concurrency=1, prefetch=1)
    dispatch(node, delivery("first", "nap", 0.5, timeout=30.0), delivery("behind", "nap", 0.0, timeout=1.0))
    wait_for(lambda: node.pump() or {"first", "behind"} <= set(node.done), what="both tasks run")
    assert "behind" in node.touched, "the task that waited 0.5 s of its 1 s lease was not touched as it started"
    assert "first" not in node.touched
    assert worker.busy_count() == 0


def test_cancelling_a_task_in_a_large_backlog_reads_no_other_delivery(stalling, thread_worker,
                                                                     monkeypatch) -> None:
    """Fault: an ABORT for a task waiting in the backlog searched the backlog
    from its start and deleted from its middle: 2 ms a cancel with 60,000
    waiting, and 0.98 s of the worker's loop held for 2,000 cancels. Now the
    backlog is indexed by task id and a cancelled entry is skipped when a
    runner reaches it. Counted, not timed: the deliveries the abort steps
    over in the backlog's deque."""
    stepped = [0]

    class CountingDeque(deque):                 # type: ignore[type-arg]
        def __iter__(self):                     # type: ignore[no-untyped-def]
            for item in super().__iter__():
                stepped[0] += 1
                yield item

    monkeypatch.setattr("miyaq.worker.runner.deque", CountingDeque)
    monkeypatch.setattr("miyaq.worker.jobs.deque", CountingDeque, raising=False)
    node = stalling()
    waiting = 2000
    worker = linked(node, thread_worker, concurrency=1, prefetch=waiting)
    dispatch(node, delivery("blocker", "wait_gate", "abort"),
             *(delivery(f"t{i}", "nap", 0.0) for i in range(waiting)))
    wait_for(lambda: node.pump() or ("blocker" in worker.running and len(worker.backlog) == waiting),
             what="one task running and 2,000 waiting")
    stepped[0] = 0
    node.send([c.TAG, c.ABORT, pack({"ids": [f"t{waiting - 1}"]})])
    wait_for(lambda: node.pump() or f"t{waiting - 1}" in node.failed, what="the cancelled task reported")
    assert node.failed[f"t{waiting - 1}"]["type"] == "Aborted"
    assert stepped[0] <= 1, f"one cancel stepped over {stepped[0]} waiting deliveries"
    assert len(worker.backlog) == waiting - 1
    node.send([c.TAG, c.ABORT, pack({"ids": ["blocker"]})])
    wait_for(lambda: node.pump() or len(node.done) == waiting - 1, what="the rest run in order")
    assert f"t{waiting - 1}" not in node.done
    assert [r[1] for r in node.reports if r[0] == "done" and r[1].startswith("t")] == \
        [f"t{i}" for i in range(waiting - 1)]


# -- results that leave together ------------------------------------------------------------


def test_tasks_that_end_together_share_a_done(stalling, thread_worker) -> None:
    """Fault: 1,000 tasks of a gevent worker ending at the same instant sent
    1,000 DONE messages of one result each: with an empty backlog each
    runner sent its own result at once, and runners woken together report
    one after another without yielding. Now only the first runner of a pass
    of the hub sends at once (a lone task's result still leaves without
    waiting), and the rest leave together: 40 tasks released by one event,
    and the one that released them, make two DONE messages."""
    node = stalling()
    together = 40
    worker = linked(node, thread_worker, concurrency=together + 1, prefetch=0)
    dispatch(node, *(delivery(f"t{i}", "wait_gate", "together") for i in range(together)))
    wait_for(lambda: node.pump() or len(worker.running) == together, what="40 tasks waiting at the gate")
    dones = node.counts.get(c.DONE, 0)
    dispatch(node, delivery("opener", "open_gate", "together"))
    wait_for(lambda: node.pump() or len(node.done) == together + 1, what="every task reported")
    assert node.counts.get(c.DONE, 0) - dones <= 2, \
        f"{node.counts.get(c.DONE, 0) - dones} DONE messages for {together + 1} tasks that ended together"
    dispatch(node, delivery("lone", "nap", 0.0))
    wait_for(lambda: node.pump() or "lone" in node.done, what="a lone task's result sent")
