"""Fuzz a worker with what a buggy or hostile node can send it.

A node is trusted no more than a client (docs/security.md): a worker must
survive whatever its node sends -- DISPATCH, WELCOME, HEARTBEAT, ABORT,
RECONNECT and ERROR with one field made wrong, junk bodies, wrong frame
counts, rings naming endpoints libzmq refuses -- without its reader dying
(that stops the whole worker: the reader is critical) or a runner greenlet
dying (its slot would be lost for good).

A raw ROUTER plays the node (welcomes every READY, keeps what comes back);
a real :class:`~miyaq.worker.runner.Worker` runs in a thread. A seeded
generator (tests/fuzz_inputs.py's values) makes the messages. After every
batch: the worker has not crashed, every runner is alive, and a valid
DISPATCH of a real task is answered DONE with its result.

``MIYAQ_WORKER_FUZZ_EXAMPLES`` messages (default 800: a few seconds);
``MIYAQ_WORKER_FUZZ_SEED`` picks the seed (a failure names it and the batch).
"""
from __future__ import annotations

import os
import random
import uuid
from typing import Any

import msgpack
import pytest
from fuzz_inputs import Inputs, pack
from played_node import PlayedNode

import miyaq
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

EXAMPLES = int(os.environ.get("MIYAQ_WORKER_FUZZ_EXAMPLES", "800"))
SEED = int(os.environ.get("MIYAQ_WORKER_FUZZ_SEED", "13"))
BATCH = 100
CONCURRENCY = 4

pytestmark = pytest.mark.timeout(180)

app = miyaq.App()


@app.task(name="answer")
def answer(*args: Any, **kwargs: Any) -> int:
    return 42


@app.task(name="answer_async")
async def answer_async(*args: Any, **kwargs: Any) -> int:
    return 42


class Messages:
    """What a buggy or hostile node sends a worker: valid-looking with one field wrong, or garbage."""

    def __init__(self, rng: random.Random, inputs: Inputs) -> None:
        self.rng = rng
        self.inputs = inputs

    def endpoint(self) -> Any:
        r = self.rng
        return r.choice(["tcp://no port here", "tcp://h:x", "tcp://", "ipc://", "tcp://127.0.0.1",
                         f"tcp://127.0.0.1:{r.randrange(1, 65536)}", "tcp://" + "a" * 600 + ":1",
                         self.inputs.junk()])

    def delivery(self) -> Any:
        r = self.rng
        task_id = self.inputs.new_id()
        body = r.choice([msgpack.packb([[1], {}], use_bin_type=True), r.randbytes(r.randrange(0, 20)),
                         pack(self.inputs.junk()), pack([[self.inputs.junk()], {"k": self.inputs.junk()}])])
        name = r.choice(["answer", "answer", "answer_async", "nope"])
        d: list[Any] = [task_id, "default", name, body, r.randrange(1, 4), r.choice([30.0, 0, 0.5])]
        if r.random() < 0.3:
            d.append([self.endpoint() for _ in range(r.randrange(0, 4))])
        roll = r.random()
        if roll < 0.6:
            d[r.randrange(len(d))] = self.inputs.junk()
        elif roll < 0.7:
            d = d[:r.randrange(len(d))]
        elif roll < 0.8:
            return self.inputs.junk()
        return d

    def body(self, command: bytes) -> Any:
        r = self.rng
        inputs = self.inputs
        if command == c.DISPATCH:
            tasks: Any = [self.delivery() for _ in range(r.randrange(1, 5))]
            return inputs.maybe_mutate({"tasks": tasks}, 0.3)
        if command in (c.WELCOME, c.HEARTBEAT):
            body = {"node": "n0", "nodes": [self.endpoint() for _ in range(r.randrange(0, 4))],
                    "heartbeat": r.choice([60.0, 0.0, 1e-9, -1, float("nan"), float("inf"), 1e300, "1"])}
            if command == c.WELCOME:
                body["service"] = self.endpoint()
            return inputs.maybe_mutate(body, 0.5)
        if command == c.ABORT:
            return inputs.maybe_mutate({"ids": [inputs.known_id(), inputs.junk()]}, 0.6)
        if command == c.ERROR:
            return inputs.maybe_mutate({"code": "busy", "message": inputs.junk()}, 0.6)
        return inputs.maybe_mutate({"req": 1}, 0.5)

    def message(self) -> list[bytes]:
        r = self.rng
        roll = r.random()
        # RECONNECT seldom: each one makes the worker register again (a WELCOME back).
        command = r.choice([c.DISPATCH] * 4 + [c.WELCOME, c.HEARTBEAT, c.HEARTBEAT, c.ABORT, c.ABORT, c.ERROR,
                                               c.REPLY] + ([c.RECONNECT] if roll < 0.05 else []))
        if roll < 0.80:
            return [c.TAG, command, pack(self.body(command))]
        if roll < 0.88:
            return [c.TAG, command, pack(self.inputs.junk())]
        if roll < 0.93:
            return [c.TAG, command, r.randbytes(r.randrange(0, 30))]
        if roll < 0.97:
            return [c.TAG, command] + [pack({})] * r.choice([0, 2, 5])
        return [r.choice([b"MQ2", b""]), r.choice([b"NOPE", c.READY, command]), pack({})]


