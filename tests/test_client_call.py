"""``Client.call()``: the RESULT long-poll sent right behind the SUBMIT, and
what happens when the node that got them did not store the task itself."""
from __future__ import annotations

import threading
from typing import Any, Callable

import msgpack
import pytest
import zmq

from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

Answer = Callable[[bytes, dict[str, Any]], list[tuple[bytes, dict[str, Any]]]]


class ScriptedNode:
    """A raw ROUTER in a thread that answers each message with ``answer``
    (command, body) -> [(command, body), ...] and records what it got."""

    def __init__(self, answer: Answer) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.answer = answer
        self.got: list[tuple[bytes, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            peer, _, command, raw = self.sock.recv_multipart()
            body: dict[str, Any] = msgpack.unpackb(raw, raw=False)
            self.got.append((command, body))
            for reply, reply_body in self.answer(command, body):
                self.sock.send_multipart([peer, *codec.encode(reply, reply_body)])

    def commands(self) -> list[bytes]:
        return [command for command, _ in self.got if command != c.RING]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)
        self.ctx.term()


def done(req: int, value: Any) -> tuple[bytes, dict[str, Any]]:
    return c.REPLY, {"req": req, "state": "done", "result": msgpack.packb(value, use_bin_type=True)}


def not_found(req: int, task_id: str) -> tuple[bytes, dict[str, Any]]:
    return c.ERROR, {"req": req, "code": "not_found", "message": f"no task {task_id}"}


def ring_or_status(command: bytes, body: dict[str, Any]) -> list[tuple[bytes, dict[str, Any]]]:
    """What every scripted node answers besides SUBMIT and RESULT."""
    return [(c.REPLY, {"req": body["req"]})]


@pytest.fixture
def scripted(client_for):
    """Factory: a ScriptedNode answering with ``answer`` and an idle client of
    it (see :func:`settled`); the nodes are closed at the end."""
    nodes: list[ScriptedNode] = []

    def make(answer: Answer) -> tuple[ScriptedNode, Any]:
        node = ScriptedNode(answer)
        nodes.append(node)
        client = client_for(node.endpoint)
        settled(client)
        return node, client

    yield make
    for node in nodes:
        node.close()


def results_asked(node: ScriptedNode) -> list[str]:
    """The task ids of the RESULT requests the node got, in order."""
    return [body["id"] for command, body in node.got if command == c.RESULT]


def settled(client) -> None:
    """Wait until the client is idle with its I/O thread asleep, so the next
    call takes the short path (the first calls may find it discovering)."""
    io = client._io
    wait_for(lambda: client.status() is not None and io._armed and io._deaf, what="an idle client")


def test_call_sends_its_result_request_behind_the_submit(node, client, thread_worker):
    """An idle client's call(): SUBMIT and RESULT leave back to back from the
    caller's thread, and the result comes back."""
    from miyaq import App

    app = App()

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    thread_worker(app, node.endpoint)
    assert client.call("double", [2], timeout=30) == 4     # connected, worker ready
    commands: list[bytes] = []
    send = client._io.send

    def recording(index: int, frames: list[bytes]) -> bool:
        commands.append(frames[1])          # frames: version, command, body
        return send(index, frames)

    settled(client)
    client._io.send = recording
    results = [client.call("double", [i], timeout=30) for i in range(20)]
    assert results == [2 * i for i in range(20)]
    assert commands.count(c.SUBMIT) == 20 and commands.count(c.RESULT) == 20
    assert commands[:2] == [c.SUBMIT, c.RESULT]


def test_call_of_a_key_duplicate_asks_for_the_task_that_holds_the_key(scripted):
    """The node answers the SUBMIT as a duplicate of another task (same
    ``key``) and the pipelined RESULT with not_found: call() then waits for
    the result of the task that holds the key."""
    def answer(command: bytes, body: dict[str, Any]) -> list[tuple[bytes, dict[str, Any]]]:
        if command == c.SUBMIT:
            return [(c.SUBMITTED, {"results": [[t["id"], c.DUPLICATE, "first-task"] for t in body["tasks"]]})]
        if command == c.RESULT:
            if body["id"] == "first-task":
                return [done(body["req"], "the first one's result")]
            return [not_found(body["req"], body["id"])]
        return ring_or_status(command, body)

    node, client = scripted(answer)
    assert client.call("work", [1], key="k", timeout=10) == "the first one's result"
    assert results_asked(node)[-1] == "first-task"


def test_call_whose_submit_was_busy_asks_again_once_accepted(scripted):
    """Fault: the node is full for the first try (BUSY), so the RESULT right
    behind it finds no task; the client retries the submit, and call() asks
    for the result again once the task is accepted."""
    tries: list[str] = []
    stored: set[str] = set()

    def answer(command: bytes, body: dict[str, Any]) -> list[tuple[bytes, dict[str, Any]]]:
        if command == c.SUBMIT:
            results = []
            for t in body["tasks"]:
                tries.append(t["id"])
                if len(tries) == 1:
                    results.append([t["id"], c.REJECTED, {"code": "busy", "message": "full"}])
                else:
                    stored.add(t["id"])
                    results.append([t["id"], c.ACCEPTED, None])
            return [(c.SUBMITTED, {"results": results})]
        if command == c.RESULT:
            if body["id"] in stored:
                return [done(body["req"], 42)]
            return [not_found(body["req"], body["id"])]
        return ring_or_status(command, body)

    node, client = scripted(answer)
    assert client.call("work", [1], id="call-1", timeout=10) == 42
    assert tries == ["call-1", "call-1"]
    assert results_asked(node) == ["call-1", "call-1"]


def test_call_of_a_task_declared_with_a_lease_runs_it_with_that_lease(node, thread_worker):
    """Fault: a task declared with a lease, ``@app.task(timeout=10)`` --
    what docs/python-api.md tells a reader to do, since ``call()``'s own
    ``timeout`` is the wait -- could not be called: ``tdef.call(...)``
    raised ``TypeError: Client.call() got multiple values for keyword
    argument 'timeout'`` (the decorator's lease and the wait met in one
    call), with or without a wait given, nothing submitted. Now the task
    is submitted with its lease and the call waits for its result, on the
    short path (SUBMIT and RESULT back to back) like any other call."""
    from miyaq import App, current_task

    def leased_app() -> Any:
        app = App(node.endpoint)

        @app.task(name="leased", timeout=10)
        def leased(x: int) -> list[float]:
            ctx = current_task()
            assert ctx is not None
            return [x + 1, ctx.timeout]             # the lease it runs under
        return app

    thread_worker(leased_app(), node.endpoint)     # the worker's app: gevent clients
    app = leased_app()                              # the producer's: a threaded client
    leased = app.tasks["leased"]
    try:
        assert leased.call(1) == [2, 10.0]
        assert leased.call(2, timeout=30) == [3, 10.0]
        client = app.client
        settled(client)
        commands: list[bytes] = []
        send = client._io.send

        def recording(index: int, frames: list[bytes]) -> bool:
            commands.append(frames[1])          # frames: version, command, body
            return send(index, frames)

        client._io.send = recording
        assert leased.call(3, id="leased-3", timeout=30) == [4, 10.0]
        assert commands[:2] == [c.SUBMIT, c.RESULT]
        assert client.status("leased-3")["state"] == "done"       # the id given to call()
    finally:
        app.close()
