"""The ready lanes' priority levels (:mod:`miyaq.store.ready`): what a lane
holds per level, the work a new or emptied level costs, and the order tasks
come out in (docs/semantics.md, "Ordering") through pushes, pops, stale
entries and compaction. Counted, never timed: the work of adding and
dropping levels is counted as the list elements it moves."""
from __future__ import annotations

import random
from collections import deque
from typing import Any, SupportsIndex

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.store.ready import Lane, ReadyQueues
from miyaq.store.task import CANCELLED, READY, Task

T0 = 1_700_000_000.0


def ready_task(task_id: str, priority: int, queue: str = "q") -> Task:
    task = Task(task_id, queue, "job", b"", priority=priority)
    task.state = READY
    return task


def drain(lane: Lane) -> list[str]:
    out = []
    while (task := lane.pop()) is not None:
        out.append(task.id)
    return out


def deques_held(lane: Lane) -> int:
    """How many deques the lane's tables hold (whatever the tables are called)."""
    tables = [getattr(lane, name) for name in Lane.__slots__]
    return sum(isinstance(value, deque) for table in tables if isinstance(table, dict) for value in table.values())


class MovesCounted(list):  # type: ignore[type-arg]
    """A list that counts the elements its inserts and pops shift (what
    ``list.insert(i, x)`` and ``list.pop(i)`` cost: every element after ``i``)."""

    moves = 0

    def insert(self, index: SupportsIndex, item: Any) -> None:
        self.moves += max(0, len(self) - int(index))
        super().insert(index, item)

    def pop(self, index: SupportsIndex = -1) -> Any:
        i = int(index)
        self.moves += max(0, len(self) - 1 - (i if i >= 0 else len(self) + i))
        return super().pop(index)


def test_distinct_priorities_hold_no_deque_per_level():
    """Fault: a producer gives 2,000 ready tasks 2,000 distinct priorities
    (a deadline as priority). Each level had a deque of its own, 760 bytes
    for one task: a ready task cost ~1 KB more than with one priority (the
    audit's +1,362 against +349 bytes per task). A level of one task holds
    just its entry; a deque appears only for a level's second task."""
    lane = Lane("q")
    rng = random.Random(7)
    tasks = [ready_task(f"t{i}", prio) for i, prio in enumerate(rng.sample(range(-2**31, 2**31), 2000))]
    for task in tasks:
        lane.push(task)
    assert len(lane.levels) == 2000
    assert deques_held(lane) == 0
    twin = ready_task("twin", tasks[0].priority)      # a second task at a level: now the level keeps an order
    lane.push(twin)
    tasks.append(twin)
    assert deques_held(lane) == 1
    assert drain(lane) == [t.id for t in sorted(tasks, key=lambda t: (t.priority, t.seq))]


def test_adding_and_emptying_levels_moves_no_other_level():
    """Fault: the levels were a sorted list kept with ``bisect.insort`` and
    the first removed with ``list.pop(0)``: each new level and each emptied
    one shifted every level after it, so N distinct priorities cost O(N²)
    element moves (the audit: each successive 102,400 submits slower, 1.9,
    3.5, 5.7, 6.7 s). Here 3,000 levels are added in descending order (each
    new one first) and drained: the levels' list has its elements shifted by
    inserts and pops at most once per level, not ~N²/2 times."""
    lane = Lane("q")
    lane.levels = MovesCounted()
    n = 3000
    for i in range(n):
        lane.push(ready_task(f"t{i}", n - i))
    assert drain(lane) == [f"t{i}" for i in reversed(range(n))]
    assert isinstance(lane.levels, MovesCounted)
    assert lane.levels.moves <= n, lane.levels.moves
    assert len(lane.levels) == 0 and not lane.singles and not lane.fifos and lane.entries == 0


def test_only_the_first_level_waits_empty_and_a_read_drops_it():
    """A level emptied by a pop stays only until the lane is next read (a
    push of its priority fills it again meanwhile), and only the first level
    can be empty: levels never pile up empty."""
    lane = Lane("q")
    for task_id, prio in (("a", 5), ("b", 5), ("c", 9), ("d", 7)):
        lane.push(ready_task(task_id, prio))
    assert [lane.pop().id, lane.pop().id] == ["a", "b"]
    assert lane.head().id == "d"             # the read drops the emptied level 5
    assert sorted(lane.levels) == [7, 9] and 5 not in lane.fifos and 5 not in lane.singles
    assert lane.pop().id == "d"
    lane.push(ready_task("e", 7))             # refills the emptied level 7
    assert sorted(lane.levels) == [7, 9] and lane.entries == 2
    assert drain(lane) == ["e", "c"]
    assert lane.head() is None and not lane.levels and not lane.singles and not lane.fifos


