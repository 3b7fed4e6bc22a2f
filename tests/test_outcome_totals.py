"""STATUS ``outcomes`` are counters since start: they never go down.

A node prunes the counters of an empty queue once it holds more than 100
queues (names a producer makes up must not pile up); before, the pruned
queue's outcomes left the node's totals with it.
"""
from __future__ import annotations

import msgpack
import pytest
import zmq

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.protocol import commands as c
from miyaq.protocol.taskspec import task_from_wire
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0      # seconds: a guard against a hang, not a timing assertion
T0 = 1_700_000_000.0
QUEUES = [f"q{i}" for i in range(150)]


class Consumer:
    principal = name = "c"

    def __init__(self) -> None:
        self.running: dict = {}

    def abort(self, ids: list[str]) -> None:
        pass

    def lease_expired(self, task, now: float) -> None:
        pass


def test_pruning_empty_queues_keeps_their_outcomes_in_the_totals() -> None:
    """Fault: 150 queues get a task each, which finishes; the engine prunes
    the emptied queues' counters. The node's totals of each outcome stay
    what they were, while the per-queue series go (names stay bounded)."""
    engine = Engine(NodeConfig())
    consumer = Consumer()
    for i, queue in enumerate(QUEUES):
        engine.submit(task_from_wire({"id": f"t{i}", "name": "echo", "queue": queue}, T0, engine.config), T0)
    for i, queue in enumerate(QUEUES):
        leased = engine.take([queue], T0)
        assert leased is not None
        engine.start(leased, consumer, T0)
        assert engine.complete(f"t{i}", 1, b"ok", T0)
    before = engine.outcome_totals()
    assert before["submitted"] == before["started"] == before["completed"] == 150
    engine.compact_lanes()
    assert not any(queue in QUEUES for queue, _ in engine.outcomes)     # the series are pruned
    assert engine.outcome_totals() == before
    engine.submit(task_from_wire({"id": "late", "name": "echo", "queue": "q0"}, T0, engine.config), T0)
    assert engine.outcome_totals()["submitted"] == 151


def test_status_outcomes_never_go_back_when_queues_are_pruned(make_node, client_for, ctx) -> None:
    """Fault: through STATUS, as the audit saw it: 150 tasks in 150 queues
    finish, their queues are pruned, and ``outcomes`` went from
    ``{'submitted': 150}`` to ``{}``. Now the totals stay."""
    node = make_node()
    client = client_for(node.endpoint)
    producer = ctx.socket(zmq.DEALER)
    producer.setsockopt(zmq.LINGER, 0)
    producer.connect(node.endpoint)
    tasks = [{"id": f"t{i}", "name": "x", "queue": q} for i, q in enumerate(QUEUES)]
    producer.send_multipart([c.TAG, c.SUBMIT, msgpack.packb({"tasks": tasks})])
    assert producer.poll(int(WAIT * 1000)) and producer.recv_multipart()[1] == c.SUBMITTED
    assert client.status()["outcomes"]["submitted"] == 150
    workers = []
    for n, start in enumerate(range(0, 150, 64)):
        worker = ctx.socket(zmq.DEALER)
        worker.setsockopt(zmq.LINGER, 0)
        worker.connect(node.endpoint)
        worker.send_multipart([c.TAG, c.READY, msgpack.packb(
            {"worker": f"w{n}", "queues": QUEUES[start:start + 64], "capacity": 1000})])
        workers.append(worker)
    poller = _poller(workers)
    done = 0
    while done < 150:
        ready = dict(poller.poll(int(WAIT * 1000)))
        assert ready, "no DISPATCH"
        for worker in ready:
            _, command, body = worker.recv_multipart()
            if command == c.DISPATCH:
                leased = msgpack.unpackb(body)["tasks"]
                worker.send_multipart([c.TAG, c.DONE, msgpack.packb({"done": [[t[0], t[4], b"ok"] for t in leased]})])
                done += len(leased)
    for n, worker in enumerate(workers):
        worker.send_multipart([c.TAG, c.BYE, msgpack.packb({"worker": f"w{n}"})])
    wait_for(lambda: not set(QUEUES) & set(client.status()["queues"]), timeout=WAIT, what="the empty queues pruned")
    outcomes = client.status()["outcomes"]
    assert [outcomes.get(o) for o in ("submitted", "started", "completed")] == [150] * 3, outcomes


def _poller(sockets: list[zmq.Socket]) -> zmq.Poller:
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    return poller
