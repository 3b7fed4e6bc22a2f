"""A worker whose node goes away: the connection closes (the node exited or
was killed) or the node falls silent. Two raw ROUTERs play two holders of
the task, so each test can end one node's life at an exact point, and the
node's heartbeat is 60 s, so only a closed connection -- not silence, 180 s
later -- can make the worker act within the test's time.

The unit tests hold :class:`~miyaq.worker.routing.Routes` to its bounds and
its choice of holder."""
from __future__ import annotations

import threading
import uuid
from typing import Any

import msgpack
import pytest
import zmq

import miyaq
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import green
from miyaq.testing.harness import ThreadWorker, wait_for
from miyaq.worker import routing
from miyaq.worker.routing import Routes

pytestmark = pytest.mark.timeout(60)

HEARTBEAT = 60.0

app = miyaq.App()
release = threading.Event()


@app.task(name="answer")
def answer() -> int:
    return 42


@app.task(name="refuse")
def refuse() -> None:
    raise miyaq.Reject("do not run me again")


@app.task(name="wait_for_release")
def wait_for_release() -> str:
    release.wait(30)
    return "released"


@app.task(name="yield_until_release")
def yield_until_release() -> str:
    """Waits for ``release`` without blocking the worker's hub (it can stop meanwhile)."""
    for _ in range(3000):
        if release.is_set():
            return "released"
        green.sleep(0.01)
    return "timed out"


touch_now = threading.Event()
touched = threading.Event()


@app.task(name="touch_when_told")
def touch_when_told() -> str:
    """A long handler that touches its task when the test says so."""
    touch_now.wait(30)
    miyaq.current_task().touch()
    touched.set()
    release.wait(30)
    return "released"


class RawHolder:
    """A ROUTER standing in for one holder: welcomes every READY with a 60 s
    heartbeat and keeps what the worker reports (DONE, TOUCH)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.link: bytes | None = None          # the worker link's identity (its READY)
        self.done: list[list[Any]] = []
        self.done_credit: list[bool] = []       # each DONE message's "credit"
        self.failed: list[list[Any]] = []
        self.failed_credit: list[bool] = []
        self.touched: list[str] = []
        self.readies = 0

    def pump(self, timeout_ms: int = 50) -> None:
        while self.sock.poll(timeout_ms):
            peer, _tag, command, body = self.sock.recv_multipart()
            data = msgpack.unpackb(body, raw=False)
            if command == c.READY:
                self.readies += 1
                self.link = peer
                self.sock.send_multipart([peer, *codec.encode(c.WELCOME, {
                    "node": self.endpoint, "heartbeat": HEARTBEAT, "service": self.endpoint})])
            elif command == c.DONE:
                self.done.extend(data["done"])
                self.done_credit.append(data.get("credit", True))
            elif command == c.FAILED:
                self.failed.extend(data["failed"])
                self.failed_credit.append(data.get("credit", True))
            elif command == c.TOUCH:
                self.touched.extend(data["ids"])
            timeout_ms = 0

    def dispatch(self, name: str, holders: Any) -> str:
        assert self.link is not None
        task_id = uuid.uuid4().hex
        body = msgpack.packb([[], {}])
        delivery = [task_id, "default", name, body, 1, 30.0, holders]
        self.sock.send_multipart([self.link, *codec.encode(c.DISPATCH, {"tasks": [delivery]})])
        return task_id

    def reconnect(self) -> None:
        """Tell the worker this node does not know it (as after its BYE)."""
        assert self.link is not None
        self.sock.send_multipart([self.link, *codec.encode(c.RECONNECT, {})])

    def abort(self, task_id: str) -> None:
        assert self.link is not None
        self.sock.send_multipart([self.link, *codec.encode(c.ABORT, {"ids": [task_id]})])

    def close(self) -> None:
        if not self.sock.closed:
            self.sock.close(linger=0)
            self.ctx.term()


@pytest.fixture
def holders():
    made = [RawHolder(), RawHolder()]
    yield made
    for holder in made:
        holder.close()


@pytest.fixture
def worker_of(thread_worker):
    """Factory: a Worker of this module's app connected to the holders."""
    def make(holders: list[RawHolder], **options: Any) -> ThreadWorker:
        return thread_worker(app, [h.endpoint for h in holders], heartbeat=HEARTBEAT, grace=1.0, **options)
    return make


