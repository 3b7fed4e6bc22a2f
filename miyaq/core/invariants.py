"""Checks that a node's task state is whole: for tests and the fuzz test.

:func:`problems` lists, one line each, every task the node holds that
nothing would ever move (a ready task in no lane, a running task without a
lease or a consumer, a waiting task without a timer), every counter that
disagrees with the table, and every stored task or tombstone that would not
pass validation (:func:`miyaq.protocol.recordspec.invalid_stored`). Each
check is O(n): never on the hot path.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from miyaq.core.engine import Engine
from miyaq.protocol.recordspec import invalid_stored
from miyaq.store.table import stone_bytes
from miyaq.store.task import DEAD, LIVE_STATES, READY, RETRYING, RUNNING, SCHEDULED
from miyaq.store.task_bytes import held_bytes


def stuck_tasks(engine: Engine, waiting: Iterable[str] = ()) -> list[str]:
    """Live tasks nothing would move. ``waiting``: ids legitimately without
    a timer for now (a standby copy whose QUERY is in flight)."""
    armed = engine.timers.armed()
    excused = set(waiting)
    queued: dict[str, set[str]] = {}
    out: list[str] = []
    for task in engine.table.live.values():
        state = task.state
        if state == READY:
            lane = engine.ready.lanes.get(task.lane)
            ids = queued.get(task.lane)
            if ids is None:
                ids = queued[task.lane] = lane.queued() if lane is not None else set()
            if task.id not in ids:
                out.append(f"ready task {task.id!r} is in no lane")
        elif state == RUNNING:
            consumer = task.consumer
            if consumer is None or consumer.running.get(task.id) is not task:
                out.append(f"running task {task.id!r} has no consumer holding it")
            if task.id not in armed:
                out.append(f"running task {task.id!r} has no lease timer")
        elif state in (SCHEDULED, RETRYING):
            if task.id not in armed and task.id not in excused:
                out.append(f"{state} task {task.id!r} has no timer")
        else:
            out.append(f"live task {task.id!r} is {state!r}")
    return out


def count_problems(engine: Engine) -> list[str]:
    """Per-queue counts, lane counts and byte sums that disagree with the table."""
    table = engine.table
    expected: dict[str, Counter[str]] = {}
    ready_by_lane: Counter[str] = Counter()
    for task in table.live.values():
        expected.setdefault(task.queue, Counter())[task.state] += 1
        if task.state == READY:
            ready_by_lane[task.lane] += 1
    for task in table.dead.values():
        expected.setdefault(task.queue, Counter())[DEAD] += 1
    out = []
    shown = engine.queue_counts()
    for queue in set(shown) | set(expected):
        row = shown.get(queue, {})
        for state in LIVE_STATES + (DEAD,):
            if row.get(state, 0) != expected.get(queue, Counter())[state]:
                out.append(f"queue {queue!r} counts {row.get(state, 0)} {state}, "
                           f"holds {expected.get(queue, Counter())[state]}")
    for name, lane in engine.ready.lanes.items():
        if lane.count != ready_by_lane[name]:
            out.append(f"lane {name!r} counts {lane.count} ready, holds {ready_by_lane[name]}")
    payloads = sum(held_bytes(t) for t in table.live.values()) + sum(held_bytes(t) for t in table.dead.values())
    if table.payload_bytes != payloads:
        out.append(f"the table counts {table.payload_bytes} payload bytes, holds {payloads}")
    results = sum(stone_bytes(s.result, s.error) for s in table.tombstones.values())
    if table.result_bytes != results:
        out.append(f"the table counts {table.result_bytes} result bytes, keeps {results}")
    return out


def problems(engine: Engine, waiting: Iterable[str] = ()) -> list[str]:
    """Everything wrong with ``engine``'s state (empty when it is whole)."""
    return (stuck_tasks(engine, waiting) + count_problems(engine)
            + invalid_stored(engine.table, engine.config))
