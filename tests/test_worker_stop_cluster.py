"""A stopping worker and the tasks sent to it that never reached it.

Fault simulated: a node leases a task to a worker that is stopping (the
node still has credit for it: under load in a cluster each node does, for
as long as the grace lasts), and that DISPATCH is still on its way when
the worker's BYE leaves -- the two cross. Before 2026-12-06 the node took
BYE to mean "everything leased to me is lost": the task, never received,
lost an attempt (with ``max_retries=0``, dead-lettered ``Lost``; else run
again as attempt 2). A 3-node cluster under 300 tasks/s did so to 8 tasks
in 1 stop of 3 (/tmp/upgrade/wstop/cluster.py). Now BYE names what the
worker started (docs/protocol.md, 7.10): only those spend an attempt.

The crossing is made by holding back, in the stopping worker, every
DISPATCH it reads: the worker's answer to them -- RETURN -- then never
comes, just as for one that arrives after its BYE left.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import zmq

import miyaq
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import green
from miyaq.testing.harness import wait_for

app = miyaq.App()
RUNS: list[tuple[str, int]] = []          # (task id, attempt) of each run started
RELEASE = threading.Event()               # lets "hold" end
HOLD_LIMIT = 20.0                          # "hold" ends by itself after this long


@app.task(name="hold")
def hold() -> None:
    ctx = miyaq.current_task()
    RUNS.append((ctx.id, ctx.attempt))
    end = time.monotonic() + HOLD_LIMIT
    while not RELEASE.is_set() and time.monotonic() < end:
        green.sleep(0.01)


@app.task(name="once")
def once() -> None:
    ctx = miyaq.current_task()
    RUNS.append((ctx.id, ctx.attempt))


def _reset() -> None:
    RUNS.clear()
    RELEASE.clear()


def _hold_dispatches_while_stopping(worker: Any) -> list[list[Any]]:
    """From the moment ``worker`` stops, the DISPATCHes its links read are
    kept here unhandled (their tasks in flight for good); the rest as usual.
    Its RETURNs leave without ``stopping`` (docs/protocol.md, 7.9), so its
    nodes lease it on: the DISPATCH sent before a node read that word."""
    held: list[list[Any]] = []
    for link in worker.links:
        link.say_stopping = lambda ids, link=link: link.send(c.RETURN, {"ids": ids, "credit": False})
        handle = link._handle

        def delayed(frames: list[bytes], handle: Any = handle) -> None:
            if worker.stopping and frames[1] == c.DISPATCH:
                held.append(msgpack.unpackb(frames[2], raw=False)["tasks"])
                return
            handle(frames)

        link._handle = delayed
    return held


def _stop_in_background(tw: Any) -> threading.Thread:
    stopper = threading.Thread(target=tw.stop, name="stop worker A", daemon=True)
    stopper.start()
    wait_for(lambda: tw.worker.stopping, what="worker A stopping")
    return stopper


def _held_ids(held: list[list[Any]]) -> set[str]:
    return {d[0] for tasks in list(held) for d in tasks}


def test_a_task_sent_to_a_stopping_worker_crossing_its_bye_spends_no_attempt(node, client, thread_worker):
    """max_retries=0: before, the task that crossed the BYE was dead-lettered
    ``Lost`` without ever running; now it runs once, as attempt 1."""
    _reset()
    a = thread_worker(app, node.endpoint, concurrency=1, grace=15.0)
    held = _hold_dispatches_while_stopping(a.worker)
    running = client.submit("hold", max_retries=0).id
    wait_for(lambda: any(r[0] == running for r in RUNS), what="hold running on worker A")
    stopper = _stop_in_background(a)
    crossing = client.submit("once", max_retries=0).id
    wait_for(lambda: crossing in _held_ids(held), what="the task dispatched to stopping worker A")
    RELEASE.set()                  # "hold" ends, is reported; then A says BYE
    stopper.join(30)
    assert not stopper.is_alive()
    thread_worker(app, node.endpoint, concurrency=2)     # worker B (A never handled the task it held)
    wait_for(lambda: client.status(crossing).get("state") in ("done", "dead"), what="the crossing task settled")
    status = client.status(crossing)
    assert status["state"] == "done", status
    assert [r for r in RUNS if r[0] == crossing] == [(crossing, 1)]
    assert client.status(running)["state"] == "done"


def test_each_node_spends_an_attempt_only_on_what_the_worker_started_from_it(make_node, client_for,
                                                                              thread_worker):
    """Several links (a cluster's case): worker A runs "hold" from node 1,
    past its grace; node 2's task crosses A's BYE. Node 1 spends the attempt
    of the abandoned "hold" (dead, ``Lost``, as docs/semantics.md says);
    node 2 spends nothing on its task, which runs on worker B as attempt 1."""
    _reset()
    n1, n2 = make_node(), make_node()
    c1, c2 = client_for(n1.endpoint), client_for(n2.endpoint)
    a = thread_worker(app, [n1.endpoint, n2.endpoint], concurrency=1, grace=1.0)
    wait_for(lambda: all(link.heard for link in a.worker.links), what="worker A registered with both nodes")
    held = _hold_dispatches_while_stopping(a.worker)
    abandoned = c1.submit("hold", max_retries=0).id
    wait_for(lambda: any(r[0] == abandoned for r in RUNS), what="hold running on worker A")
    stopper = _stop_in_background(a)
    crossing = c2.submit("once", max_retries=0).id
    wait_for(lambda: crossing in _held_ids(held), what="node 2's task dispatched to stopping worker A")
    stopper.join(30)                # the grace runs out with "hold" running: BYE
    assert not stopper.is_alive()
    RELEASE.set()
    wait_for(lambda: c1.status(abandoned).get("state") == "dead", what="the abandoned task dead-lettered")
    assert c1.status(abandoned)["error"]["type"] == "Lost"
    thread_worker(app, n2.endpoint, concurrency=2)       # worker B
    wait_for(lambda: c2.status(crossing).get("state") in ("done", "dead"), what="node 2's task settled")
    assert c2.status(crossing)["state"] == "done", c2.status(crossing)
    assert [r for r in RUNS if r[0] == crossing] == [(crossing, 1)]


class _RawWorker:
    """A worker speaking the protocol by hand (an older one: its BYE may
    leave out ``started``)."""

    def __init__(self, endpoint: str, capacity: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.send(c.READY, {"worker": "raw-bye", "queues": ["default"], "capacity": capacity})
        self.deliveries: list[list[Any]] = []
        self.errors: list[dict[str, Any]] = []

    def send(self, command: bytes, body: dict[str, Any]) -> None:
        self.sock.send_multipart(codec.encode(command, body))

    def pump(self, timeout_ms: int = 200) -> None:
        while self.sock.poll(timeout_ms):
            _, command, body = self.sock.recv_multipart()
            decoded = msgpack.unpackb(body, raw=False)
            if command == c.DISPATCH:
                self.deliveries.extend(decoded["tasks"])
            elif command == c.ERROR:
                self.errors.append(decoded)
            timeout_ms = 50

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _leased_pair(node: Any, client: Any) -> tuple[_RawWorker, list[str]]:
    ids = {client.submit("once", max_retries=0).id for _ in range(2)}
    raw = _RawWorker(node.endpoint, capacity=2)
    wait_for(lambda: raw.pump() or len(raw.deliveries) >= 2, what="two tasks leased to the raw worker")
    leased = [d[0] for d in raw.deliveries]
    assert set(leased) == ids
    return raw, leased


def _settled(client: Any, task_id: str) -> str:
    wait_for(lambda: client.status(task_id).get("state") in ("ready", "dead"), what=f"task {task_id} put back")
    return str(client.status(task_id)["state"])


def test_a_bye_without_started_spends_an_attempt_on_every_leased_task(node, client):
    """An older worker's BYE (no ``started``): as before, every task leased
    to it is lost (max_retries=0: dead)."""
    raw, ids = _leased_pair(node, client)
    try:
        raw.send(c.BYE, {"worker": "raw-bye"})
        assert [_settled(client, i) for i in ids] == ["dead", "dead"]
    finally:
        raw.close()


def test_a_bye_spends_an_attempt_only_on_the_tasks_it_names(node, client):
    raw, ids = _leased_pair(node, client)
    try:
        raw.send(c.BYE, {"worker": "raw-bye", "started": [ids[0], "not-leased-here"]})
        assert [_settled(client, i) for i in ids] == ["dead", "ready"]
        assert client.status(ids[1])["attempt"] == 0, client.status(ids[1])
    finally:
        raw.close()


def test_a_bye_with_a_malformed_started_is_refused_and_changes_nothing(node, client):
    raw, ids = _leased_pair(node, client)
    try:
        raw.send(c.BYE, {"worker": "raw-bye", "started": "all of them"})
        wait_for(lambda: raw.pump() or raw.errors, what="the node's ERROR")
        assert raw.errors[0]["code"] == "invalid_field" and "'started'" in raw.errors[0]["message"]
        assert [client.status(i)["state"] for i in ids] == ["running", "running"]
        raw.send(c.BYE, {"worker": "raw-bye", "started": []})
        assert [_settled(client, i) for i in ids] == ["ready", "ready"]
    finally:
        raw.close()


def test_a_result_the_worker_could_not_send_is_named_in_its_bye(node, client, thread_worker):
    """Fault: the DONE of a task that ran cannot be sent (the send fails)
    up to the stop. The BYE names that task as started: the node spends
    its attempt (max_retries=0: dead, ``Lost``) rather than putting it back
    as never received, which would run it a second time with no attempt
    counted."""
    from miyaq.errors import Unavailable

    _reset()
    a = thread_worker(app, node.endpoint, concurrency=1, grace=1.0)
    outbox = a.worker.links[0].outbox
    post = outbox._post

    def failing(command: bytes, body: dict[str, Any]) -> None:
        if command == c.DONE:
            raise Unavailable("sending DONE failed (the test's fault)")
        post(command, body)

    outbox._post = failing
    ran = client.submit("once", max_retries=0).id
    wait_for(lambda: any(r[0] == ran for r in RUNS), what="the task run on worker A")
    a.stop()
    wait_for(lambda: client.status(ran).get("state") in ("dead", "ready", "done"), what="the task put back")
    status = client.status(ran)
    assert status["state"] == "dead" and status["error"]["type"] == "Lost", status
    assert [r for r in RUNS if r[0] == ran] == [(ran, 1)]
