"""The task table's tombstones: what they keep, in which order, and that the
cycle collector does not have to walk them."""
from __future__ import annotations

import gc

from miyaq.store.table import TaskTable, Tombstone
from miyaq.store.task import Task


def _finished(table: TaskTable, n: int, *, start: float = 100.0, error: object = None) -> None:
    for i in range(n):
        task = Task(f"t{i}", "q", "noop", b"body", key=f"k{i}")
        task.error = error
        table.add(task)
        table.bury(task, "done", b"result", start + i)


def test_tombstones_are_kept_out_of_the_cycle_collectors_walks():
    """A busy node remembers up to max_tombstones finished tasks (200,000 by
    default); each full collection stopped the hub to walk every one of them.
    Stored as plain tuples of strings, numbers and bytes they are untracked
    after one collection, and still read back whole."""
    table = TaskTable(1000, 3600.0, 10)
    _finished(table, 1000)
    gc.collect()
    rows = list(table.tombstones._rows.values())
    assert len(rows) == 1000 and not any(gc.is_tracked(row) for row in rows)
    stone = table.tombstone("t7")
    assert stone == Tombstone("t7", "q", "done", b"result", None, 107.0, "k7", 0)
    assert stone.info() == {"id": "t7", "queue": "q", "state": "done", "finished": 107.0, "attempt": 0,
                            "key": "k7"}


def test_tombstones_stay_oldest_first_and_bounded():
    """The count bound drops the oldest; a task finished again moves to the end;
    the ttl sweep stops at the first one still young."""
    table = TaskTable(5, 50.0, 10)
    _finished(table, 8)
    assert list(table.tombstones) == ["t3", "t4", "t5", "t6", "t7"]
    assert "t0" not in table.tombstones and table.tombstone("t0") is None
    again = Task("t4", "q", "noop", b"body")
    table.add(again)
    table.bury(again, "failed", None, 160.0)
    assert list(table.tombstones) == ["t3", "t5", "t6", "t7", "t4"]
    assert table.tombstone("t4").state == "failed"
    assert table.sweep(156.0) == 3          # t3, t5, t6: finished at or before 156 - 50; t7 stays
    assert list(table.tombstones) == ["t7", "t4"]
    assert table.result_bytes == len(b"result")


def test_a_tombstone_with_a_nested_error_is_kept_whole():
    """An error with nested parts (tracked by the collector) is kept as it came."""
    table = TaskTable(10, 3600.0, 10)
    error = {"type": "ValueError", "message": "bad", "frames": [{"line": 3}]}
    _finished(table, 1, error=error)
    assert table.tombstone("t0").error == error


def test_the_newest_tombstones_and_a_snapshot_that_later_changes_do_not_touch():
    """A resync sends the newest tombstones first; a log snapshot read while
    the node goes on sees the tombstones as they were when it began."""
    table = TaskTable(100, 3600.0, 10)
    _finished(table, 5)
    assert [s.id for s in table.tombstones.newest(3)] == ["t4", "t3", "t2"]
    assert [s.id for s in table.tombstones.newest(10)] == ["t4", "t3", "t2", "t1", "t0"]
    snapshot = table.tombstones.snapshot()
    assert next(snapshot).id == "t0"
    table.sweep(10_000.0)                     # every one expires meanwhile
    assert not table.tombstones
    assert [s.id for s in snapshot] == ["t1", "t2", "t3", "t4"]
