"""Bursts of due timers: many delayed tasks due at once (or a timer loop that
runs late) must neither hold the node -- its readers, heartbeats and
housekeeping run between two passes of the timer loop, and a worker whose
heartbeats waited unread meanwhile is not declared lost -- nor make tasks
ready out of eta order (docs/semantics.md, "Ordering" and "Bursts of due
timers").

The per-pass bound (``TIMER_BATCH``) is made small here, so a burst of a
few hundred tasks takes many passes."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from miyaq.config import NodeConfig
from miyaq.core import engine as engine_module
from miyaq.core.directory import Directory
from miyaq.core import workers as workers_module
from miyaq.core.engine import Engine
from miyaq.core.workers import WorkerRegistry
from miyaq.node.assemble import build_node
from miyaq.node.node import Node
from miyaq.protocol import commands as c
from miyaq.runtime import green, wall
from miyaq.store.task import READY, Task
from miyaq.store.timers import TimerHeap
from miyaq.testing.harness import free_port

T0 = 1_700_000_000.0
WAIT = 10.0   # a guard against a hang, never a timing assertion


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> int:
    """A pass of the timer loop fires 10 timers (and moves 40 out of buckets)."""
    monkeypatch.setattr(engine_module, "TIMER_BATCH", 10)
    return 10


@pytest.fixture
def local_node() -> Iterator[Callable[..., Node]]:
    """Factory: a standalone node built by build_node, in this thread's hub
    (started by the test); every one is stopped at the end."""
    nodes: list[Node] = []

    def make(**settings: Any) -> Node:
        settings.setdefault("port", free_port())
        settings.setdefault("node_id", f"n{settings['port']}")
        node = build_node(NodeConfig(http_port=0, shutdown_grace=0.0, heartbeat=0.25, **settings))
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop(0)


# -- the timer loop lets the node run between its passes ---------------------------------------------
def test_a_burst_of_due_tasks_lets_other_greenlets_run_between_passes(small_batches: int,
                                                                       local_node: Callable[..., Node]) -> None:
    """Fault: 200 delayed tasks fall due at once, 10 a pass. Before, the timer
    loop ran its passes back to back without yielding: nothing else in the
    node (the service socket's reader, heartbeats, STATUS, housekeeping) ran
    until the whole burst was done -- at scale, seconds. Now another
    greenlet (this test's) runs between two passes: it sees the burst half
    done."""
    node = local_node()
    engine = node.core.engine
    now = wall()
    tasks = [Task(f"b{i}", "burst", "job", b"", created=now - 3600, eta=now - 1) for i in range(200)]
    for task in tasks:
        # Accepted an hour ago, due a second ago: in a coarse bucket, all due
        # at the timer loop's first pass.
        engine.submit(task, now - 3600)
    assert not any(t.state == READY for t in tasks)
    seen: list[int] = []     # how many were ready each time this greenlet ran
    node.start()
    with green.Timeout(WAIT, False):
        while True:
            ready = sum(t.state == READY for t in tasks)
            seen.append(ready)
            if ready == len(tasks):
                break
            green.let_others_run()
    assert seen[-1] == len(tasks), "the burst never ended"
    assert any(0 < n < len(tasks) for n in seen), f"nothing ran between the burst's passes: saw {sorted(set(seen))}"


# -- a node's own stall does not lose its workers -------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def registry(monkeypatch: pytest.MonkeyPatch, heartbeat: float, liveness: int) -> tuple[WorkerRegistry, FakeClock,
                                                                                        list[tuple[bytes, str]]]:
    """A registry with a fake monotonic clock and fake sockets; the list
    collects (identity, command) of what it sends."""
    clock = FakeClock()
    monkeypatch.setattr(workers_module, "monotonic", clock)
    sent: list[tuple[bytes, str]] = []
    endpoint = SimpleNamespace(max_message=1 << 20, send=lambda identity, cmd, body: sent.append((identity, cmd)))
    dispatcher = SimpleNamespace(grant=lambda worker, n: None, forget=lambda worker: None)
    workers = WorkerRegistry(Engine(NodeConfig()), dispatcher, endpoint, Directory(),  # type: ignore[arg-type]
                             "n1", heartbeat, liveness, max_workers=10)
    return workers, clock, sent


def test_a_worker_whose_heartbeats_waited_during_a_node_stall_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: the node itself stalls for 5 s (a burst of work, a freeze) with
    heartbeat 0.3 × liveness 3; the worker's heartbeats wait unread in the
    socket. Before, the first housekeeping tick after the stall ran before
    the reader got to them and declared the healthy worker lost (its tasks
    put back, attempts spent). Now it has ``liveness`` more ticks to be
    read; a worker that really went silent before the stall is still
    dropped, ``liveness`` ticks after it."""
    workers, clock, sent = registry(monkeypatch, heartbeat=0.3, liveness=3)
    healthy = workers.register(b"h", "healthy", ["q"], 1, wall(), {})
    dead = workers.register(b"d", "dead", ["q"], 1, wall(), {})
    for _ in range(5):                          # on time: both heard every heartbeat
        clock.now += 0.3
        workers.seen(b"h")
        workers.seen(b"d")
        workers.tick(wall())
    # "dead" dies; the node stalls 5 s, then housekeeping ticks before the reader reads.
    clock.now += 5.0
    workers.tick(wall())
    assert workers.by_wid.get("healthy") is healthy, "a healthy worker was lost to the node's own stall"
    assert workers.lost_total == 0 and (b"h", c.HEARTBEAT) in sent[-2:]
    ticks_to_drop = 0
    while workers.by_wid.get("dead") is dead:
        clock.now += 0.3
        workers.seen(b"h")                      # the reader reads its queued and new heartbeats
        workers.tick(wall())
        ticks_to_drop += 1
        assert ticks_to_drop <= 3, "a worker silent since before the stall was never dropped"
    assert ticks_to_drop == 3 and workers.lost_total == 1
    assert workers.by_wid.get("healthy") is healthy


def test_a_silent_worker_on_a_node_on_time_is_lost_after_heartbeat_times_liveness(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a stall, liveness works as before: a worker heard last at a
    tick is dropped at the first tick past ``heartbeat × liveness`` (ticks
    one heartbeat apart), not earlier."""
    workers, clock, _ = registry(monkeypatch, heartbeat=0.5, liveness=2)
    worker = workers.register(b"w", "w", ["q"], 1, wall(), {})
    for _ in range(4):
        clock.now += 0.5
        workers.seen(b"w")
        workers.tick(wall())
    last_heard = clock.now
    while workers.by_wid.get("w") is worker:
        clock.now += 0.5
        workers.tick(wall())
        assert clock.now - last_heard <= 2.0, "a silent worker was kept"
    assert clock.now - last_heard > 0.5 * 2 and workers.lost_total == 1


# -- eta order when the loop runs late -------------------------------------------------------------
def test_a_late_timer_loop_makes_tasks_ready_in_eta_order(small_batches: int) -> None:
    """Fault: 600 tasks with etas spread over 10 s, a hundred seconds ahead
    (coarse buckets of 8 s, each of more than 4 × TIMER_BATCH timers); the
    timer loop wakes half a second after the last eta. Before, a pass moved
    only part of a bucket toward the heap (in arming order, not time order)
    and fired the due part at once: tasks became ready after tasks with a
    later eta, by up to a bucket's width. docs/semantics.md promises eta
    order for scheduled tasks."""
    engine = Engine(NodeConfig())
    rng = random.Random(1)
    etas = [T0 + 100 + rng.random() * 10 for _ in range(600)]
    for i, eta in enumerate(etas):
        engine.submit(Task(f"t{i}", "q", "job", b"", eta=eta, created=T0), T0)
    now = max(etas) + 0.5                       # the loop runs this late
    passes = 0
    while (due := engine.fire_due(now)) is not None and due <= now:
        passes += 1
        assert passes < 1000, "the timers never all fired"
    order = []
    while (task := engine.take(["q"], now)) is not None:
        order.append(task.eta)
    assert len(order) == len(etas)
    assert order == sorted(order), "tasks became ready out of eta order"


def test_timers_of_a_huge_bucket_fire_in_time_order_across_calls() -> None:
    """Fault: one far bucket of 500 timers, and 50 timers in the heap
    interleaved with them in time; the caller comes late (all due) and takes
    7 a call. Before, each call fired the part of the bucket moved so far
    along with the heap's timers, while earlier timers still waited in the
    bucket."""
    timers = TimerHeap()
    rng = random.Random(3)
    when_of: dict[str, float] = {}

    def arm(name: str, seq: int, now: float) -> None:
        task = Task(name, "q", "job", b"")
        task.seq = seq
        when_of[name] = T0 + 1000 + rng.random()
        timers.arm(task, when_of[name], now)

    for i in range(50):                         # armed a second before they are due: the heap
        arm(f"near{i}", 1000 + i, T0 + 999)
    for i in range(500):                        # armed long before: one coarse bucket
        arm(f"far{i}", i + 1, T0)
    assert len(timers._heap) == 50 and timers._far == 500
    late = T0 + 1002.0
    fired: list[str] = []
    calls = 0
    while (due := timers.next_due()) is not None and due <= late:
        fired += [task.id for task in timers.pop_due(late, 7)]
        calls += 1
        assert calls < 1000, "the timers never all fired"
    assert sorted(fired) == sorted(when_of)
    times = [when_of[name] for name in fired]
    assert times == sorted(times), "timers fired out of time order"