def _registered(worker_holders: list[RawHolder]) -> None:
    def welcomed() -> bool:
        for holder in worker_holders:
            holder.pump()
        return all(holder.link is not None for holder in worker_holders)
    wait_for(welcomed, what="the worker registered with both holders")


def _pumped(holder: RawHolder, predicate: Any, what: str) -> None:
    def check() -> bool:
        holder.pump()
        return bool(predicate())
    wait_for(check, timeout=20, what=what)


@pytest.mark.parametrize("name, kind", [("answer", "done"), ("refuse", "failed")])
def test_a_report_the_node_read_before_it_was_killed_is_sent_again_to_another_holder(holders, worker_of, name, kind):
    """Fault: the node reads the worker's DONE -- or FAILED, of a failure
    the handler says must not be retried (``Reject``) -- and dies (kill -9:
    its connection closes) before it tells the task's other holder. The
    worker sends that report again to the other holder at once, so its
    standby copy finishes (or dead-letters) the task instead of running it a
    second time."""
    first, second = holders
    worker_of(holders)
    _registered(holders)
    task_id = first.dispatch(name, [first.endpoint, second.endpoint])
    _pumped(first, lambda: getattr(first, kind), f"the first holder read the {kind.upper()}")
    assert [item[0] for item in getattr(first, kind)] == [task_id]
    if kind == "failed":
        assert first.failed[0][2]["type"] == "Reject" and first.failed[0][2]["retry"] is False

    first.close()

    _pumped(second, lambda: getattr(second, kind), f"the {kind.upper()} sent again to the other holder")
    assert getattr(second, kind) == getattr(first, kind) and [item[1] for item in second.failed + second.done] == [1]
    assert getattr(second, f"{kind}_credit") == [False]      # the slot was the first holder's


def _running_when_its_node_dies(holders: list[RawHolder], worker_of: Any, name: str) -> str:
    """Dispatch task ``name`` from the first holder (both hold it), and once
    it runs, close the first holder (a node killed); the task's id."""
    first, second = holders
    for event in (release, touch_now, touched):
        event.clear()
    w = worker_of(holders, pool="threads")
    _registered(holders)
    task_id = first.dispatch(name, [first.endpoint, second.endpoint])
    wait_for(lambda: task_id in w.worker.running, what="the task running")
    first.close()
    return task_id


def test_a_task_still_running_when_its_node_dies_is_touched_and_reported_at_another_holder(holders, worker_of):
    """Fault: the node that dispatched a running task is killed (its
    connection closes). The worker TOUCHes the task at the other holder at
    once -- its standby copy must not start it -- and reports the outcome
    there when the handler returns."""
    second = holders[1]
    task_id = _running_when_its_node_dies(holders, worker_of, "wait_for_release")
    _pumped(second, lambda: task_id in second.touched, "a TOUCH at the other holder")
    release.set()
    _pumped(second, lambda: second.done, "the DONE at the other holder")
    assert [item[0] for item in second.done] == [task_id]
    assert second.done_credit == [False]


def test_a_long_task_touched_after_its_node_died_is_touched_at_another_holder(holders, worker_of):
    """Fault: the node that dispatched a long task dies (its connection
    closes) while the handler goes on touching it. Each later touch goes to
    another holder, which keeps its standby copy waiting: before, they went
    to the dead node, and the standby copy started the task a second time a
    lease after the first TOUCH."""
    second = holders[1]
    task_id = _running_when_its_node_dies(holders, worker_of, "touch_when_told")
    _pumped(second, lambda: second.touched == [task_id], "the TOUCH when the node was lost")
    touch_now.set()
    assert touched.wait(20)
    _pumped(second, lambda: second.touched == [task_id, task_id], "the handler's TOUCH at the other holder")
    release.set()
    _pumped(second, lambda: second.done, "the DONE at the other holder")


