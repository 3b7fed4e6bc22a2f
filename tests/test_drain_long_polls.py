"""Long-polls and pull leases while a node drains (SIGTERM's ``shutdown_grace``).

A node in a thread of the test (:class:`gateway_harness.NodeThread`, with its
HTTP gateway) is stopped with a grace of 60 s while a worker -- a raw DEALER
that said READY and never reports -- holds a task, so the drain waits. The
long-polls held then, over ZeroMQ (raw DEALERs: what the node answers, not
what a client makes of it) and over HTTP, must be answered ``shutting_down``
at once: each is waited for up to 20 s, far less than the grace, and no
test measures a time.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from gateway_harness import NodeThread, RequestInThread, wait_for
from miyaq.client.client import Client
from miyaq.protocol import commands as c
from miyaq.protocol.commands import TAG
from miyaq.runtime import green

GRACE = 60.0      # the drain's grace: far longer than any wait below
ANSWER = 20.0     # how long an answer is waited for (a guard against a hang, not a measure)
LONG = 3600       # a long-poll's timeout


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def drain_node() -> Iterator[NodeThread]:
    """A node whose workers are not dropped for silence during a test
    (heartbeat 60 s), stopped at the end -- hurried if it is draining."""
    node = NodeThread(heartbeat=60.0)
    try:
        yield node
    finally:
        if node.thread.is_alive():
            node.call(lambda: green.Greenlet.spawn(node.node.ask_stop))   # a second signal ends a drain
        node.stop()


def dealer(ctx: zmq.Context, node: NodeThread) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{node.config.port}")
    return sock


def send(sock: zmq.Socket, command: bytes, body: dict[str, Any]) -> None:
    sock.send_multipart([TAG, command, msgpack.packb(body, use_bin_type=True)])


def read(sock: zmq.Socket, wanted: set[bytes]) -> tuple[bytes, dict[str, Any]]:
    """The next message of a command in ``wanted`` (others -- WELCOME,
    HEARTBEAT, waiter probes without ``req`` -- are passed over)."""
    while True:
        if not sock.poll(ANSWER * 1000):
            pytest.fail(f"no {sorted(wanted)} from the node within {ANSWER} s")
        _, command, body = sock.recv_multipart()
        answer = msgpack.unpackb(body, raw=False)
        if command in wanted and (command not in (c.REPLY, c.ERROR) or answer.get("req") is not None):
            return command, answer


def answers(sock: zmq.Socket, count: int) -> dict[int, tuple[bytes, dict[str, Any]]]:
    """The next ``count`` REPLY/ERROR answers, by ``req``."""
    got = {}
    while len(got) < count:
        command, body = read(sock, {c.REPLY, c.ERROR})
        got[body["req"]] = (command, body)
    return got


def HttpLongPoll(node: NodeThread, method: str, path: str, body: Any = None) -> RequestInThread:
    """One HTTP request in a thread of its own."""
    return RequestInThread(node, method, path, body, answer_within=ANSWER)


def shutting_down(http_answer: tuple[int, Any, dict[str, str]]) -> bool:
    status, body, headers = http_answer
    return status == 503 and body["error"]["code"] == "shutting_down" and headers.get("retry-after") == "1"


def worker_holding(ctx: zmq.Context, node: NodeThread, queue: str, count: int) -> tuple[zmq.Socket, list[list[Any]]]:
    """A raw worker registered for ``queue`` that receives ``count`` tasks
    and reports nothing (until the test makes it)."""
    sock = dealer(ctx, node)
    send(sock, c.READY, {"worker": "holder", "queues": [queue], "capacity": count})
    read(sock, {c.WELCOME})
    tasks: list[list[Any]] = []
    while len(tasks) < count:
        tasks += read(sock, {c.DISPATCH})[1]["tasks"]
    return sock, tasks


def stop_with_grace(node: NodeThread) -> None:
    """SIGTERM's stop, with a grace of GRACE, in a greenlet of the node's hub."""
    node.call(lambda: green.Greenlet.spawn(node.node.stop, GRACE))
    wait_for(lambda: node.call(lambda: node.node.core.draining), "the drain to start")


def parked(node: NodeThread) -> int:
    return node.call(lambda: node.node.core.waiters.count)


def test_long_polls_held_when_the_node_drains_are_answered_shutting_down_at_once(
        drain_node: NodeThread, ctx: zmq.Context) -> None:
    """Fault: a node stopping with a task running waited its whole grace
    before it answered the HTTP long-polls (503 at the end of the grace),
    and never answered the ZeroMQ ones (RECEIVE, RESULT): their connections
    closed under them. Now a RECEIVE (either door) and a RESULT wait for a
    task that does not run (either door: its outcome cannot come while the
    node leases nothing) are answered ``shutting_down`` as the drain starts
    -- with a grace of 60 s still to go -- and so are a RECEIVE and such a
    RESULT wait sent during the drain; the task running holds the drain
    (the node still serves its worker)."""
    node = drain_node
    client = Client(f"tcp://127.0.0.1:{node.config.port}")
    try:
        later = client.submit("job", queue="later", countdown=LONG, wait=True).id
        client.submit("job", queue="run", wait=True)
    finally:
        client.close()
    worker, _ = worker_holding(ctx, node, "run", 1)
    poller = dealer(ctx, node)
    try:
        send(poller, c.RECEIVE, {"req": 1, "queues": ["empty"], "timeout": LONG})
        send(poller, c.RESULT, {"req": 2, "id": later, "timeout": LONG})
        http_receive = HttpLongPoll(node, "POST", "/receive", {"queues": ["empty"], "timeout": LONG})
        http_result = HttpLongPoll(node, "GET", f"/tasks/{later}/result?timeout={LONG}")
        wait_for(lambda: parked(node) == 4, "the four long-polls to be parked")

        stop_with_grace(node)
        got = answers(poller, 2)
        assert got[1][0] == c.ERROR and got[1][1]["code"] == "shutting_down"
        assert got[2][0] == c.ERROR and got[2][1]["code"] == "shutting_down"
        assert shutting_down(http_receive.answer()), http_receive.result
        assert shutting_down(http_result.answer()), http_result.result
        assert parked(node) == 0

        # Sent while the node drains: refused at once too, at both doors.
        send(poller, c.RECEIVE, {"req": 3, "queues": ["empty"], "timeout": LONG})
        send(poller, c.RESULT, {"req": 4, "id": later, "timeout": LONG})
        got = answers(poller, 2)
        assert [got[3][1]["code"], got[4][1]["code"]] == ["shutting_down", "shutting_down"]
        assert shutting_down(HttpLongPoll(node, "POST", "/receive", {"queues": ["empty"], "timeout": LONG}).answer())
        assert shutting_down(HttpLongPoll(node, "POST", "/receive_noblock", {"queues": ["empty"]}).answer())
        assert shutting_down(HttpLongPoll(node, "GET", f"/tasks/{later}/result?timeout={LONG}").answer())
        assert node.thread.is_alive() and node.call(lambda: node.node.core.running()) == 1
    finally:
        poller.close(0)
        worker.close(0)


def test_a_result_wait_for_a_running_task_gets_its_outcome_in_the_grace_or_shutting_down_at_its_end(
        drain_node: NodeThread, ctx: zmq.Context) -> None:
    """Fault: a ZeroMQ RESULT long-poll for a task still running when the
    grace ended was never answered (the node closed its sockets under it,
    linger 0). A RESULT wait for a running task is kept through the grace
    (its outcome may come: the worker reports) and gets that outcome; one
    still waiting when the grace ends (a second signal ends it here) is
    answered ``shutting_down``, at both doors, before the sockets close."""
    node = drain_node
    client = Client(f"tcp://127.0.0.1:{node.config.port}")
    try:
        ids = [client.submit("job", queue="run", wait=True).id for _ in range(2)]
    finally:
        client.close()
    worker, leased = worker_holding(ctx, node, "run", 2)
    poller = dealer(ctx, node)
    try:
        for req, task_id in enumerate(ids, 1):
            send(poller, c.RESULT, {"req": req, "id": task_id, "timeout": LONG})
        http_results = [HttpLongPoll(node, "GET", f"/tasks/{task_id}/result?timeout={LONG}") for task_id in ids]
        wait_for(lambda: parked(node) == 4, "the four result waits to be parked")

        stop_with_grace(node)
        finished_id, finished_attempt = next((t[0], t[4]) for t in leased if t[0] == ids[0])
        send(worker, c.DONE, {"done": [[finished_id, finished_attempt, b"ok"]]})
        command, body = read(poller, {c.REPLY, c.ERROR})
        assert command == c.REPLY and body["req"] == 1 and body["state"] == "done" and body["result"] == b"ok"
        status, view, _ = http_results[0].answer()
        assert status == 200 and view["state"] == "done"
        assert parked(node) == 2 and node.thread.is_alive()

        node.call(lambda: green.Greenlet.spawn(node.node.ask_stop))    # a second signal: the grace ends
        command, body = read(poller, {c.REPLY, c.ERROR})
        assert command == c.ERROR and body["req"] == 2 and body["code"] == "shutting_down"
        assert shutting_down(http_results[1].answer()), http_results[1].result
    finally:
        poller.close(0)
        worker.close(0)


def test_tasks_leased_to_pull_consumers_hold_the_grace_and_their_acks_are_taken(
        drain_node: NodeThread, ctx: zmq.Context) -> None:
    """Fault: a task leased to a pull consumer (RECEIVE, either door) did
    not hold the drain: the node counted only its workers' tasks ("0
    running task(s)"), stopped at once, and the consumer's ACK found no
    node (the task ran again after a restart, or was lost without a data
    directory). Such leases now hold the grace like a worker's tasks: the
    node, asked to stop with a grace of 60 s, takes both ACKs, then stops."""
    node = drain_node
    client = Client(f"tcp://127.0.0.1:{node.config.port}")
    try:
        for _ in range(2):
            client.submit("job", queue="pull", wait=True)
    finally:
        client.close()
    consumer = dealer(ctx, node)
    try:
        send(consumer, c.RECEIVE, {"req": 1, "queues": ["pull"]})
        zmq_task = read(consumer, {c.REPLY})[1]["task"]
        status, over_http, _ = HttpLongPoll(node, "POST", "/receive", {"queues": ["pull"]}).answer()
        http_task = over_http["task"]
        assert status == 200 and zmq_task is not None and http_task is not None

        stop_with_grace(node)
        send(consumer, c.ACK, {"req": 2, "id": zmq_task["id"], "attempt": zmq_task["attempt"]})
        command, body = read(consumer, {c.REPLY, c.ERROR})
        assert command == c.REPLY and body == {"req": 2, "ok": True}
        status, acked, _ = HttpLongPoll(node, "POST", f"/tasks/{http_task['id']}/ack",
                                        {"attempt": http_task["attempt"]}).answer()
        assert (status, acked) == (200, {"ok": True})
        node.thread.join(ANSWER)          # nothing leased is left: the drain ends, the node stops
        assert not node.thread.is_alive()
    finally:
        consumer.close(0)


def test_a_node_stopped_at_once_still_answers_its_long_polls(drain_node: NodeThread, ctx: zmq.Context) -> None:
    """Fault: a node stopping with nothing running (no grace to wait) closed
    its sockets under the ZeroMQ long-polls it held, unanswered. They are
    answered ``shutting_down`` before the sockets close."""
    node = drain_node
    poller = dealer(ctx, node)
    try:
        send(poller, c.RECEIVE, {"req": 1, "queues": ["empty"], "timeout": LONG})
        wait_for(lambda: parked(node) == 1, "the RECEIVE to be parked")
        node.call(lambda: green.Greenlet.spawn(node.node.stop, GRACE))
        command, body = read(poller, {c.REPLY, c.ERROR})
        assert command == c.ERROR and body["req"] == 1 and body["code"] == "shutting_down"
    finally:
        poller.close(0)


def test_a_result_wait_a_stopping_node_refuses_goes_on_at_the_next_node_or_a_second_later() -> None:
    """Fault: with the node now answering a RESULT wait ``shutting_down``
    when it stops (it closed the connection before: a ``NoAnswer``, which
    the client's wait_result rides out), the Python client raised that
    ``ShuttingDown`` from ``result()`` at once -- without asking the other
    nodes, which hold copies. Now the other nodes are asked in the same
    round, and when every node answered so, all again after
    ``SHUTTING_DOWN_PAUSE`` (no spin), until the wait's timeout."""
    from miyaq.client import operations as ops
    from miyaq.client.nodes import Nodes
    from miyaq.errors import ShuttingDown

    asked: list[int | None] = []
    paused: list[float] = []

    def a_stops_b_answers(step: ops.Ask) -> dict[str, Any]:
        asked.append(step.node)
        if step.node == 0:
            raise ShuttingDown("the node is shutting down")
        return {"state": "done", "result": None}

    answer = ops.run(ops.wait_result(Nodes(["a", "b"]), "t1", 60.0, 0, 10.0), a_stops_b_answers, paused.append)
    assert answer["state"] == "done" and asked == [0, 1] and paused == []

    def both_stop_then_one_is_back(step: ops.Ask) -> dict[str, Any]:
        asked.append(step.node)
        if len(asked) <= 2:
            raise ShuttingDown("the node is shutting down")
        return {"state": "done", "result": None}

    asked.clear()
    answer = ops.run(ops.wait_result(Nodes(["a", "b"]), "t1", 60.0, 0, 10.0), both_stop_then_one_is_back,
                     paused.append)
    assert answer["state"] == "done" and asked == [0, 1, 0] and paused == [ops.SHUTTING_DOWN_PAUSE]