@pytest.mark.parametrize("pool", ["gevent", "threads", "processes"])
def test_no_message_a_node_can_send_breaks_a_worker(thread_worker, monkeypatch, pool) -> None:
    """Fault: a buggy or hostile node sends its worker malformed DISPATCH,
    WELCOME, HEARTBEAT, ABORT, ERROR and RECONNECT messages and garbage
    (seeded; see the module), in each pool (a delivery's body reaches a
    thread or a child process differently). After every batch the worker
    has not crashed, all its runners are alive, and a real task dispatched
    validly runs and is reported DONE. Deliveries name a plain handler, an
    ``async def`` one (the worker's event loop) or none."""
    rng = random.Random(SEED)
    inputs = Inputs(rng, "n0", "p1", 0.0)
    messages = Messages(rng, inputs)
    options: dict[str, Any] = {"pool": pool}
    if pool == "processes":     # its children import the app by name, from this directory
        options["app_spec"] = f"{__name__}:app"
        paths = [os.path.dirname(__file__), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    node = PlayedNode()
    try:
        w = thread_worker(app, node.endpoint, heartbeat=60.0, concurrency=CONCURRENCY, **options)
        wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
        for batch in range(0, EXAMPLES, BATCH):
            where = f"seed {SEED}, batch {batch // BATCH}"
            for _ in range(min(BATCH, EXAMPLES - batch)):
                node.send(messages.message())
                node.pump(0)
            probe = uuid.uuid4().hex
            sent_to: list[bytes | None] = [None]

            def probe_done() -> bool:
                node.pump()
                if sent_to[0] != node.link:      # first, or the worker registered again on a new socket
                    body = msgpack.packb([[], {}], use_bin_type=True)
                    node.send(codec.encode(c.DISPATCH, {"tasks": [[probe, "default", "answer", body, 1, 30.0]]}))
                    sent_to[0] = node.link
                return probe in node.done or w.worker.crashed

            wait_for(probe_done, timeout=20, what=f"{where}: a valid task done after the batch")
            assert not w.worker.crashed, f"{where}: the worker crashed"
            assert msgpack.unpackb(node.done[probe], raw=False) == 42, where
            assert not w.worker.supervisor.crashes, f"{where}: greenlets crashed: {w.worker.supervisor.crashes}"
            assert w.worker.supervisor.live().count("runner") == CONCURRENCY, where
        # What the fuzz reached: tasks run to the end and tasks refused by the worker itself.
        assert len(node.done) > EXAMPLES // BATCH and node.failed, (len(node.done), len(node.failed))
    finally:
        node.close()


@pytest.mark.parametrize("sent, followed", [(1e-9, 0.05), (0.0, 0.05), (float("inf"), 3600.0), (1e300, 3600.0),
                                            (2.5, 2.5)])
def test_a_welcome_heartbeat_out_of_range_is_brought_into_it(thread_worker, sent, followed) -> None:
    """Fault: a buggy or hostile node's WELCOME says its heartbeat is 1e-9 s
    (the worker would find it silent at once and reconnect in a loop) or
    infinite (it would never notice a silent node). The worker follows the
    nearest interval of NODE_HEARTBEAT_RANGE, 0.05 to 3,600 s."""
    node = PlayedNode()
    try:
        w = thread_worker(app, node.endpoint, heartbeat=60.0)
        wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
        node.send(codec.encode(c.WELCOME, {"node": "n0", "heartbeat": sent}))
        link = w.worker.links[0]
        wait_for(lambda: node.pump() or link.heartbeat == followed, what=f"the heartbeat taken as {followed}")
    finally:
        node.close()
