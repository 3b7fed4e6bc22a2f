"""A worker that passed over tasks for other workers is looked at again
when something may give it a task (:mod:`miyaq.core.blocked_consumers`).

Faults found by audit review26 (2026-12-07), each a task left ``ready``
beside an idle worker that declared its name:

- *blocked, its own lane reopened*: worker ``a`` (declares ``a``, serves
  ``q1`` and ``q2``) is blocked behind ``PASS_OVER`` tasks in ``q1`` that
  busy worker ``b`` runs, while ``a``'s task waits in ``q2``, held back by
  a pause or a limit. The pause lifted, the limit removed, a rate token
  come, a capped slot freed: the pump ran, but ``a`` stayed parked, and its
  task waited until ``b``'s long task ended (indefinitely, in the script);
- *hungry, its runner gone*: with a limit or pause holding one of ``a``'s
  lanes, ``a`` passed over a task ``b`` runs and stayed hungry; ``b`` said
  it is stopping (or left): nothing marked the dispatcher pending, and the
  task stayed ``ready`` until an unrelated event pumped -- 18 s and more
  live, for ever on an idle node with a pause.
"""
from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zmq
from gateway_harness import FIXTURES, wait_for

import miyaq.core.dispatcher as dispatcher_module
from miyaq.config import NodeConfig
from miyaq.core.directory import Directory
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.invariants import problems
from miyaq.core.limits import Limit, QueueLimits
from miyaq.core.task_names import PASS_OVER
from miyaq.core.workers import WorkerRegistry
from miyaq.protocol import commands as c
from miyaq.store.task import READY, Task

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

REPLY_WAIT = 10_000    # ms; a guard against a hang, not a timing assertion


class Timers:
    """The limits' refill timer, fired by hand (the supervisor's spawn_later)."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.armed: list[list[Any]] = []

    def spawn_later(self, delay: float, name: str, fn: Any, *args: Any, policy: Any = None) -> Any:
        timer = [self.clock[0] + delay, fn, args, False]
        self.armed.append(timer)

        class Handle:
            def kill(self, block: bool = False) -> None:
                timer[3] = True
        return Handle()

    def fire_due(self) -> None:
        for timer in sorted(self.armed, key=lambda t: t[0]):
            if not timer[3] and timer[0] <= self.clock[0]:
                self.armed.remove(timer)
                timer[1](*timer[2])


class Node:
    """An engine, its dispatcher and limits, and the real worker registry,
    in process on a clock the test moves; DISPATCHes are recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = [1000.0]
        monkeypatch.setattr(dispatcher_module, "wall", lambda: self.clock[0])
        self.sent: list[tuple[str, str]] = []     # (worker, task id)
        self.engine = Engine(NodeConfig())
        self.timers = Timers(self.clock)
        self.limits = QueueLimits(self.engine, self.timers)     # type: ignore[arg-type]
        self.dispatcher = Dispatcher(self.engine, 1024, Gate(), self.limits)
        self.engine.listeners += [self.dispatcher, self.limits]
        self.workers = WorkerRegistry(self.engine, self.dispatcher, self, Directory(), "n", 1.0, 3, 100)
        self.n = 0

    # The registry's endpoint.
    max_message = 1 << 20

    def send(self, identity: bytes, command: bytes, body: dict[str, Any]) -> bool:
        if command == c.DISPATCH:
            self.sent.extend((identity.decode(), item[0]) for item in body["tasks"])
        return True

    def caller_name(self) -> None:
        return None

    def worker(self, wid: str, queues: list[str], names: list[str], credit: int) -> Any:
        worker = self.workers.register(wid.encode(), wid, queues, 1, self.clock[0], {}, None, names)
        worker.credit = 0
        self.dispatcher.grant(worker, credit)
        self.pump()
        return worker

    def submit(self, queue: str, name: str) -> str:
        self.n += 1
        task_id = f"{name}-{self.n:03d}"
        self.engine.submit(Task(task_id, queue, name, b"", created=self.clock[0], eta=self.clock[0],
                                timeout=3600), self.clock[0])
        self.pump()
        return task_id

    def pump(self) -> None:
        self.dispatcher.pump(self.clock[0])

    def to(self, wid: str) -> list[str]:
        return [task_id for worker, task_id in self.sent if worker == wid]

    def blocked(self, worker: Any) -> bool:
        return any(worker in waiting for waiting in self.dispatcher.blocked_by_lane.values())