def test_deliveries_that_never_run_leave_nothing_behind(holders, worker_of):
    """A delivery with no handler here, and one aborted while it waited in
    the backlog, fail without running: the worker keeps nothing of them
    (their holders included), however long it runs."""
    first, second = holders
    release.clear()
    w = worker_of(holders, pool="threads", concurrency=1, prefetch=2)
    _registered(holders)
    both = [first.endpoint, second.endpoint]
    running = first.dispatch("wait_for_release", both)
    wait_for(lambda: running in w.worker.running, what="the first task running")
    waiting = first.dispatch("answer", both)
    unknown = first.dispatch("no_such_task", both)
    wait_for(lambda: len(w.worker.backlog) == 2, what="two deliveries in the backlog")
    first.abort(waiting)
    wait_for(lambda: len(w.worker.backlog) == 1, what="the aborted delivery out of the backlog")
    release.set()
    _pumped(first, lambda: len(first.failed) == 2 and first.done, "every delivery reported")
    assert sorted((item[0], item[2]["type"]) for item in first.failed) == sorted(
        [(waiting, "Aborted"), (unknown, "UnknownTask")])
    assert w.worker.routes.holders == {}


@pytest.mark.parametrize("bad", [["tcp://127.0.0.1:1"] * 17, [7, None], ["x" * 513], "tcp://a,tcp://b"],
                         ids=["too-many", "not-strings", "too-long", "not-a-list"])
def test_holders_that_are_not_a_short_list_of_endpoints_are_ignored(holders, worker_of, bad):
    """Bad input from a node (a bug, or a hostile peer): a DISPATCH whose
    holders are not a list of at most 16 endpoints. The task runs and is
    reported to its node as usual; the worker keeps none of it."""
    first, _ = holders
    release.clear()
    w = worker_of(holders, pool="threads")
    _registered(holders)
    task_id = first.dispatch("wait_for_release", bad)
    wait_for(lambda: task_id in w.worker.running, what="the task running")
    assert task_id not in w.worker.routes.holders
    release.set()
    _pumped(first, lambda: first.done, "the DONE at its node")
    assert [item[0] for item in first.done] == [task_id]


# -- Routes ------------------------------------------------------------------------------

class FakeLink:
    def __init__(self, endpoint: str, lost: bool = False) -> None:
        self.endpoint = endpoint
        self.advertised: str | None = None
        self.lost = lost
        self.done: list[tuple[str, int, bytes | None]] = []
        self.failed: list[tuple[str, int, dict[str, Any]]] = []
        self.touched: list[str] = []

    def silent(self) -> bool:
        return self.lost

    def report_done(self, task_id: str, attempt: int, result: bytes | None, elsewhere: bool = False) -> None:
        assert elsewhere
        self.done.append((task_id, attempt, result))

    def report_failed(self, task_id: str, attempt: int, error: dict[str, Any], elsewhere: bool = False) -> None:
        assert elsewhere
        self.failed.append((task_id, attempt, error))

    def touch(self, task_id: str) -> None:
        self.touched.append(task_id)


def _routes(n: int = 3) -> tuple[Routes, list[FakeLink]]:
    links = [FakeLink(f"tcp://n{i}") for i in range(n)]
    return Routes(links), links  # type: ignore[arg-type]


def test_recent_results_are_kept_only_for_tasks_with_other_holders():
    routes, (a, b, _) = _routes()
    routes.sent_report(a, "standalone", 1, None, result=b"r")     # type: ignore[arg-type]
    routes.sent_report(a, "one-holder", 1, [a.endpoint], result=b"r")     # type: ignore[arg-type]
    routes.sent_report(a, "replicated", 1, [a.endpoint, b.endpoint], result=b"r")     # type: ignore[arg-type]
    assert [sent.task_id for sent in routes.recent] == ["replicated"]


def test_recent_results_are_bounded_in_count_bytes_and_age(monkeypatch):
    routes, (a, b, _) = _routes()
    holders = [a.endpoint, b.endpoint]
    now = [100.0]
    monkeypatch.setattr(routing, "monotonic", lambda: now[0])
    monkeypatch.setattr(routing, "RECENT_REPORT_MAX", 3)
    monkeypatch.setattr(routing, "RECENT_REPORT_BYTES", 10)
    for i in range(5):
        routes.sent_report(a, f"t{i}", 1, holders, result=b"x")     # type: ignore[arg-type]
    assert [sent.task_id for sent in routes.recent] == ["t2", "t3", "t4"]
    routes.sent_report(a, "big", 1, holders, result=b"y" * 10)     # type: ignore[arg-type]
    assert [sent.task_id for sent in routes.recent] == ["big"]
    assert routes.recent_bytes == 10
    now[0] += routing.RECENT_REPORT_SECONDS + 1
    routes.sent_report(a, "late", 1, holders, result=None)     # type: ignore[arg-type]
    assert [sent.task_id for sent in routes.recent] == ["late"]
    assert routes.recent_bytes == 0


