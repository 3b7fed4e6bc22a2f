"""The queue names registered workers serve are bounded (``MAX_SERVED_QUEUES``,
core/workers.py), so the views that list every queue -- STATUS, ``GET
/status``, ``GET /queues``, ``/metrics`` -- stay bounded whatever workers
claim. Before, each of ``max_workers`` workers could name 64 made-up queues
and every view listed their union (review23: 1,500 workers, 96,000 rows, a
30 MB STATUS). The bound is patched low here (20 names) so a few raw workers
reach it."""
from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from miyaq.core import workers as registry
from miyaq.protocol import commands as c
from miyaq.testing.harness import free_port, wait_for

BOUND = 20
REPLY_WAIT = 10_000    # ms; a guard against a hang, not a timing assertion


@pytest.fixture
def bounded(monkeypatch) -> None:
    """Workers may serve BOUND queue names (``raising=False``: the build
    before the bound has no such name, and must fail the tests, not error)."""
    monkeypatch.setattr(registry, "MAX_SERVED_QUEUES", BOUND, raising=False)


@pytest.fixture
def sockets() -> Iterator[Any]:
    ctx = zmq.Context()
    made: list[zmq.Socket] = []

    def make(endpoint: str) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoint)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()
    ctx.term()


def ready(sock: zmq.Socket, wid: str, queues: list[str]) -> tuple[bytes, dict[str, Any]]:
    """Send READY; the node's answer to it (heartbeats skipped)."""
    sock.send_multipart([c.TAG, c.READY, msgpack.packb({"worker": wid, "queues": queues, "capacity": 2})])
    while True:
        assert sock.poll(REPLY_WAIT), "no answer to READY"
        frames = sock.recv_multipart()
        if frames[1] != c.HEARTBEAT:
            return frames[1], msgpack.unpackb(frames[2])


def made_up(worker: int, n: int = 8) -> list[str]:
    return [f"w{worker:02d}-made-up-{j:02d}-" + "q" * 100 for j in range(n)]


def http_get(node, path: str) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{node.config.http_port}{path}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read()


def test_many_workers_naming_made_up_queues_leave_every_view_bounded(bounded, make_node, client_for, sockets):
    """Fault: 10 workers each name 8 queues nobody else serves (80 names,
    the bound 20). Two register (16 names); each further READY is refused
    ``busy`` (reason ``queues``, the message names the bound) and nothing of
    it is kept; STATUS, /status, /queues and /metrics list at most the bound
    of queues beyond the one holding a task. Before, all 10 registered and
    every view listed 81 queues."""
    node = make_node(heartbeat=5.0, http_port=free_port())     # long liveness: raw workers need not heartbeat
    client = client_for(node.endpoint)
    client.submit("job", [], queue="tasks-queue", countdown=600, wait=True)     # stored before the STATUS
    answers = [ready(sockets(node.endpoint), f"w{i}", made_up(i)) for i in range(10)]
    welcomed = [body for command, body in answers if command == c.WELCOME]
    refused = [body for command, body in answers if command == c.ERROR]
    assert len(welcomed) == 2 and len(refused) == 8
    assert all(b["code"] == "busy" and b.get("reason") == "queues" for b in refused)
    assert f"at most {BOUND}" in refused[0]["message"]
    status = client.status()
    assert status["totals"]["workers"] == 2
    assert len(status["queues"]) == 17              # 16 served + the task's
    assert status["queues"]["tasks-queue"]["scheduled"] == 1
    assert status["queues"][made_up(0)[0]]["workers"] == 1
    http_status = json.loads(http_get(node, "/status"))
    assert len(http_status["queues"]) == 17
    rows = json.loads(http_get(node, "/queues"))["queues"]
    assert len(rows) == 17
    metrics = http_get(node, "/metrics").decode()
    served = [line for line in metrics.splitlines() if line.startswith("miyaq_queue_workers{")]
    idle = [line for line in metrics.splitlines() if line.startswith("miyaq_queue_idle_slots{")]
    assert len(served) == 17 and len(idle) == 17    # as STATUS: the task's queue has its series at 0
    assert "miyaq_queue_workers{queue=\"tasks-queue\"} 0.0" in served


def test_a_worker_naming_served_queues_is_welcome_at_the_bound(bounded, make_node, client_for, sockets):
    """Fault the bound must not cause: at the bound, a fleet's next worker
    naming queues already served, or fewer of them, registers as ever; so
    does a registered worker that names new queues in place of its own
    (its old names are given back); a producer's new queue is not counted
    against the workers' names."""
    node = make_node(heartbeat=5.0)
    client = client_for(node.endpoint)
    first, second = sockets(node.endpoint), sockets(node.endpoint)
    assert ready(first, "a", made_up(0, 10))[0] == c.WELCOME
    assert ready(second, "b", made_up(1, 10))[0] == c.WELCOME     # 20: at the bound
    assert ready(sockets(node.endpoint), "c", made_up(0, 4))[0] == c.WELCOME
    assert ready(second, "b", made_up(2, 10))[0] == c.WELCOME     # the same worker, other names
    status = client.status()
    assert status["totals"]["workers"] == 3
    assert len(status["queues"]) == BOUND
    assert made_up(1)[0] not in status["queues"]
    assert status["queues"][made_up(0)[0]]["workers"] == 2
    handle = client.submit("job", [], queue="a-new-queue", countdown=600)
    assert client.status(handle.id)["state"] == "scheduled"


