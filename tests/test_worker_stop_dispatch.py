"""A stopping worker tells its nodes to lease it nothing more.

Fault simulated: a worker is stopping (SIGTERM: its unstarted tasks given
back, a running one given ``grace`` to finish) while its node still holds
credit for it. Before 2026-12-06 the node went on leasing it that credit:
each task travelled to the worker and came back by RETURN -- under 800
tasks/s on a 3-node cluster, 43 to 46 tasks at each stop
(/tmp/stopdispatch/measure.py). Now the worker's stop RETURN says
``"stopping": true`` (docs/protocol.md, 7.9), and the node dispatches it
nothing more, while the tasks it runs still report and count.

The raw worker below speaks the protocol by hand, so each message is the
test's; the last two run miyaq's own worker, one against a node played by
the test (tests/played_node.py) whose connection closes during the stop.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import pytest
import zmq
from fuzz_inputs import pack
from played_node import PlayedNode

import miyaq
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import green
from miyaq.testing.harness import wait_for

app = miyaq.App()
RUNS: list[tuple[str, int]] = []          # (task id, attempt) of each run started
RELEASE = threading.Event()               # lets "hold" end
HOLD_LIMIT = 20.0                          # "hold" ends by itself after this long
QUIET = 0.6                                # seconds a raw worker listens for a DISPATCH that must not come


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


class _RawWorker:
    """A worker speaking the protocol by hand on its own DEALER."""

    def __init__(self, endpoint: str, wid: str = "raw-stop") -> None:
        self.wid = wid
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.deliveries: list[list[Any]] = []
        self.received: list[tuple[bytes, dict[str, Any]]] = []

    def ready(self, capacity: int) -> None:
        self.send(c.READY, {"worker": self.wid, "queues": ["default"], "capacity": capacity})

    def send(self, command: bytes, body: dict[str, Any]) -> None:
        self.sock.send_multipart(codec.encode(command, body))

    def pump(self, seconds: float) -> None:
        """Read what comes for ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                continue
            _, command, body = self.sock.recv_multipart()
            decoded = msgpack.unpackb(body, raw=False)
            self.received.append((command, decoded))
            if command == c.DISPATCH:
                self.deliveries.extend(decoded["tasks"])

    def sync(self) -> None:
        """A round trip on this connection (a STATUS): the node handled
        everything sent before it (one connection's messages keep their order)."""
        self.send(c.STATUS, {"req": "sync"})
        end = time.monotonic() + 10
        while time.monotonic() < end and not any(command == c.REPLY and body.get("req") == "sync"
                                                 for command, body in self.received):
            self.pump(0.05)
        self.received = [(command, body) for command, body in self.received
                         if not (command == c.REPLY and body.get("req") == "sync")]

    def commands(self) -> list[bytes]:
        return [command for command, _ in self.received]

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _row(client: Any, wid: str) -> dict[str, Any] | None:
    return next((w for w in client.status()["workers"] if w["worker"] == wid), None)


def _leased_one(node: Any, client: Any) -> tuple[_RawWorker, str]:
    """A raw worker of capacity 4 holding one task."""
    raw = _RawWorker(node.endpoint)
    raw.ready(capacity=4)
    task_id = client.submit("once", max_retries=0).id
    wait_for(lambda: raw.pump(0.05) or len(raw.deliveries) >= 1, what="a task leased to the raw worker")
    assert [d[0] for d in raw.deliveries] == [task_id]
    return raw, task_id


def test_after_stopping_no_dispatch_reaches_the_worker_and_its_running_task_still_reports(node, client):
    """The worker has 3 slots of credit left; after RETURN ``stopping`` the
    node sends it none of the 3 tasks submitted then (before: all 3, each to
    come back by RETURN), and its DONE for the task it holds is applied."""
    raw, running = _leased_one(node, client)
    try:
        raw.send(c.RETURN, {"ids": [], "credit": False, "stopping": True})
        raw.sync()
        later = [client.submit("once", max_retries=0).id for _ in range(3)]
        raw.pump(QUIET)
        assert [d[0] for d in raw.deliveries] == [running], "a task was dispatched to a stopping worker"
        row = _row(client, "raw-stop")
        assert row is not None and row["stopping"] is True and row["credit"] == 0, row
        assert client.status()["queues"]["default"]["idle"] == 0     # it takes no more (before: 3 free slots)
        # Its running task still reports (DONE, credit given back by default):
        # applied, and the slot it frees is not leased again.
        raw.send(c.DONE, {"done": [[running, 1, None]]})
        wait_for(lambda: client.status(running).get("state") == "done", what="the running task's DONE applied")
        raw.pump(QUIET)
        assert [d[0] for d in raw.deliveries] == [running]
        assert _row(client, "raw-stop")["credit"] == 0
        assert [client.status(t)["state"] for t in later] == ["ready"] * 3
        raw.send(c.BYE, {"worker": "raw-stop", "started": []})
        wait_for(lambda: _row(client, "raw-stop") is None, what="the BYE handled")
        assert [client.status(t)["attempt"] for t in later] == [0, 0, 0]
    finally:
        raw.close()


