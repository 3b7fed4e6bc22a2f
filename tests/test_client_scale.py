"""A client with many requests or submits outstanding at once: the work one
message, submit or timer pass costs does not grow with how many are open, and
more result waits than a node holds for one connection all get their result.

The work is counted, not timed: deadlines are :class:`CountedTime`, a float
that counts how often it is compared. Before 2026-12-05 the core's
``next_due`` (asked by the asyncio driver after every message, submit,
request and cancel) took the ``min`` of every open request's deadline and of
every capped submit's, and each timer pass walked them all: with 10,000
result long-polls open, about 250 µs of CPU a message and 10% of a core idle.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import pytest

import miyaq
import miyaq.aio
from apps import basic
from miyaq.client import operations as ops
from miyaq.client import requests
from miyaq.client.nodes import Nodes
from miyaq.client.wire import decode_outcome
from miyaq.errors import Busy, Timeout
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for
from test_client_core import make, pending, submitted


class CountedTime(float):
    """A point in time that counts every comparison made with it."""

    compared = 0

    def _count(self) -> None:
        CountedTime.compared += 1

    def __lt__(self, other: object) -> bool:
        self._count()
        return float(self) < float(other)  # type: ignore[arg-type]

    def __le__(self, other: object) -> bool:
        self._count()
        return float(self) <= float(other)  # type: ignore[arg-type]

    def __gt__(self, other: object) -> bool:
        self._count()
        return float(self) > float(other)  # type: ignore[arg-type]

    def __ge__(self, other: object) -> bool:
        self._count()
        return float(self) >= float(other)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (float, int)):
            return NotImplemented
        self._count()
        return float(self) == float(other)

    __hash__ = float.__hash__


def counted(work: Callable[[], Any]) -> int:
    """How many comparisons of CountedTime ``work`` makes."""
    CountedTime.compared = 0
    work()
    return CountedTime.compared


class Waiter:
    def __init__(self) -> None:
        self.value: Any = None
        self.error: Exception | None = None

    def set(self, value: Any) -> None:
        self.value = value

    def fail(self, error: Exception) -> None:
        self.error = error


def reply(req: int) -> list[bytes]:
    return codec.encode(c.REPLY, {"req": req, "state": "done"})


def with_open_requests(n: int) -> tuple[Any, list[int], list[Waiter]]:
    """A core with ``n`` RESULT long-polls open, due at 1000 + i."""
    core, _ = make(1)
    reqs, waiters = [], []
    for i in range(n):
        req, waiter = core.next_req(), Waiter()
        core.request(0, c.RESULT, {"req": req, "id": f"t{i}", "timeout": 900}, waiter,
                     CountedTime(1000.0 + i), 0.0)
        reqs.append(req)
        waiters.append(waiter)
    return core, reqs, waiters


def request_traffic(n: int) -> int:
    """Comparisons of deadlines made by what the asyncio driver does around
    messages while ``n`` long-polls are open: a reply, a request, a withdraw,
    a timer pass with nothing due -- each followed by next_timer (its _arm)."""
    core, reqs, waiters = with_open_requests(n)
    core.next_timer(1.0)

    def traffic() -> None:
        core.on_frames(0, reply(reqs[-1]), 1.0)          # the latest-due one answered
        core.next_timer(1.0)
        req = core.next_req()
        core.request(0, c.STATUS, {"req": req}, Waiter(), CountedTime(99_000.0), 1.0)
        core.next_timer(1.0)
        core.withdraw(reqs[-2], 1.0)
        core.next_timer(1.0)
        core.on_timer(2.0)
        core.next_timer(2.0)

    work = counted(traffic)
    assert waiters[-1].value is not None and all(w.error is None for w in waiters)
    return work


def test_the_work_a_message_costs_does_not_grow_with_the_open_requests() -> None:
    """Fault: 10,000 result long-polls open on one client. Each reply,
    request, withdraw and timer pass, and the next_timer after each, compared
    every open request's deadline (next_due's min, check_deadlines' walk):
    the work grew with the number open. It is now the same for 10 as for
    10,000."""
    few, many = request_traffic(10), request_traffic(10_000)
    assert many == few, (few, many)
    assert many < 50


def test_a_timer_pass_looks_only_at_the_requests_that_are_due() -> None:
    """Fault: check_deadlines walked every open request each pass. With
    10,000 open and one due, the pass fails that one, with a few dozen
    comparisons at most (a heap's pop), not 10,000."""
    core, reqs, waiters = with_open_requests(10_000)
    work = counted(lambda: core.on_timer(1000.0))
    assert isinstance(waiters[0].error, Timeout) and all(w.error is None for w in waiters[1:])
    assert work < 100, work
    assert core.next_timer(1000.0) == pytest.approx(0.1)     # MAX_POLL: the next one is at 1001


def test_the_deadline_heap_stays_bounded_as_requests_are_answered() -> None:
    """Answered requests leave their heap entries behind (passed over at the
    head); the heap is rebuilt before they outnumber the open ones twice, so
    its size follows the open requests, and empties with them."""
    core, reqs, waiters = with_open_requests(10_000)
    table = core.requests
    for k, req in enumerate(reversed(reqs)):      # the latest-due first: none surfaces at the head
        core.on_frames(0, reply(req), 1.0)
        core.next_timer(1.0)
        assert len(table.deadlines) <= 2 * len(table.open) + requests.STALE_SLACK + 1, k
    assert not table.open and not table.deadlines
    assert all(w.value is not None for w in waiters)


def capped_traffic(n: int) -> int:
    """Comparisons of deadlines made while ``n`` sent submits are capped
    (submit_timeout 4 below ack_timeout 5): one more submit sent, one
    acknowledged, a timer pass with nothing due -- each followed by next_timer."""
    core, transport = make(1, ack_timeout=5.0)
    for i in range(n):
        p, _ = pending(f"t{i}")
        p.deadline = CountedTime(4.0 + i / n)
        core.submit(p)
    core.on_timer(0.0)
    assert len(core.submits.pending) == n
    core.next_timer(0.0)

    def traffic() -> None:
        p, _ = pending("last", now=0.5)
        p.deadline = CountedTime(5.4)           # later than every other: capped all the same
        core.submit(p)
        core.on_timer(0.5)                          # sends it
        core.next_timer(0.5)
        core.on_frames(0, submitted([[f"t{n - 1}", "accepted", None]]), 0.6)
        core.next_timer(0.6)
        core.on_timer(1.0)
        core.next_timer(1.0)

    work = counted(traffic)
    assert len(core.submits.pending) == n          # n - 1 + "last"
    return work


def test_the_work_a_submit_costs_does_not_grow_with_the_capped_submits() -> None:
    """Fault: with submit_timeout at most ack_timeout every sent submit is
    capped, and next_due took the min of all their deadlines after every
    submit and message, and check_acks walked them all each pass (71 µs of
    CPU a submit with a window of 10,000, against 8). It is now the same
    work for 10 capped as for 10,000."""
    few, many = capped_traffic(10), capped_traffic(10_000)
    assert many == few, (few, many)
    assert many < 50


def test_capped_submits_fail_at_their_deadline_in_order_touching_only_those_due() -> None:
    """The capped heap gives the same outcome as before: at its deadline a
    capped submit fails with the one Timeout, the others stay; one
    acknowledged meanwhile is passed over."""
    core, _ = make(1, ack_timeout=5.0)
    waiters = []
    for i in range(1000):
        p, w = pending(f"t{i}", timeout=4.0 + i / 1000)
        p.deadline = CountedTime(p.deadline)
        core.submit(p)
        waiters.append(w)
    core.on_timer(0.0)
    core.on_frames(0, submitted([["t0", "accepted", None]]), 1.0)
    assert core.next_timer(1.0) == pytest.approx(0.1)
    work = counted(lambda: core.on_timer(4.0015))
    assert waiters[0].error is None and waiters[0].done
    assert [isinstance(w.error, Timeout) for w in waiters[1:3]] == [True, False]
    assert "t1 not acknowledged before its deadline (1 tries)" in str(waiters[1].error)
    assert not any(w.done for w in waiters[2:])
    assert work < 60, work
    assert core.submits.next_due() == pytest.approx(4.002)


def test_a_result_wait_refused_busy_is_asked_again_until_its_timeout(monkeypatch) -> None:
    """Fault: the node holds as many long-polls of this connection as it takes
    and answers ``busy``. wait_result asks again after a back-off (50 ms
    doubling to 1 s, jittered) until the caller's timeout; the last ask
    waits 0 s (never refused) and the caller gets the usual Timeout naming
    the task. Before, the Busy reached the caller at once."""
    clock = [0.0]
    monkeypatch.setattr(ops, "monotonic", lambda: clock[0])
    asked: list[float] = []
    paused: list[float] = []

    def ask(step: ops.Ask) -> dict[str, Any]:
        asked.append(step.body["timeout"])
        if step.body["timeout"] > 0:
            raise Busy("this connection already has 1000 long-polls waiting (max_waiters_per_connection)")
        return {"state": "ready", "timeout": True}

    def pause(seconds: float) -> None:
        paused.append(seconds)
        clock[0] += seconds

    answer = ops.run(ops.wait_result(Nodes(["a"]), "t" * 32, 5.0, None, 10.0), ask, pause)
    assert answer == {"state": "ready", "timeout": True}
    assert asked[0] == 5.0 and asked[-1] == 0.0 and all(t > 0 for t in asked[:-1])
    assert sum(paused) == pytest.approx(5.0)
    assert 0.025 <= paused[0] <= 0.05 and max(paused) <= 1.0
    assert paused[4] > paused[0]                  # doubling
    with pytest.raises(Timeout, match=f"task {'t' * 32} is still ready"):
        decode_outcome("t" * 32, answer)

    def frees_up(step: ops.Ask) -> dict[str, Any]:
        if len(asked) < 3:
            asked.append(step.body["timeout"])
            raise Busy("full")
        return {"state": "done", "result": None}

    asked.clear()
    clock[0] = 0.0
    assert ops.run(ops.wait_result(Nodes(["a"]), "t" * 32, 5.0, None, 10.0), frees_up, pause)["state"] == "done"


LIMIT = 5
WAITS = 12


def spy_refusals(client: Any, refused: set[str], asynchronous: bool) -> None:
    """Record the task ids whose RESULT a node refused ``busy`` (the client's
    own request path)."""
    request = client.request

    def note(body: dict[str, Any], err: Exception) -> None:
        if isinstance(err, Busy):
            refused.add(body.get("id"))

    if asynchronous:
        async def spy(command: bytes, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
            try:
                return await request(command, body, **kw)
            except Exception as err:
                note(body, err)
                raise
    else:
        def spy(command: bytes, body: dict[str, Any], **kw: Any) -> dict[str, Any]:  # type: ignore[misc]
            try:
                return request(command, body, **kw)
            except Exception as err:
                note(body, err)
                raise
    client.request = spy


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def parked(node: Any) -> int:
    return node.node.status(time.time())["waiters"]["pending"]


@pytest.mark.parametrize("how", ["result", "call"])
def test_more_aio_waits_than_a_connection_may_park_all_get_their_result(make_node, thread_worker, how):
    """Fault: a node allowing 5 long-polls a connection and 12 concurrent
    ``await handle.result()`` (or ``await client.call()``) on one asyncio
    client, the tasks stored and not run yet. Before, 7 raised ``Busy``
    (a call() whose task was stored: a caller retrying it ran it twice);
    now they wait on, and all 12 get their result once a worker runs them."""
    node = make_node(max_waiters_per_connection=LIMIT)

    async def main() -> list[Any]:
        async with miyaq.aio.Client(node.endpoint) as client:
            refused: set[str] = set()
            spy_refusals(client, refused, asynchronous=True)
            ended: list[Any] = []

            async def one(i: int) -> Any:
                try:
                    if how == "call":
                        return await client.call("add", [i, i], timeout=60)
                    return await handles[i].result(timeout=60)
                except miyaq.MiyaqError as err:
                    ended.append(err)
                    return err

            handles = [] if how == "call" else [await client.submit("add", [i, i], wait=True) for i in range(WAITS)]
            waits = asyncio.gather(*(one(i) for i in range(WAITS)))
            await until(lambda: parked(node) == LIMIT and len(refused) + len(ended) >= WAITS - LIMIT,
                        "the connection's long-polls parked and the others refused")
            thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=4)
            return await waits

    assert asyncio.run(asyncio.wait_for(main(), 90)) == [2 * i for i in range(WAITS)]


@pytest.mark.parametrize("how", ["result", "call"])
def test_more_threaded_waits_than_a_connection_may_park_all_get_their_result(make_node, thread_worker,
                                                                              client_for, how):
    """Fault: as the asyncio case, with 12 threads of one miyaq.Client each
    waiting in ``result()`` (or ``call()``). Before, 7 raised ``Busy``."""
    node = make_node(max_waiters_per_connection=LIMIT)
    client = client_for(node.endpoint)
    refused: set[str] = set()
    spy_refusals(client, refused, asynchronous=False)
    handles = [] if how == "call" else [client.submit("add", [i, i], wait=True) for i in range(WAITS)]
    out: list[Any] = [None] * WAITS
    ended: list[int] = []

    def one(i: int) -> None:
        try:
            if how == "call":
                out[i] = client.call("add", [i, i], timeout=60)
            else:
                out[i] = handles[i].result(timeout=60)
        except miyaq.MiyaqError as err:
            out[i] = err
            ended.append(i)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(WAITS)]
    for t in threads:
        t.start()
    wait_for(lambda: parked(node) == LIMIT and len(refused) + len(ended) >= WAITS - LIMIT, timeout=30,
             what="the connection's long-polls parked and the others refused")
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=4)
    for t in threads:
        t.join(90)
    assert out == [2 * i for i in range(WAITS)]
