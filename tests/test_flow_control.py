"""Credit-based dispatch and bounded capacity with transparent client retry."""
from __future__ import annotations

import threading

import msgpack
import pytest
import zmq

import miyaq
from apps import basic
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for


class RawWorker:
    """A worker speaking the protocol by hand, to watch exactly what the node sends."""

    def __init__(self, endpoint: str, capacity: int, queues=("default",)) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.send(c.READY, {"worker": "raw-1", "queues": list(queues), "capacity": capacity})
        self.deliveries: list[list] = []

    def send(self, command: bytes, body: dict) -> None:
        self.sock.send_multipart(codec.encode(command, body))

    def pump(self, timeout_ms: int = 200) -> None:
        """Read what arrived within ``timeout_ms``, answering heartbeats."""
        while self.sock.poll(timeout_ms):
            _, command, body = self.sock.recv_multipart()
            body = msgpack.unpackb(body, raw=False)
            if command == c.DISPATCH:
                self.deliveries.extend(body["tasks"])
            self.send(c.HEARTBEAT, {"worker": "raw-1"})
            timeout_ms = 50

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def settled(self, at_least: int, what: str) -> int:
        """Deliveries once ``at_least`` arrived and nothing more came for 300 ms."""
        wait_for(lambda: self.pump() or len(self.deliveries) >= at_least, what=what)
        self.pump(300)
        return len(self.deliveries)


@pytest.fixture
def raw_worker_of_three(node, client):
    """Ten ready tasks and a raw worker granting 3 slots, which got 3 of them."""
    for i in range(10):
        client.submit("echo", [i])
    client.flush()
    raw = RawWorker(node.endpoint, capacity=3)
    try:
        assert raw.settled(3, "first deliveries") == 3
        yield raw
    finally:
        raw.close()


def test_node_never_sends_more_than_the_credit_granted(raw_worker_of_three, client):
    """A worker granting 3 slots gets 3 of 10 ready tasks, and one more per DONE."""
    raw = raw_worker_of_three
    first = raw.deliveries[0]
    raw.send(c.DONE, {"done": [[first[0], first[4], None]]})
    assert raw.settled(4, "one more delivery") == 4
    assert client.status()["queues"]["default"]["running"] == 3


def test_reports_that_say_credit_false_give_no_slot_back(raw_worker_of_three, client):
    """A worker reporting tasks another node gave it (that node was lost)
    says ``"credit": false``: the task finishes or fails here, but the slot
    it frees is the lost node's, so this node sends nothing more for it."""
    raw = raw_worker_of_three
    first, second, third = raw.deliveries[:3]
    raw.send(c.DONE, {"done": [[first[0], first[4], None]], "credit": False})
    raw.send(c.FAILED, {"failed": [[second[0], second[4], {"type": "E", "retry": False}]], "credit": False})
    wait_for(lambda: client.status()["queues"]["default"]["running"] == 1, what="both reports applied")
    raw.send(c.DONE, {"done": [[third[0], third[4], None]]})
    assert raw.settled(4, "one delivery for the counted slot") == 4
    assert client.status()["queues"]["default"]["running"] == 1


def test_idle_capacity_never_waits_while_work_is_ready(node, client, thread_worker):
    """Two workers with one slot each: two long tasks run at the same time, so
    the second worker is not left idle while the first is busy."""
    w1 = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1, prefetch=0)
    w2 = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1, prefetch=0)
    handles = [client.submit("sleep", [1.0]) for _ in range(2)]
    client.flush()
    wait_for(lambda: w1.worker.running and w2.worker.running, what="both workers busy")
    for h in handles:
        h.result(10)


def test_full_node_answers_busy_and_the_client_retries_transparently(make_node, client_for, thread_worker):
    """Fault: the node is full (max_tasks=5). Submits beyond it are refused
    with BUSY, retried by the client with backoff, and all accepted once a
    worker drains the node — application code never sees BUSY."""
    n = make_node(max_tasks=5)
    c1 = client_for(n.endpoint, submit_timeout=30.0)
    handles = [c1.submit("echo", [i]) for i in range(25)]
    wait_for(lambda: c1._io.busy_replies > 0, what="a BUSY answer")
    assert c1.status()["totals"]["live"] == 5
    thread_worker(basic.app, n.endpoint, queues=["default"], concurrency=4)
    c1.flush()
    assert sorted(h.result(20)["args"][0] for h in handles) == list(range(25))


def test_busy_past_the_deadline_raises_one_clear_error(make_node, client_for):
    """Fault: the node stays full; after submit_timeout the caller gets miyaq.Busy.
    The node is filled through a patient client: a stall of the loaded
    machine past 0.5 s failed that setup submit (before 2026-12-08)."""
    n = make_node(max_tasks=1)
    c1 = client_for(n.endpoint, submit_timeout=0.5)
    client_for(n.endpoint).submit("echo", [0], wait=True)
    with pytest.raises(miyaq.Busy) as info:
        c1.submit("echo", [1], wait=True)
    assert "full" in str(info.value)
    late = c1.submit("echo", [2])
    with pytest.raises(miyaq.Busy):
        c1.flush()
    assert not late.accepted


def test_submit_window_blocks_when_full(make_node, client_for):
    """The client keeps at most `window` unacknowledged submits."""
    n = make_node(max_tasks=2)
    # The three that fill the window must outlive the late submit's 0.3 s
    # by far, even on a loaded machine: 4 s.
    c1 = client_for(n.endpoint, window=3, submit_timeout=4.0)
    for i in range(2):
        c1.submit("echo", [i], wait=True)
    for i in range(3):
        c1.submit("echo", [i])        # fills the window: these stay BUSY until their 4 s deadline
    c1.submit_timeout = 0.3           # gives up well before any of those three frees its slot
    with pytest.raises(miyaq.Timeout):
        c1.submit("echo", [9])          # blocks until the window has room, then gives up
    with pytest.raises(miyaq.Busy):
        c1.flush()


def test_unreachable_node_is_a_clear_error(client_for):
    """Fault: nothing listens on the endpoint."""
    from miyaq.testing.harness import refusing_port
    with refusing_port() as port:
        c1 = client_for(f"tcp://127.0.0.1:{port}", submit_timeout=0.3, request_timeout=0.3)
        with pytest.raises(miyaq.Unavailable):
            c1.submit("echo", [1], wait=True)
        with pytest.raises(miyaq.MiyaqError):
            c1.status()


def test_client_is_thread_safe(node, client, thread_worker):
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=8)
    results: list[int] = []

    def produce(base: int) -> None:
        hs = [client.submit("add", [base, i]) for i in range(200)]
        results.extend(h.result(30) for h in hs)

    threads = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == sorted(k * 1000 + i for k in range(4) for i in range(200))


def test_pull_receive_respects_queue_rate_limits(make_node, client_for):
    """A ZeroMQ RECEIVE is limited like workers: with burst 2 and no refill,
    only two of five ready tasks can be taken."""
    n = make_node(queue_limits="jobs:rate=0,burst=2")
    c1 = client_for(n.endpoint)
    for i in range(5):
        c1.submit("echo", [i], queue="jobs", wait=True)
    got = [c1.receive("jobs") for _ in range(4)]
    assert [g is not None for g in got] == [True, True, False, False]
    assert c1.status()["queues"]["jobs"]["ready"] == 3