def test_saying_stopping_twice_changes_nothing_more(node, client):
    raw, running = _leased_one(node, client)
    try:
        for _ in range(2):
            raw.send(c.RETURN, {"ids": [], "credit": False, "stopping": True})
        raw.sync()
        client.submit("once", max_retries=0)
        raw.pump(QUIET)
        assert [d[0] for d in raw.deliveries] == [running]
        assert c.ERROR not in raw.commands()
        row = _row(client, "raw-stop")
        assert row is not None and row["stopping"] is True and row["running"] == 1 and row["credit"] == 0, row
        assert client.status(running)["state"] == "running"
    finally:
        raw.close()


def test_stopping_from_a_connection_that_never_registered_changes_nothing(node, client):
    """No worker on the connection (before its READY, or never one): the
    node answers RECONNECT, as to any worker message; a READY after it
    registers a worker that is not stopping and is leased tasks."""
    raw = _RawWorker(node.endpoint, wid="raw-late")
    try:
        raw.send(c.RETURN, {"ids": [], "credit": False, "stopping": True})
        raw.sync()
        assert raw.commands() == [c.RECONNECT]
        assert client.status()["totals"]["workers"] == 0
        raw.ready(capacity=2)
        task_id = client.submit("once", max_retries=0).id
        wait_for(lambda: raw.pump(0.05) or len(raw.deliveries) >= 1, what="a task leased after READY")
        assert [d[0] for d in raw.deliveries] == [task_id]
        assert _row(client, "raw-late")["stopping"] is False
    finally:
        raw.close()


def test_a_stopping_that_is_not_true_or_false_is_refused_and_changes_nothing(node, client):
    raw, running = _leased_one(node, client)
    try:
        raw.send(c.RETURN, {"ids": [running], "credit": False, "stopping": "yes"})
        raw.sync()
        errors = [body for command, body in raw.received if command == c.ERROR]
        assert errors and errors[0]["code"] == "invalid_field" and errors[0]["field"] == "stopping", errors
        assert client.status(running)["state"] == "running"     # not given back either
        assert _row(client, "raw-stop")["stopping"] is False
        later = client.submit("once", max_retries=0).id
        wait_for(lambda: raw.pump(0.05) or len(raw.deliveries) >= 2, what="a task leased as before")
        assert [d[0] for d in raw.deliveries] == [running, later]
    finally:
        raw.close()


def _count_dispatches_while_stopping(worker: Any) -> list[list[Any]]:
    """The DISPATCHes ``worker``'s links read once it is stopping (handled as usual)."""
    read: list[list[Any]] = []
    for link in worker.links:
        handle = link._handle

        def counted(frames: list[bytes], handle: Any = handle) -> None:
            if worker.stopping and frames[1] == c.DISPATCH:
                read.append(msgpack.unpackb(frames[2], raw=False)["tasks"])
            handle(frames)

        link._handle = counted
    return read


def test_miyaqs_stopping_worker_is_sent_no_task(node, client, thread_worker):
    """miyaq's worker, running "hold", stops with credit left at its node:
    tasks submitted during its grace are not sent to it (before: as many
    as its credit, each given back by RETURN), "hold" still ends done, and
    the tasks run on another worker as attempt 1."""
    RUNS.clear()
    RELEASE.clear()
    a = thread_worker(app, node.endpoint, concurrency=1, prefetch=3, grace=15.0)
    read = _count_dispatches_while_stopping(a.worker)
    running = client.submit("hold", max_retries=0).id
    wait_for(lambda: any(r[0] == running for r in RUNS), what="hold running on worker A")
    wait_for(lambda: (_row(client, a.worker.wid) or {}).get("credit", 0) > 0, what="worker A with credit left")
    stopper = threading.Thread(target=a.stop, name="stop worker A", daemon=True)
    stopper.start()
    wait_for(lambda: (_row(client, a.worker.wid) or {}).get("stopping") is True,
             what="the node shows worker A stopping")
    later = [client.submit("once", max_retries=0).id for _ in range(3)]
    time.sleep(QUIET)
    assert read == [], "tasks were dispatched to the stopping worker"
    RELEASE.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert client.status(running)["state"] == "done"
    thread_worker(app, node.endpoint, concurrency=2)     # worker B
    for t in later:
        wait_for(lambda t=t: client.status(t).get("state") in ("done", "dead"), what="a later task settled")
    assert [client.status(t)["state"] for t in later] == ["done"] * 3
    assert sorted(r for r in RUNS if r[0] in later) == sorted((t, 1) for t in later)


