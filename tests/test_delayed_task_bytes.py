"""What a node adds to a delayed task it holds (issue 10: a million delayed
tasks in under 500 MiB; docs/performance.md's goal table): its timer keeps
the task's own ``eta``, not a float of its own, unless the copy waits past
it (``copy_wait``, miyaq.store.task.Task.due)."""
from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.protocol.commands import ACCEPTED
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.task import NO_EXTRA, SCHEDULED, Task

T0 = 1_700_000_000.0
DAY = 86_400.0


def _delayed(engine: Engine, task_id: str, **wire: Any) -> Task:
    """A task a day ahead with a 100-byte payload, as ``miyaq bench --delayed`` submits it."""
    return task_from_wire({"id": task_id, "name": "echo", "body": bytes(100), "countdown": DAY, **wire},
                          T0, engine.config)


def test_a_delayed_tasks_timer_keeps_its_own_eta():
    """Fault: a waiting task's timer was armed for ``eta + copy_wait`` worked
    out afresh (Task.due, 2026-12-05) even with no ``copy_wait``: a new float
    for every delayed task, kept as its ``timer_at`` -- 32 bytes a task, a
    million delayed tasks 519.6 MiB instead of 488 (over the 500 MiB goal).
    Without a ``copy_wait`` the timer now keeps ``eta`` itself; with one (a
    copy's rank offset) it is armed at ``eta + copy_wait`` as before."""
    engine = Engine(NodeConfig())
    plain = _delayed(engine, "plain")
    assert engine.submit(plain, T0) == (ACCEPTED, None)
    assert plain.extra is NO_EXTRA and plain.state == SCHEDULED
    assert plain.timer_at is plain.eta

    keyed = _delayed(engine, "keyed", key="k", ttl=2 * DAY)      # an Extra, no copy_wait
    assert engine.submit(keyed, T0) == (ACCEPTED, None)
    assert keyed.timer_at is keyed.eta

    restored = _delayed(engine, "restored")                    # rebuilt from the log
    assert engine.restore(restored, T0) is None
    assert restored.timer_at is restored.eta

    copy = _delayed(engine, "copy")
    copy.copy_wait = 5.0                                        # a later holder's wait past eta
    assert engine.submit(copy, T0) == (ACCEPTED, None)
    assert copy.eta == T0 + DAY and copy.due == copy.timer_at == T0 + DAY + 5.0


def test_the_bytes_a_node_adds_to_a_delayed_task_are_bounded():
    """Fault: as above, measured: what ``Engine.submit`` allocates for 20,000
    delayed tasks it is given (their ids, payloads and the task objects made
    before), by tracemalloc. Its submit number (an int, 28 bytes), its slot
    in the table's dict and in its timer bucket's list come to 57 bytes a
    task; the float a task more made it 81."""
    count = 20_000
    engine = Engine(NodeConfig(max_tasks=count))
    tasks = [_delayed(engine, f"d{i}") for i in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for task in tasks:
            engine.submit(task, T0)
        gc.collect()
        added = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(engine.table.live) == count
    assert added / count < 70, f"{added / count:.1f} bytes a delayed task"
