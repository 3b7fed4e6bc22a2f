"""Since when a running task runs: its info's ``started`` and ``running_seconds``.

Fault simulated throughout: a handler that hangs (a consumer holds a task
and does not answer). ``miyaq_oldest_running_task_seconds`` climbed, but
nothing a task's status shows -- ``miyaq status ID``, ``GET /tasks/ID``,
``client.status``, the console's task page -- said since when the task ran.
The start is read from the starts the node's metrics keep already
(:class:`miyaq.gateway.task_timings.TaskTimings`), only when a view asks:
the current attempt's lease, a new one after a retry, a give-back or a lost
worker; none while the task waits, and none on a node without metrics.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from engine_doubles import LeasingConsumer
from gateway_harness import FIXTURES, Http
from prometheus_client import CollectorRegistry

from miyaq.cli.main import main
from miyaq import Client
from miyaq.config import NodeConfig
from miyaq.core import task_views
from miyaq.core.engine import Engine
from miyaq.gateway import task_timings
from miyaq.gateway.task_timings import TaskTimings
from miyaq.protocol.commands import ACCEPTED
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import wall
from miyaq.store.task import READY, RETRYING, RUNNING, SCHEDULED, Task

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0


class Clock:
    """The wall clock the timings and the views read, moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr(task_timings, "wall", lambda: self.now)
        monkeypatch.setattr(task_views, "wall", lambda: self.now, raising=False)


def _engine(with_timings: bool = True) -> Engine:
    engine = Engine(NodeConfig())
    if with_timings:     # what NodeMetrics.start does
        timings = TaskTimings(CollectorRegistry())
        engine.listeners.append(timings)
        engine.run_starts = timings
    return engine


def _submit(engine: Engine, task_id: str, **wire: Any) -> None:
    task = task_from_wire({"id": task_id, "name": "hang", **wire}, T0, engine.config)
    assert engine.submit(task, T0) == (ACCEPTED, None)


def _lease(engine: Engine, consumer: LeasingConsumer, now: float) -> Task:
    task = engine.take(["default"], now)
    assert task is not None
    engine.start(task, consumer, now)
    return task


def _since(engine: Engine, task_id: str) -> tuple[Any, Any]:
    info = engine.info(task_id)
    return info.get("started"), info.get("running_seconds")


# -- the engine's views --------------------------------------------------------------------
def test_a_running_task_says_when_its_attempt_was_leased(monkeypatch):
    clock = Clock(monkeypatch)
    engine = _engine()
    _submit(engine, "t", timeout=600)
    assert _since(engine, "t") == (None, None)                 # ready: not running, no start
    _lease(engine, LeasingConsumer("c"), T0)
    clock.now = T0 + 42.25
    assert _since(engine, "t") == (T0, 42.25)
    listed = engine.list_tasks(None, RUNNING, 10)
    assert [(t["id"], t["started"], t["running_seconds"]) for t in listed] == [("t", T0, 42.25)]
    assert engine.complete("t", 1, None, clock.now)
    assert _since(engine, "t") == (None, None)                 # finished: a tombstone


def test_a_retried_task_counts_from_its_new_attempt(monkeypatch):
    """Fault: the first attempt fails; the second's start is the one shown,
    and none while the task waits for it."""
    clock = Clock(monkeypatch)
    engine = _engine()
    _submit(engine, "r", backoff=0.0, max_retries=3)
    _lease(engine, LeasingConsumer("c"), T0)
    clock.now = T0 + 5
    assert engine.fail("r", 1, {"type": "E", "message": "boom"}, True, 10.0, clock.now)
    assert engine.info("r")["state"] == RETRYING and _since(engine, "r") == (None, None)
    engine.fire_due(T0 + 15)
    clock.now = T0 + 15
    task = _lease(engine, LeasingConsumer("c"), clock.now)
    clock.now = T0 + 16
    assert task.attempt == 2 and _since(engine, "r") == (T0 + 15, 1.0)


def test_a_task_given_back_and_leased_again_counts_from_the_new_lease(monkeypatch):
    """Fault: a consumer gives the task back unstarted; leased again, its
    attempt has the same number (none was spent): the start shown is the
    new lease's, not the given-back one's."""
    clock = Clock(monkeypatch)
    engine = _engine()
    _submit(engine, "g")
    consumer = LeasingConsumer("c")
    _lease(engine, consumer, T0)
    assert engine.give_back("g", 1, "c", T0 + 3)
    assert engine.info("g")["state"] == READY and _since(engine, "g") == (None, None)
    clock.now = T0 + 7
    task = _lease(engine, consumer, clock.now)
    clock.now = T0 + 8
    assert task.attempt == 1 and _since(engine, "g") == (T0 + 7, 1.0)