def test_a_task_only_the_stopping_worker_runs_goes_out_at_once(node, client, thread_worker):
    """Fault: two apps on ``default`` -- worker A has "hold" and "once",
    worker B another app's task only. A stops, "hold" running through its
    grace; a task "once" comes. No live worker runs it: it goes to B at
    once, fails ``UnknownTask`` there and, with no retries, is
    dead-lettered with B's explanation while A still finishes "hold".
    Before: A counted as running "once" until its BYE, so B passed the
    task over and it waited the whole grace for a worker that said it
    takes nothing more (docs/semantics.md, "Retries and backoff")."""
    RUNS.clear()
    RELEASE.clear()
    other = miyaq.App(node.endpoint)
    other.task(lambda: None, name="other.only")
    a = thread_worker(app, node.endpoint, concurrency=1, prefetch=1, grace=15.0)
    thread_worker(other, node.endpoint, concurrency=1)
    wait_for(lambda: client.status()["totals"]["workers"] == 2, what="both workers")
    running = client.submit("hold", max_retries=0).id
    wait_for(lambda: any(r[0] == running for r in RUNS), what="hold running on worker A")
    stopper = threading.Thread(target=a.stop, name="stop worker A", daemon=True)
    stopper.start()
    try:
        wait_for(lambda: (_row(client, a.worker.wid) or {}).get("stopping") is True,
                 what="the node shows worker A stopping")
        later = client.submit("once", max_retries=0).id
        wait_for(lambda: client.status(later).get("state") == "dead", timeout=10, what="'once' dead-lettered")
        assert client.status(running)["state"] == "running"      # A still in its grace
        assert not any(r[0] == later for r in RUNS)
    finally:
        RELEASE.set()
        stopper.join(30)
    assert not stopper.is_alive()
    assert client.status(running)["state"] == "done"
    with pytest.raises(miyaq.TaskFailed) as err:
        client.result(later, timeout=5)
    assert err.value.remote_type == "UnknownTask"


class _Recording(PlayedNode):
    """A played node (tests/played_node.py) bound at ``endpoint`` (a random
    port if None), keeping every READY and RETURN body in order."""

    def __init__(self, endpoint: str | None = None) -> None:
        if endpoint is None:
            super().__init__()
        else:
            self.ctx = zmq.Context()
            self.sock = self.ctx.socket(zmq.ROUTER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.bind(endpoint)
            self.endpoint = endpoint
            self.link = None
            self.done, self.failed, self.reports, self.returned = {}, {}, [], []
        self.said: list[tuple[bytes, dict[str, Any]]] = []

    def read(self, peer: bytes, command: bytes, data: Any) -> None:
        if command in (c.READY, c.RETURN):
            self.said.append((command, data))
        super().read(peer, command, data)


def test_a_link_lost_during_the_stop_registers_with_no_credit_and_says_stopping_again(thread_worker):
    """Fault: the connection to a node closes while the worker waits for its
    running task (the node restarted). The fresh socket's READY offers no
    credit and is followed by RETURN ``stopping``: the node, new to this
    worker, leases it nothing (before: READY offered the slots free then,
    and the node leased them)."""
    RUNS.clear()
    RELEASE.clear()
    first = _Recording()
    opened = [first]
    try:
        tw = thread_worker(app, first.endpoint, concurrency=1, prefetch=1, grace=15.0)
        wait_for(lambda: first.pump() or first.link is not None, what="the worker's READY")
        first.send([c.TAG, c.DISPATCH, pack({"tasks": [["t-hold", "default", "hold", pack([[], {}]), 1, 60.0]]})])
        wait_for(lambda: first.pump() or "t-hold" in tw.worker.running, what="hold running")
        stopper = threading.Thread(target=tw.stop, name="stop the worker", daemon=True)
        stopper.start()
        wait_for(lambda: first.pump() or any(cmd == c.RETURN and body.get("stopping") is True
                                             for cmd, body in first.said), what="the worker's word that it stops")
        endpoint = first.endpoint
        opened.remove(first)
        first.close()                       # the node's connection closes: the worker registers again
        second = _Recording(endpoint)
        opened.append(second)
        wait_for(lambda: second.pump() or len(second.said) >= 2, what="READY and RETURN on the new connection")
        (ready_cmd, ready), (return_cmd, returned) = second.said[:2]
        assert ready_cmd == c.READY and ready["credit"] == 0, second.said
        assert return_cmd == c.RETURN and returned == {"ids": [], "credit": False, "stopping": True}, second.said
        RELEASE.set()
        stopper.join(30)
        assert not stopper.is_alive()
    finally:
        RELEASE.set()
        for played in opened:
            played.close()