def blocked_behind_b(node: Node, held: str) -> tuple[Any, Any, str, str]:
    """``b`` (declares ``b``, serves q1) runs a long task; ``q2`` is held
    back as ``held`` says; ``a`` (declares ``a``, serves q1 and q2) is
    blocked behind PASS_OVER tasks ``b`` in q1 while its task, older than
    them, waits in q2. Returns a, b, a's task, and q2's task that holds the
    limit."""
    b = node.worker("b", ["q1"], ["b"], 1)
    node.submit("q1", "b")
    assert node.to("b"), "b runs a long task"
    holder = ""
    if held == "rate":
        node.limits.set("q2", Limit(rate=1.0, burst=1), node.clock[0])
    elif held == "max_concurrent":
        node.limits.set("q2", Limit(max_concurrent=1), node.clock[0])
    elif held == "limit removed":
        node.limits.set("q2", Limit(rate=0.001, burst=1), node.clock[0])
    else:
        node.limits.pause("q2", node.clock[0])
    if held != "paused":
        node.worker("c", ["q2"], ["x"], 1)
        holder = node.submit("q2", "x")           # c takes q2's token, or its one slot
        assert node.to("c") == [holder]
    task = node.submit("q2", "a")                  # held back, first in line
    a = node.worker("a", ["q1", "q2"], ["a"], 1)
    for _ in range(PASS_OVER):
        node.submit("q1", "b")
    assert node.blocked(a) and node.engine.table.live[task].state == READY
    return a, b, task, holder


@pytest.mark.parametrize("held", ["rate", "max_concurrent", "limit removed", "paused"])
def test_a_blocked_worker_takes_its_task_when_the_lane_holding_it_reopens(monkeypatch, held):
    """Fault simulated: the first fault of the module's docstring, for each
    thing that reopens the lane: a rate token comes (the refill timer), the
    task holding the one slot of ``max_concurrent`` ends, the limit is
    removed and a pause lifted (what the HTTP API calls: ``queue_limits_changed``)."""
    node = Node(monkeypatch)
    a, _b, task, holder = blocked_behind_b(node, held)
    if held == "rate":
        node.clock[0] += 1.5
        node.timers.fire_due()
    elif held == "max_concurrent":
        node.engine.complete(holder, 1, None, node.clock[0], by=node.workers.by_wid["c"].principal)
    elif held == "limit removed":
        node.limits.clear("q2")
        node.dispatcher.queue_limits_changed("q2")
    else:
        node.limits.resume("q2")
        node.dispatcher.queue_limits_changed("q2")
    node.pump()
    assert node.to("a") == [task]
    assert problems(node.engine) == []


@pytest.mark.parametrize("goes", ["stopping", "bye"])
def test_a_hungry_worker_takes_a_task_whose_only_runner_stopped(monkeypatch, goes):
    """Fault simulated: the second fault of the module's docstring. A pause
    on ``q2`` keeps ``a`` hungry after it passed over ``b``'s task in
    ``q1``; ``b`` says it is stopping (or leaves): the next pump (the one
    after the burst that read ``b``'s word) gives the task to ``a``."""
    node = Node(monkeypatch)
    a = node.worker("a", ["q1", "q2"], ["a"], 1)
    b = node.worker("b", ["q1"], ["b"], 0)          # busy: no credit
    node.limits.pause("q2", node.clock[0])
    node.submit("q2", "a")
    task = node.submit("q1", "b")
    assert a in node.dispatcher.hungry and node.to("a") == []
    if goes == "stopping":
        node.workers.mark_stopping(b)
    else:
        node.workers.drop(b, "said goodbye", node.clock[0], frozenset())
    node.pump()
    assert node.to("a") == [task]


