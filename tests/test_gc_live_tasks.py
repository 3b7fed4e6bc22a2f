"""Live tasks out of the cycle collector's sight (miyaq.store.task's module
doc, docs/performance.md "Garbage collection"): what a full collection walks
does not grow with the tasks a node holds, and a cycle through a leased task
is still collected."""
from __future__ import annotations

import gc
import types
import weakref
from typing import Any

import pytest
from engine_doubles import LeasingConsumer

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.protocol.commands import ACCEPTED
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import heap
from miyaq.store import table as table_module
from miyaq.store.table import TaskTable
from miyaq.store.task import NO_EXTRA, RETRYING, RUNNING, Collector, Task
from miyaq.store.timers import TimerHeap

T0 = 1_700_000_000.0
DAY = 86_400.0


def Consumer() -> LeasingConsumer:
    return LeasingConsumer("w1")


@pytest.fixture(autouse=True)
def untracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a node holding many tasks (a node's housekeeping turns it on
    and off: :meth:`TaskTable.mind_the_collector`); put back after."""
    monkeypatch.setattr(Collector, "untracking", True)


def _submit(engine: Engine, task_id: str, **wire: Any) -> Task:
    task = task_from_wire({"id": task_id, "name": "echo", **wire}, T0, engine.config)
    assert engine.submit(task, T0) == (ACCEPTED, None)
    return task


def _holders_walked(tasks: list[Task]) -> list[Any]:
    """The objects a full collection walks now that refer to one of ``tasks``
    (the list itself and frames aside). Timers due within ``NEAR`` (2 s)
    would be among them: the near heap's entries stay tracked."""
    ids = {id(task) for task in tasks}
    return [obj for obj in gc.get_objects()
            if obj is not tasks and not isinstance(obj, types.FrameType)
            and any(id(ref) in ids for ref in gc.get_referents(obj))]


def test_a_full_collection_walks_no_live_task():
    """Fault: a full collection walked every live task. Each was an object the
    collector tracked (and the table's dict of them, tracked from its first
    task on, after the node's start-up freeze): with the hub stopped, 26-32
    ms at 100,000 delayed tasks, 277-288 ms at a million. Now a task out of
    a lease -- delayed, with a key and a ttl (its Extra), retrying an hour
    ahead after a lease (its lessees), dead-lettered, or finished and still
    held by its lease timer's stale entry -- is untracked, and nothing the
    collector walks refers to it; a leased one is tracked while its
    consumer refers back to it."""
    engine = Engine(NodeConfig(max_tasks=10_000))     # made before the freeze, as a node's is
    gc.collect()
    gc.freeze()                                       # the node's start-up freeze (runtime.heap)
    try:
        for i in range(2_000):
            _submit(engine, f"d{i}", eta=T0 + DAY + i)
        for i in range(500):
            _submit(engine, f"k{i}", eta=T0 + DAY, key=f"key-{i}", ttl=2 * DAY)
        _submit(engine, "r", queue="q")
        consumer = Consumer()
        leased = engine.take(["q"], T0)
        assert leased is not None
        engine.start(leased, consumer, T0)
        assert leased.state == RUNNING and gc.is_tracked(leased)   # its consumer refers back to it
        engine.fail("r", 1, {"type": "Boom"}, True, 3600.0, T0)     # its retry an hour ahead
        assert leased.state == RETRYING and leased.lessees
        _submit(engine, "x", queue="q", max_retries=0)
        dead = engine.take(["q"], T0)
        assert dead is not None and dead.id == "x"
        engine.start(dead, consumer, T0)
        engine.fail("x", 1, {"type": "Boom"}, False, None, T0)
        assert engine.table.dead["x"] is dead
        _submit(engine, "f", queue="q")
        finished = engine.take(["q"], T0)
        assert finished is not None
        engine.start(finished, consumer, T0)
        engine.complete("f", 1, None, T0)       # its lease timer's stale entry keeps it a while

        gc.collect()
        tasks = list(engine.table.live.values()) + [dead, finished]
        assert len(tasks) == 2_503
        assert [task.id for task in tasks if gc.is_tracked(task)] == []
        assert [task.id for task in tasks if task.extra is not NO_EXTRA and gc.is_tracked(task.extra)] == []
        assert not gc.is_tracked(leased.lessees) and not gc.is_tracked(finished.lessees)
        assert _holders_walked(tasks) == []
    finally:
        gc.unfreeze()