def test_a_refused_worker_registers_once_another_has_gone(bounded, make_node, client_for, sockets):
    """Fault: the bound held against a worker for good. Once a worker says
    BYE its names are given back, and the refused worker's next READY is
    welcome."""
    node = make_node(heartbeat=5.0)
    client = client_for(node.endpoint)
    first = sockets(node.endpoint)
    assert ready(first, "a", made_up(0, 15))[0] == c.WELCOME
    late = sockets(node.endpoint)
    command, body = ready(late, "late", made_up(1, 10))
    assert command == c.ERROR and body["code"] == "busy"
    first.send_multipart([c.TAG, c.BYE, msgpack.packb({"worker": "a"})])
    wait_for(lambda: client.status()["totals"]["workers"] == 0, what="the BYE to be handled")
    assert ready(late, "late", made_up(1, 10))[0] == c.WELCOME
    assert sorted(client.status()["queues"]) == sorted(made_up(1, 10))


def test_a_name_repeated_in_one_ready_counts_once(bounded, make_node, client_for, sockets):
    """Fault: a READY naming one queue 8 times counted as 8 workers of it
    (``workers`` in its row) and, against the bound, as more than it is."""
    node = make_node(heartbeat=5.0)
    client = client_for(node.endpoint)
    assert ready(sockets(node.endpoint), "a", ["same"] * 8 + made_up(0, 19))[0] == c.WELCOME
    status = client.status()
    assert status["queues"]["same"]["workers"] == 1
    assert len(status["queues"]) == BOUND
    (listed,) = status["workers"]
    assert listed["queues"].count("same") == 1


def test_registrations_share_one_string_a_queue_name(make_node, client_for, sockets):
    """Two workers naming the same queues keep one string a name between
    them (each READY decodes its own copies: with 64 names of 128
    characters, about 12 kB a worker of the same strings before;
    tracemalloc, /tmp/queuerows/footprint.py); a name no worker serves any
    more is forgotten."""
    node = make_node(heartbeat=5.0)
    client = client_for(node.endpoint)
    first, second = sockets(node.endpoint), sockets(node.endpoint)
    assert ready(first, "a", made_up(0, 3))[0] == c.WELCOME
    assert ready(second, "b", made_up(0, 3))[0] == c.WELCOME
    workers = node.node.core.workers     # type: ignore[union-attr]
    a, b = workers.by_wid["a"], workers.by_wid["b"]
    assert all(x is y for x, y in zip(a.queues, b.queues, strict=True))
    for sock, wid in ((first, "a"), (second, "b")):
        sock.send_multipart([c.TAG, c.BYE, msgpack.packb({"worker": wid})])
    wait_for(lambda: client.status()["totals"]["workers"] == 0, what="the BYEs to be handled")
    assert workers.workers_by_queue() == {} and client.status()["queues"] == {}


def test_a_real_worker_refused_says_why_and_registers_when_there_is_room(bounded, make_node, client_for, sockets,
                                                                        caplog):
    """Fault: a worker whose queues do not fit is left without a word, or
    never tries again. The Python worker logs the node's refusal (busy,
    the bound named) and, asked to register again at its next heartbeat
    (RECONNECT), is welcome once the worker holding the names has gone,
    and runs a task of its queue."""
    import miyaq
    from miyaq.testing.harness import ThreadWorker

    node = make_node(heartbeat=5.0)      # long liveness: the raw holder sends no heartbeat
    client = client_for(node.endpoint)
    holder = sockets(node.endpoint)
    assert ready(holder, "holder", made_up(0, BOUND))[0] == c.WELCOME
    app = miyaq.App(node.endpoint)

    @app.task(name="echo", queue="late-queue")
    def echo(x: int) -> int:
        return x

    try:
        with caplog.at_level("WARNING", logger="miyaq.worker.link"), \
                ThreadWorker(app, [node.endpoint], queues=["late-queue"], concurrency=1):
            wait_for(lambda: any("busy" in r.getMessage() and f"at most {BOUND}" in r.getMessage()
                                 for r in caplog.records), what="the worker to log the refusal")
            assert client.status()["totals"]["workers"] == 1      # the raw holder only
            holder.send_multipart([c.TAG, c.BYE, msgpack.packb({"worker": "holder"})])
            wait_for(lambda: "late-queue" in client.status()["queues"], timeout=20,
                     what="the worker to register again")
            assert client.call("echo", [7], queue="late-queue", timeout=20) == 7
    finally:
        app.close()