def test_a_task_lost_with_its_worker_counts_from_its_next_lease(monkeypatch):
    """Fault: the worker running the task is lost (and, for a second task,
    a lease runs out): no start while the task waits to run again, the
    next lease's once it does."""
    clock = Clock(monkeypatch)
    engine = _engine()
    _submit(engine, "lost", timeout=600)
    _submit(engine, "expired", timeout=10)
    lost = _lease(engine, LeasingConsumer("w1"), T0)
    _lease(engine, LeasingConsumer("w1"), T0)
    clock.now = T0 + 10
    engine.lose(lost, "worker lost", clock.now)
    engine.fire_due(clock.now)                                 # "expired"'s lease ran out
    for task_id in ("lost", "expired"):
        assert engine.info(task_id)["state"] != RUNNING and _since(engine, task_id) == (None, None)
    clock.now = T0 + 20
    again = [_lease(engine, LeasingConsumer("w2"), clock.now), _lease(engine, LeasingConsumer("w2"), clock.now)]
    clock.now = T0 + 21
    assert sorted(t.attempt for t in again) == [2, 2]
    assert _since(engine, "lost") == _since(engine, "expired") == (T0 + 20, 1.0)


# -- every way to ask, on a node --------------------------------------------------------------
def test_every_view_of_a_running_task_says_since_when(make_http_node, make_node, capsys):
    """A pull consumer takes a task and never answers. ``GET /tasks/ID``,
    ``client.status``, ``miyaq status ID`` (text and ``--json``) and the
    console's task page each say when its attempt was leased; after the
    node's metrics stopped keeping starts, none does, nor does a node
    without an HTTP port (no metrics: no starts kept)."""
    _without_metrics_no_start(make_node())
    node = make_http_node()
    http = Http(node.url)
    client = Client(f"tcp://127.0.0.1:{node.config.port}", request_timeout=5.0)
    try:
        http.post("/tasks", {"name": "hang", "queue": "h", "id": "hang-1"})
        status, body, _ = http.post("/receive", {"queues": ["h"]})
        assert status == 200 and body["task"]["id"] == "hang-1"
        task = http.get("/tasks/hang-1")[1]["task"]
        assert task["state"] == RUNNING and isinstance(task["started"], float)
        assert 0 <= task["running_seconds"] < 30
        assert task["lease_end"] - task["started"] == pytest.approx(task["timeout"], abs=1.0)
        info = client.status("hang-1")
        assert info["started"] == task["started"] and info["running_seconds"] >= task["running_seconds"]
        endpoint = ["--connect", f"tcp://127.0.0.1:{node.config.port}"]
        assert main(["status", "hang-1", *endpoint]) == 0
        lines = capsys.readouterr().out.splitlines()
        # a time as its unix value and the local date and time (e11ed5f)
        assert any(line.startswith(f"started: {task['started']} (") for line in lines), lines
        assert any(line.startswith("running_seconds: ") for line in lines), lines
        assert main(["status", "hang-1", "--json", *endpoint]) == 0
        assert json.loads(capsys.readouterr().out)["started"] == task["started"]
        html = http.get("/ui/tasks/hang-1")[1]
        html = html.decode() if isinstance(html, bytes) else html
        assert 'id="task-started"' in html and "attempt 1 leased" in html
        node.call(lambda: node.node.part("metrics").stop())
        assert "started" not in http.get("/tasks/hang-1")[1]["task"]
    finally:
        client.close(flush=False)
        http.close()



def _without_metrics_no_start(node: Any) -> None:
    client = Client(node.endpoint, request_timeout=5.0)
    try:
        client.submit("hang", id="quiet-1", queue="h", wait=True)
        assert client.receive(["h"], timeout=5.0) is not None
        info = client.status("quiet-1")
        assert info["state"] == RUNNING and info["attempt"] == 1
        assert "started" not in info and "running_seconds" not in info
    finally:
        client.close(flush=False)


# -- a cluster: the runner knows, a standby copy does not -----------------------------------------
def test_the_runner_says_since_when_and_a_standby_copy_says_it_waits(inproc):
    """Two holders of a task; the runner's worker holds it. The runner's
    info has its start; the other holder's copy is a standby (``scheduled``,
    its timer past the runner's lease): it heard the attempt and the lease
    end, never the start, and shows none."""
    cluster = inproc(2, replicas=2)
    for handle in cluster.nodes.values():        # in-process nodes have no HTTP port: hook the timings in
        timings = TaskTimings(CollectorRegistry())
        handle.engine.listeners.append(timings)
        handle.engine.run_starts = timings
    tid = cluster.task_id()
    runner, standby = cluster.holders(tid, 2)
    worker = cluster.worker(runner)
    cluster.submit_accepted(standby, tid)
    cluster.wait_until(lambda: worker.runs(tid), what="the runner to start the task")
    cluster.wait_until(lambda: cluster[standby].task(tid) is not None and cluster[standby].task(tid).standby,
                       what="the standby copy to hear the start")
    ran = cluster[runner].engine.info(tid)
    assert ran["state"] == RUNNING and ran["started"] <= wall() and ran["running_seconds"] >= 0
    copy = cluster[standby].engine.info(tid)
    assert copy["state"] == SCHEDULED and copy["attempt"] == 1 and "started" not in copy
    worker.complete(tid)
