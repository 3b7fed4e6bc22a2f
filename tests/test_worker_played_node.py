"""What a worker does when its node's view and its own differ, or its node
misbehaves: a task leased again while an earlier attempt still runs here, a
node sending past the credit it was granted, a delivery malformed but naming
its task. A raw ROUTER plays the node (tests/played_node.py); a real
:class:`~miyaq.worker.runner.Worker` runs in a thread. No timing is asserted:
waits are bounded guards (``wait_for``)."""
from __future__ import annotations

from typing import Any

import pytest
from fuzz_inputs import pack
from played_node import PlayedNode

import miyaq
from miyaq.protocol import commands as c
from miyaq.runtime import green
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(60)

app = miyaq.App()


@app.task(name="nap")
def nap(seconds: float) -> float:
    green.sleep(seconds)
    return seconds


def delivery(task_id: str, attempt: int, seconds: float, timeout: float = 30.0) -> list[Any]:
    return [task_id, "default", "nap", pack([[seconds], {}]), attempt, timeout]


@pytest.fixture
def node():
    played = PlayedNode()
    yield played
    played.close()


def linked(node: PlayedNode, thread_worker: Any, **options: Any) -> Any:
    worker = thread_worker(app, node.endpoint, **options)
    wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
    return worker.worker


def dispatch(node: PlayedNode, *deliveries: list[Any]) -> None:
    node.send([c.TAG, c.DISPATCH, pack({"tasks": list(deliveries)})])


def test_a_task_leased_again_while_an_earlier_attempt_runs_stops_that_attempt(node, thread_worker) -> None:
    """Fault: the node's lease on a hung attempt ran out before the worker's
    watchdog looked (the node's lease starts when it sends, the watchdog's
    clock when the handler starts), and the node leased the task again -- to
    this worker. Before, the second attempt took the first one's place in
    the worker's books: the first was never stopped and held its runner for
    good, and once either ended, the other was out of sight of cancels, the
    watchdog and the drain. Now the earlier attempt is stopped at once and
    reported, and a cancel stops the later one."""
    worker = linked(node, thread_worker, concurrency=2, prefetch=0)
    dispatch(node, delivery("t1", 1, 1000.0))
    wait_for(lambda: node.pump() or "t1" in worker.running, what="attempt 1 running")
    dispatch(node, delivery("t1", 2, 1000.0))
    wait_for(lambda: node.pump() or ("failed", "t1", 1) in [r[:3] for r in node.reports],
             what="attempt 1 stopped and reported")
    assert worker.running["t1"].attempt == 2
    node.send([c.TAG, c.ABORT, pack({"ids": ["t1"]})])
    wait_for(lambda: node.pump() or ("failed", "t1", 2) in [r[:3] for r in node.reports],
             what="attempt 2 cancelled and reported")
    wait_for(lambda: node.pump() or worker.busy_count() == 0, what="every slot free")
    assert not worker.running and not worker.superseded
    errors = {attempt: error["type"] for kind, _, attempt, error in node.reports}
    assert errors == {1: "Timeout", 2: "Aborted"}, node.reports
    dispatch(node, delivery("t2", 1, 0.0), delivery("t3", 1, 0.0))    # both runners serve again
    wait_for(lambda: node.pump() or {"t2", "t3"} <= set(node.done), what="two tasks run")


def test_the_same_attempt_delivered_twice_runs_once(node, thread_worker) -> None:
    """Fault: a buggy node sends a delivery again (same task, same attempt)
    while it runs. The running attempt goes on; the repeat is ignored."""
    worker = linked(node, thread_worker, concurrency=2, prefetch=0)
    dispatch(node, delivery("t1", 1, 1000.0))
    wait_for(lambda: node.pump() or "t1" in worker.running, what="attempt 1 running")
    dispatch(node, delivery("t1", 1, 0.0), delivery("t2", 1, 0.0))
    wait_for(lambda: node.pump() or "t2" in node.done, what="the next delivery run")
    assert worker.running["t1"].attempt == 1 and not worker.superseded and node.reports == [
        ("done", "t2", 1, node.done["t2"])]


def test_deliveries_past_twice_the_credit_are_given_back(node, thread_worker) -> None:
    """Fault: a buggy or hostile node sends far more tasks than the credit
    the worker granted. Before, the worker kept every one (491,520 held in
    an audit's run, 397 MiB). Now it holds at most twice its capacity and
    gives back the rest unstarted, with no credit."""
    worker = linked(node, thread_worker, concurrency=1, prefetch=1)
    capacity = worker.capacity
    held = 2 * capacity
    tasks = [delivery(f"t{i}", 1, 1000.0) for i in range(held + 10)]
    dispatch(node, *tasks)
    wait_for(lambda: node.pump() or node.returned, what="a RETURN")
    assert node.returned == [{"ids": [d[0] for d in tasks[held:]], "credit": False}]
    assert len(worker.running) + len(worker.backlog) == held


def test_a_malformed_delivery_that_names_its_task_is_reported_failed(node, thread_worker) -> None:
    """Fault: a node (another implementation, or a buggy one) sends a
    delivery with a wrong field -- a body that is a string, a timeout that is
    a string. Before, it was dropped with a warning and never reported: the
    node kept that attempt leased to the worker until its lease ran out, a
    slot lost meanwhile. Now it is reported failed for good (``BadDelivery``,
    not retried: the node would send it the same way again)."""
    linked(node, thread_worker, concurrency=1)
    dispatch(node, ["x1", "default", "nap", "a str body", 1, 30.0],
             ["x2", "default", "nap", pack([[0.0], {}]), 3, "30"],
             [b"not an id", "default", "nap", pack([[0.0], {}]), 1, 30.0],
             delivery("ok", 1, 0.0))
    wait_for(lambda: node.pump() or ({"x1", "x2"} <= set(node.failed) and "ok" in node.done),
             what="the reports")
    assert {r[1]: (r[2], r[3]["type"], r[3]["retry"]) for r in node.reports if r[0] == "failed"} == {
        "x1": (1, "BadDelivery", False), "x2": (3, "BadDelivery", False)}


def test_a_worker_whose_handlers_submits_cannot_be_flushed_still_stops(node, monkeypatch) -> None:
    """Fault: at stop, the app's client cannot flush what handlers submitted
    (the node is full and keeps answering busy: the flush times out). Before
    2026-12-05 that Timeout ended the stop half way: the worker never
    stopped, and a second SIGTERM ended it with gevent's LoopExit. Now it is
    logged and the stop goes on."""
    from miyaq.errors import Timeout
    from miyaq.testing.harness import ThreadWorker

    def flush_fails() -> None:
        raise Timeout("3 submits not finished within 10s")

    monkeypatch.setattr(app, "close", flush_fails)
    running = ThreadWorker(app, [node.endpoint], concurrency=1, heartbeat=0.25, grace=0.5).start()
    try:
        wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
    finally:
        running.stop()
    assert running.worker._stopped.is_set()