def test_levels_emptied_behind_a_more_urgent_one_do_not_pile_up():
    """Fault: a producer whose every task is more urgent than the last (a
    falling priority), consumed as fast as it comes, while one task of low
    priority waits. Each level the consumer emptied stayed, empty, behind
    the next, more urgent one, and no read reached it while the lane held a
    task: 1,000 empty levels (a deque each, 760 bytes) for one task ready."""
    lane = Lane("q")
    lane.push(ready_task("waits", 10**6))
    for i in range(1000):
        lane.push(ready_task(f"t{i}", 1000 - i))
        assert lane.pop().id == f"t{i}"
    assert len(lane.levels) <= 2, len(lane.levels)
    assert deques_held(lane) == 0 and lane.entries == 1
    assert drain(lane) == ["waits"]


def test_order_through_pushes_pops_stale_entries_and_compaction():
    """Priority order across levels and FIFO within one, as a reference model
    has it, while tasks are pushed (few and many priorities), popped,
    re-pushed (their old entry stale), cancelled (their entry stale) and the
    lane compacted in between; the entry count stays exact."""
    rng = random.Random(11)
    for spread in (1, 3, 50, 10**9):
        lane = Lane("q")
        model: dict[str, tuple[int, int]] = {}     # id -> (priority, seq) of each live READY task
        tasks: dict[str, Task] = {}
        for step in range(6000):
            action = rng.random()
            if action < 0.5 or not model:
                task = ready_task(f"t{step}", rng.randrange(spread))
                tasks[task.id] = task
                lane.push(task)
                model[task.id] = (task.priority, task.seq)
            elif action < 0.75:
                expected = min(model, key=model.__getitem__)
                task = lane.pop()
                assert task is not None and task.id == expected, (spread, step)
                del model[task.id]
                task.state = "running"
            elif action < 0.85:
                task = tasks[rng.choice(list(model))]
                lane.push(task)                          # back of its level: its old entry is stale
                model[task.id] = (task.priority, task.seq)
            elif action < 0.97:
                task = tasks[rng.choice(list(model))]
                task.state = CANCELLED
                del model[task.id]
            else:
                lane.compact()
                assert lane.entries == len(model)
                assert lane.queued() == set(model)
            assert sorted(lane.levels) == sorted(set(lane.fifos) | set(lane.singles))
            assert not set(lane.fifos) & set(lane.singles)
            empty = [p for p, f in lane.fifos.items() if not f] + [p for p, e in lane.singles.items()
                                                                  if e[1].id == ""]
            assert empty in ([], [lane.levels[0]])    # at most the first level waits empty
        assert lane.queued() == set(model)
        assert drain(lane) == sorted(model, key=model.__getitem__)
        assert lane.entries == 0 and not lane.levels and not lane.fifos and not lane.singles


def test_compaction_keeps_levels_and_their_order():
    lane = Lane("q")
    tasks = [ready_task(f"t{i}", i % 7) for i in range(700)]
    for task in tasks:
        lane.push(task)
    for task in tasks[::2]:
        task.state = CANCELLED
    assert lane.compact() == 350
    assert lane.entries == 350 and sorted(lane.levels) == sorted(lane.fifos) == list(range(7))
    assert drain(lane) == [t.id for t in sorted(tasks[1::2], key=lambda t: (t.priority, t.seq))]


def test_queues_compare_heads_by_priority_then_readiness():
    ready = ReadyQueues()
    for i, (queue, prio) in enumerate([("a", 3), ("b", 1), ("a", 1), ("b", 3), ("a", -5)]):
        ready.push(ready_task(f"t{i}", prio, queue))
    for lane in ready.lanes.values():
        lane.count = len(lane.queued())
    out = []
    while (task := ready.pop(["a", "b"])) is not None:
        ready.lanes[task.queue].count -= 1
        out.append(task.id)
    assert out == ["t4", "t1", "t2", "t0", "t3"]


def test_engine_compacts_a_lane_of_many_stale_levels():
    """``Engine.compact_lanes`` on a lane whose 6,000 distinct levels were
    mostly cancelled: the stale entries go, the rest come out in order."""
    engine = Engine(NodeConfig())
    n = 6000
    for i in range(n):
        engine.submit(Task(f"t{i}", "q", "job", b"", priority=n - i), T0)
    for i in range(n):
        if i % 3:
            engine.cancel(f"t{i}", T0)
    lane = engine.ready.lanes["q"]
    assert engine.compact_lanes() == 4000
    assert lane.entries == lane.count == 2000 and len(lane.levels) == len(lane.singles) == 2000
    assert deques_held(lane) == 0
    taken = []
    while (task := engine.take(["q"], T0)) is not None:
        taken.append(task.id)
    assert taken == [f"t{i}" for i in reversed(range(0, n, 3))]