def test_a_lost_node_s_results_go_to_a_live_other_holder_and_stay_kept_there():
    routes, (a, b, c_) = _routes()
    routes.sent_report(a, "t1", 2, [a.endpoint, c_.endpoint], result=b"r1")     # type: ignore[arg-type]
    routes.sent_report(b, "t2", 1, [b.endpoint, c_.endpoint], result=b"r2")     # type: ignore[arg-type]
    routes.sent_report(a, "t3", 1, [a.endpoint, b.endpoint, c_.endpoint], result=b"r3")     # type: ignore[arg-type]
    b.lost = True       # b is silent itself: t3 goes to c
    a.lost = True
    routes.link_lost(a)      # type: ignore[arg-type]
    assert c_.done == [("t1", 2, b"r1"), ("t3", 1, b"r3")]
    assert b.done == [] and a.done == []
    assert [(sent.task_id, sent.link) for sent in routes.recent] == [("t1", c_), ("t2", b), ("t3", c_)]
    c_.lost = True
    routes.link_lost(c_)     # type: ignore[arg-type]
    assert a.done == [] and b.done == []     # no live holder left: nothing sent, nothing lost from the record
    assert len(routes.recent) == 3


def test_a_lost_node_s_failures_go_to_another_holder_and_count_against_the_byte_bound(monkeypatch):
    routes, (a, b, _) = _routes()
    monkeypatch.setattr(routing, "RECENT_REPORT_BYTES", 2000)
    error = {"type": "Reject", "message": "m" * 1000, "retry": False}
    routes.sent_report(a, "refused", 3, [a.endpoint, b.endpoint], error=error)     # type: ignore[arg-type]
    routes.sent_report(a, "done", 1, [a.endpoint, b.endpoint], result=b"r")     # type: ignore[arg-type]
    assert routes.recent_bytes > 1000
    routes.sent_report(a, "refused-too", 1, [a.endpoint, b.endpoint], error=error)     # type: ignore[arg-type]
    assert [sent.task_id for sent in routes.recent] == ["done", "refused-too"]     # the oldest went: bytes
    a.lost = True
    routes.link_lost(a)      # type: ignore[arg-type]
    assert b.failed == [("refused-too", 1, error)] and b.done == [("done", 1, b"r")]


def test_a_lost_node_s_running_tasks_are_touched_at_another_holder():
    routes, (a, b, _) = _routes()
    routes.origin["running"] = a     # type: ignore[assignment]
    routes.holders["running"] = [a.endpoint, b.endpoint]
    a.lost = True
    routes.link_lost(a)      # type: ignore[arg-type]
    assert b.touched == ["running"]
    assert routes.report_link(a, "running") is b     # type: ignore[arg-type, comparison-overlap]


def test_a_worker_that_is_stopping_reports_its_last_task_without_asking_for_another(holders, worker_of):
    """Fault: SIGTERM while a task runs. The worker returns what it had not
    started and waits for the running task; its DONE says ``"credit":
    false``, and a node that says it does not know the worker (RECONNECT)
    does not make it register again. Before, the DONE gave the node a slot back, the node leased the
    worker another task (which it only returned), and the BYE right after
    put that task back as a spent attempt: a task run on attempt 2 that
    never ran on attempt 1 (a full-suite run of
    test_worker_faults::test_sigterm_on_worker_finishes_running_and_returns_the_rest)."""
    node = holders[0]
    release.clear()
    w = worker_of([node])
    _registered([node])
    task_id = node.dispatch("yield_until_release", None)
    wait_for(lambda: task_id in w.worker.running, what="the task running")
    stopping = threading.Thread(target=w.stop)
    stopping.start()
    wait_for(lambda: w.worker.stopping, what="the worker stopping")
    node.reconnect()            # a node that forgot it: a stopping worker does not register again
    release.set()
    wait_for(lambda: node.pump() or node.done, what="the DONE")
    stopping.join(30)
    node.pump()
    assert [d[0] for d in node.done] == [task_id] and node.done_credit == [False]
    assert node.readies == 1