def raw_worker(ctx: zmq.Context, node: Any, wid: str, queues: list[str], names: list[str]) -> zmq.Socket:
    """A worker of one slot that declared ``names`` (it never reports: a task it gets keeps it busy)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{node.config.port}")
    sock.send_multipart([c.TAG, c.READY, msgpack.packb({"worker": wid, "queues": queues, "names": names,
                                                        "names_only": True, "capacity": 1})])
    return sock


def dispatched(sock: zmq.Socket) -> list[str]:
    """The task names of the next DISPATCH to ``sock`` ([] if none within REPLY_WAIT)."""
    while sock.poll(REPLY_WAIT):
        frames = sock.recv_multipart()
        if frames[1] == c.DISPATCH:
            return [item[2] for item in msgpack.unpackb(frames[2])["tasks"]]
    return []


def b_busy_then_a(ctx: zmq.Context, http_node: Any, api: Any, before_a: Any, after_a: Any) -> zmq.Socket:
    """Worker ``b`` (declares ``b``, serves q1) busy with one task; then
    ``before_a()``, worker ``a`` (declares ``a``, serves q1 and q2),
    ``after_a()``; returns ``a`` once it is blocked behind ``b``'s tasks."""
    b = raw_worker(ctx, http_node, "b", ["q1"], ["b"])
    wait_for(lambda: api.get("/status")[1]["totals"]["workers"] == 1, "b to register")
    api.post("/tasks", {"name": "b", "queue": "q1"})
    assert dispatched(b) == ["b"]                      # b is busy with it from now on
    before_a()
    a = raw_worker(ctx, http_node, "a", ["q1", "q2"], ["a"])
    wait_for(lambda: api.get("/status")[1]["totals"]["workers"] == 2, "a to register")
    after_a()
    core = http_node.node.core
    wait_for(lambda: http_node.call(lambda: any(len(w) for w in core.dispatcher.blocked_by_lane.values())),
             "a to be blocked behind b's tasks")
    return a


def test_a_blocked_worker_takes_its_task_when_the_queue_is_resumed_over_http(http_node, api):
    """Fault simulated: the first fault of the module's docstring end to end:
    ``POST /queues/q2/resume`` (the console's button too) wakes ``a``."""
    ctx = zmq.Context()
    try:
        def pause_q2_then_its_task() -> None:
            assert api.post("/queues/q2/pause")[1]["paused"] is True
            api.post("/tasks", {"name": "a", "queue": "q2"})     # held back, first in line

        def tasks_of_b() -> None:
            for _ in range(PASS_OVER):
                api.post("/tasks", {"name": "b", "queue": "q1"})

        a = b_busy_then_a(ctx, http_node, api, pause_q2_then_its_task, tasks_of_b)
        assert api.post("/queues/q2/resume")[1]["paused"] is False
        assert dispatched(a) == ["a"]
    finally:
        ctx.destroy(linger=0)


def test_a_blocked_worker_takes_its_task_when_the_queue_ahead_of_it_is_paused(http_node, api, monkeypatch):
    """Fault simulated (the liveness model of audit review26, at a pass-over
    bound of 2): ``a`` is blocked behind ``b``'s tasks in ``q1``, its own
    task in ``q2`` behind them by age; ``POST /queues/q1/pause``: they are
    no longer ahead of it, and ``a`` takes its task. Before, it stayed
    parked until ``q1`` was resumed or ``b`` took one."""
    monkeypatch.setattr(dispatcher_module, "PASS_OVER", 2)
    ctx = zmq.Context()
    try:
        def two_tasks_of_b() -> None:
            for _ in range(2):
                api.post("/tasks", {"name": "b", "queue": "q1"})

        a = b_busy_then_a(ctx, http_node, api, two_tasks_of_b,
                          lambda: api.post("/tasks", {"name": "a", "queue": "q2"}))
        assert api.post("/queues/q1/pause")[1]["paused"] is True
        assert dispatched(a) == ["a"]
    finally:
        ctx.destroy(linger=0)