def test_a_backlog_of_ready_tasks_is_walked_by_no_full_collection():
    """Fault: a backlog of ready tasks never leased (no worker for their
    queue) stayed in the collector's sight, each task and its lane's entry:
    a million of them were two million objects a full collection walked
    with the hub stopped. They are out of its sight now, and so are the
    lanes' queues of entries; leased, a task is back in it."""
    engine = Engine(NodeConfig(max_tasks=10_000))     # made before the freeze, as a node's is
    gc.collect()
    gc.freeze()
    try:
        for i in range(2_000):
            _submit(engine, f"b{i}", queue="backlog", priority=i % 3)
        gc.collect()
        tasks = list(engine.table.live.values())
        assert len(tasks) == 2_000 and [task.id for task in tasks if gc.is_tracked(task)] == []
        assert _holders_walked(tasks) == []
        leased = engine.take(["backlog"], T0)
        assert leased is not None
        engine.start(leased, Consumer(), T0)
        assert gc.is_tracked(leased)
    finally:
        gc.unfreeze()


def test_a_cycle_through_a_leased_task_is_still_collected():
    """A leased task and its consumer refer to each other; dropped together
    (a node discarded mid-run, as tests do) the cycle is freed: a task with
    a consumer is in the collector's sight, and out of it again once the
    lease ends."""
    engine = Engine(NodeConfig())
    _submit(engine, "r", queue="q")
    consumer = Consumer()
    task = engine.take(["q"], T0)
    assert task is not None
    engine.start(task, consumer, T0)
    gone = weakref.ref(consumer)
    del engine, consumer, task
    gc.collect()
    assert gone() is None


def test_the_store_keeps_its_containers_of_tasks_out_of_sight():
    """The table's dict is tracked from the start (so a start-up freeze takes
    it); a task armed into a timer bucket is untracked, with its Extra and
    the bucket's list, unless it has a consumer; a lease's end untracks it
    with its lessees; a task that runs at once is left as it is until then."""
    table = TaskTable(10, 60.0, 10)
    assert gc.is_tracked(table.live)
    task = Task("a", "q", "echo", b"body", key="k", expires=T0 + DAY)
    table.add(task)
    assert gc.is_tracked(task)          # a ready task runs soon: left as it is

    timers = TimerHeap()
    timers.arm(task, T0 + 1.0, T0)      # due within NEAR: the near heap
    assert gc.is_tracked(task)
    task.consumer = Consumer()
    task.lessees = [(1, "w1")]
    timers.arm(task, T0 + DAY, T0)      # a lease's timer: it runs
    assert gc.is_tracked(task)
    task.consumer = None                # the lease ends: out of sight, with what it holds
    assert not gc.is_tracked(task) and not gc.is_tracked(task.extra) and not gc.is_tracked(task.lessees)
    task.consumer = Consumer()
    assert gc.is_tracked(task)

    other = Task("b", "q", "echo", b"body", key="k")
    assert gc.is_tracked(other) and gc.is_tracked(other.extra)
    timers.arm(other, T0 + DAY, T0)     # waits: out of sight, with its Extra
    assert timers.armed() == {"a": T0 + DAY, "b": T0 + DAY}
    assert not gc.is_tracked(other) and not gc.is_tracked(other.extra)
    assert not any(gc.is_tracked(bucket) for bucket in timers._buckets.values())
    plain = Task("c", "q", "echo", b"body")
    timers.arm(plain, T0 + DAY, T0)
    plain.error = {"type": "Boom"}      # an Extra made while out of sight
    assert not gc.is_tracked(plain) and not gc.is_tracked(plain.extra)

    for atomic in (3, "text", b"bytes", None):     # nothing to do for what is never tracked
        heap.untrack(atomic)
        heap.track(atomic)


def test_a_node_holding_few_tasks_leaves_them_to_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Untracking costs a few C calls a task (about 0.7 µs of the node's 13
    in bulk: 0.92 times the drain of the build before it): a node holding
    fewer than half of ``UNTRACK_FROM`` live tasks leaves a finished or
    delayed task tracked (a full collection over them is short), one holding
    ``UNTRACK_FROM`` or more takes them out of sight, and between the two it
    keeps doing what it did."""
    monkeypatch.setattr(table_module, "UNTRACK_FROM", 4)
    engine = Engine(NodeConfig())
    table = engine.table
    assert table.mind_the_collector() is False
    first = _submit(engine, "t0", countdown=3600)
    assert gc.is_tracked(first)
    for i in range(1, 4):
        _submit(engine, f"t{i}", countdown=3600)
    assert table.mind_the_collector() is True
    later = _submit(engine, "t4", countdown=3600)
    assert not gc.is_tracked(later)
    for i in range(3):
        engine.cancel(f"t{i}", T0)
    assert len(table.live) == 2 and table.mind_the_collector() is True      # between: unchanged
    engine.cancel("t3", T0)
    assert table.mind_the_collector() is False
