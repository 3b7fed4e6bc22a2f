"""A log's replay holds no more than the running node that wrote it did
(docs/durability.md, "The log"): each finished task's tombstone is restored
as its record is read, through the table's own bounds -- ``max_tombstones``
(oldest first), twice ``max_result_bytes`` of results, those of cancels
kept ahead and of ends heard ahead counted apart, the dedup keys -- so the
replayed tombstones are the ones the node held, in its order.

Before 2026-12-07 the replay kept every tombstone still within
``result_ttl``, results included, to its end, then bounded them: a peak
that grew with the log since the last compaction (1,000,000 small
finished tasks with the default ``max_tombstones``: 664 MiB of RSS,
194 MiB now), and with the disk while compactions failed. And a
tombstone made again for the same id (a keyless cancel kept ahead taking
its copy's key) came back at its first place, not its last: the next
finished task pushed out a different one than on the node.

Each history drives a real engine with the node's durability part on a
real log in a temporary directory (tests/test_log_replayed_state.py), then
replays the log into a new engine, twice: through a compaction of the
replayed node's state too. No sockets, no timing.
"""
from __future__ import annotations

import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from engine_doubles import LeasingConsumer
from test_log_replayed_state import durable_engine, written

from miyaq.cluster.ends_ahead import finish_unknown
from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.core.refusals import Refusals
from miyaq.errors import MiyaqError
from miyaq.persistence import journal
from miyaq.persistence.replay import replay
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.log import AppendLog
from miyaq.store.table import stone_bytes
from miyaq.store.task import DEAD, RUNNING

pytestmark = pytest.mark.timeout(120)

KEYS = [f"k{i}" for i in range(6)]


def _config(tmp_path: Path) -> NodeConfig:
    # Small bounds, so that every rule evicts in a few hundred steps: 8
    # tombstones, 600 bytes of results (a ceiling of 1,200), 3 dead
    # letters; tombstones live 100 s (result_ttl), keys 15 s.
    return NodeConfig(node_id="n", data_dir=str(tmp_path), max_tombstones=8, max_result_bytes=600,
                      max_dead=3, result_ttl=100.0, dedup_window=15.0)


def _history(engine: Engine, part: journal.Persistence, config: NodeConfig, rng: random.Random,
             now: float, steps: int) -> float:
    """``steps`` random moves of a single node, the clock going forward
    0-3 s a move (the node sweeping its tombstones every few moves, as its
    housekeeping does); the time after the last."""
    consumer = LeasingConsumer("c")
    serial = 0
    used: list[str] = []

    def new_id() -> str:
        nonlocal serial
        serial += 1
        return f"t{serial}"

    for step in range(steps):
        now += rng.choice([0.0, 0.5, 1.0, 3.0])
        if step % 7 == 0:
            engine.table.sweep(now)
        move = rng.random()
        try:
            if move < 0.25:
                task_id = rng.choice(used) if used and rng.random() < 0.1 else new_id()   # an id used again
                wire: dict[str, Any] = {"id": task_id, "name": "job", "body": b"\x92\x90\x80",
                                        "max_retries": rng.choice([0, 1])}
                if rng.random() < 0.5:
                    wire["key"] = rng.choice(KEYS)
                engine.submit(task_from_wire(wire, now, config), now)
                used.append(task_id)
            elif move < 0.45:
                task = engine.take(["default"], now)
                if task is not None:
                    engine.start(task, consumer, now)
            elif move < 0.65:
                running = [t for t in engine.table.live.values() if t.state == RUNNING]
                if running:
                    task = rng.choice(running)
                    if rng.random() < 0.7:
                        result = rng.choice([None, b"", b"r" * rng.randrange(1, 900)])
                        engine.complete(task.id, task.attempt, result, now)
                    else:
                        engine.fail(task.id, task.attempt, {"type": "E", "message": "x" * rng.randrange(40)},
                                    rng.random() < 0.5, 0.0, now)
            elif move < 0.72 and (engine.table.live or engine.table.dead):
                engine.cancel(rng.choice(list(engine.table.live) + list(engine.table.dead)), now)
            elif move < 0.76 and engine.table.dead:
                victim = rng.choice(list(engine.table.dead))
                if rng.random() < 0.5:
                    engine.dead_retry([victim], now)
                else:
                    engine.dead_purge(None, [victim])
            elif move < 0.86:
                engine.cancels_ahead.keep(new_id(), rng.choice([None, None, *KEYS]), now)
            elif move < 0.92 and engine.cancels_ahead.keyless:
                # A key nobody holds here (the usual copy's): one held by
                # another task is refused and the id forgotten as keyless,
                # which the log does not say (a replay remembers it again).
                free = [k for k in KEYS if k not in engine.table.keys]
                if free:
                    engine.cancels_ahead.take_key(rng.choice(list(engine.cancels_ahead.keyless)), rng.choice(free))
            elif move < 0.96:
                # An end heard ahead of its copy is in the log only through a
                # compaction's snapshot (miyaq.cluster.ends_ahead): one is made
                # here only right before one.
                finish_unknown(engine, new_id(), "done", rng.choice([None, b"e" * 50]), None, now,
                               key=rng.choice([None, *KEYS]))
                written(part)
                part.compact()
            else:
                written(part)
                part.compact()
        except MiyaqError:       # Busy (results, cancels ahead): refused, nothing changed
            pass
        if rng.random() < 0.3:
            written(part)
    return now


def _state(engine: Engine, now: float, window: float) -> dict[str, Any]:
    """What a node holds that a restart must give back: its tombstones in
    order (whole), those counted apart, the bytes of their results, who
    holds each key, the live and dead tasks, the keyless cancels ahead.
    Tombstones past result_ttl at ``now`` do not count: a tombstone made
    again keeps its end's time (a key taken later), so the node's sweep,
    oldest first, may come to it later than its ttl; a replay drops it
    as it reads it."""
    table = engine.table
    kept = [s for s in table.tombstones.snapshot() if s.finished + table.tombstone_ttl > now]
    ids = {s.id for s in kept}
    return {"tombstones": [tuple(s) for s in kept],
            "ahead": sorted(ids.intersection(table.ahead)),       # sets, in effect
            "ends_ahead": sorted(ids.intersection(table.ends_ahead)),
            "result_bytes": sum(stone_bytes(s.result, s.error) for s in kept),
            "keys": {k: table.holder_of_key(k, now, window) for k in KEYS},
            "live": sorted(table.live), "dead": list(table.dead),
            # one forgotten (aged, pushed out) stays listed until its copy comes: nothing to give back
            "keyless": [i for i in engine.cancels_ahead.keyless if i in ids and i in table.ahead]}


def _replayed(tmp_path: Path, config: NodeConfig, now: float, monkeypatch: pytest.MonkeyPatch,
              compact: bool) -> Engine:
    monkeypatch.setattr(journal, "wall", lambda: now)
    engine, part = durable_engine(tmp_path, config, now)
    if compact:
        part.compact()
    part.stop()
    return engine


@pytest.mark.parametrize("seed", range(16))
def test_a_replay_holds_the_tombstones_the_running_node_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             seed: int) -> None:
    """Random single-node histories (submits with and without keys, ids
    used again, starts, results of up to 400 bytes, failures, cancels,
    dead letters retried and purged, cancels kept ahead with and without
    a key, keys taken later, ends heard ahead, compactions), with bounds
    small enough that each rule evicts. The state replayed from the log
    -- then replayed again from a compaction of it -- is the state the
    node held at its stop. Before, a keyless cancel ahead that took a key
    came back at its first place: another tombstone was pushed out next."""
    rng = random.Random(seed)
    config = _config(tmp_path)
    start = time.time()
    monkeypatch.setattr(journal, "wall", lambda: start)
    engine, part = durable_engine(tmp_path, config, start)
    end = _history(engine, part, config, rng, start, 300)
    # Its leases given back first: a task running at a restart comes back
    # ready, or dead if that was its last attempt (tests/test_log_replayed_state.py),
    # which is no state the node held.
    for task in [t for t in engine.table.live.values() if t.state == RUNNING]:
        assert engine.release(task.id, end)
    written(part)
    if rng.random() < 0.5:
        part.stop()
    else:
        part.log.close()        # as a kill -9 leaves it: everything written is there
    now = end + rng.choice([0.0, 5.0, 20.0])
    engine.table.sweep(now, limit=10**6)      # what the node would hold then
    expected = _state(engine, now, config.dedup_window)

    first = _replayed(tmp_path, config, now, monkeypatch, compact=True)
    assert _state(first, now, config.dedup_window) == expected
    assert first.table.result_bytes == expected["result_bytes"]
    second = _replayed(tmp_path, config, now, monkeypatch, compact=False)
    assert _state(second, now, config.dedup_window) == expected
    assert second.table.result_bytes == expected["result_bytes"]


def test_a_replay_of_many_finished_tasks_peaks_within_max_tombstones(tmp_path: Path) -> None:
    """Fault: a log of 30,000 finished tasks since its last compaction
    (compactions failing on a nearly full disk), each with a 2 KiB
    result, all within ``result_ttl``, and ``max_tombstones`` 1,000. The
    node that wrote it held 1,000 of them; the replay held all 30,000 --
    more than 60 MB of results -- until its end, then dropped 29,000.
    Now it evicts as it reads: its peak stays near what 1,000 tombstones
    and their results take (a generous margin: 12 MB)."""
    now = time.time()
    log = AppendLog(tmp_path, fsync="never", offload_fsync=False)
    assert not list(log.replay())
    for start in range(0, 30_000, 1000):
        batch: list[dict[str, Any]] = []
        for i in range(start, start + 1000):
            batch.append({"o": "A", "id": f"t{i}", "name": "job", "queue": "default", "created": now,
                          "eta": now, "body": b"\x92\x90\x80"})
            batch.append({"o": "F", "id": f"t{i}", "state": "done", "at": now, "queue": "default",
                          "attempt": 1, "result": b"r" * 2048})
        log.append_many(batch)
    log.close()
    engine = Engine(NodeConfig(node_id="n", max_tombstones=1000))
    log = AppendLog(tmp_path, fsync="never", offload_fsync=False)
    tracemalloc.start()
    try:
        replayed = replay(engine, log, now + 1, Refusals())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        log.close()
    assert peak < 12_000_000, peak
    assert replayed.records == 60_000 and len(engine.table.tombstones) == 1000
    assert [s.id for s in engine.table.tombstones.newest(1)] == ["t29999"]
    assert engine.table.tombstone("t28999") is None and engine.table.tombstone("t29000") is not None


def test_a_dead_letter_and_its_key_come_back_beside_tombstones_of_its_key(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead letter holds key K; a cancel kept ahead with K is made after
    it (K stays with the dead letter, which has not ended). The tombstones
    are now restored before the tasks: the dead letter still holds K
    after a replay, and the tombstone is still there."""
    config = _config(tmp_path)
    now = time.time()
    monkeypatch.setattr(journal, "wall", lambda: now)
    engine, part = durable_engine(tmp_path, config, now)
    engine.submit(task_from_wire({"id": "d", "name": "job", "key": "K", "max_retries": 0}, now, config), now)
    task = engine.take(["default"], now)
    assert task is not None
    engine.start(task, LeasingConsumer("c"), now)
    assert engine.fail("d", 1, {"type": "E", "message": ""}, False, None, now)
    engine.cancels_ahead.keep("ahead", "K", now)
    part.stop()
    back = _replayed(tmp_path, config, now + 1, monkeypatch, compact=False)
    assert back.table.dead["d"].state == DEAD
    assert back.table.holder_of_key("K", now + 1, config.dedup_window) == "d"
    assert back.table.tombstone("ahead") is not None


def test_a_tombstone_made_again_comes_back_at_its_latest_place(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: a cancel kept ahead without a key ("a"), then a task ("b")
    finishes, then "a" takes its copy's key: the node holds b, then a
    (a tombstone made again is the newest). The replay restored "a" at
    its first record's place, before b: the next finished task past
    ``max_tombstones`` pushed out another tombstone than on the node. Now
    each record is restored as it is read, and "a" is after b again."""
    config = _config(tmp_path)
    now = time.time()
    monkeypatch.setattr(journal, "wall", lambda: now)
    engine, part = durable_engine(tmp_path, config, now)
    engine.cancels_ahead.keep("a", None, now)
    engine.submit(task_from_wire({"id": "b", "name": "job"}, now, config), now)
    task = engine.take(["default"], now)
    assert task is not None
    engine.start(task, LeasingConsumer("c"), now)
    assert engine.complete("b", 1, None, now)
    assert engine.cancels_ahead.take_key("a", "K")
    assert list(engine.table.tombstones) == ["b", "a"]
    part.stop()
    back = _replayed(tmp_path, config, now + 1, monkeypatch, compact=False)
    assert list(back.table.tombstones) == ["b", "a"]
    assert back.table.holder_of_key("K", now + 1, config.dedup_window) == "a" and not back.cancels_ahead.keyless


def test_an_id_used_again_is_live_after_a_restart_with_more_tombstones(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``max_tombstones`` 1, "again" finishes, "other"'s end pushes its
    tombstone out and "again" is submitted anew; the node restarts with
    ``max_tombstones`` 10. The replay, which now restores each tombstone as
    it reads it, holds "again"'s old one when the new ``A`` record comes:
    that record ends it (mutation: kept, the id was live and finished at
    once, and a status said ``done`` for a task waiting to run)."""
    config = NodeConfig(node_id="n", data_dir=str(tmp_path), max_tombstones=1)
    now = time.time()
    monkeypatch.setattr(journal, "wall", lambda: now)
    engine, part = durable_engine(tmp_path, config, now)
    consumer = LeasingConsumer("c")
    for task_id in ("again", "other"):
        engine.submit(task_from_wire({"id": task_id, "name": "job"}, now, config), now)
        task = engine.take(["default"], now)
        assert task is not None and task.id == task_id
        engine.start(task, consumer, now)
        assert engine.complete(task_id, 1, b"old", now)
    assert engine.table.tombstone("again") is None
    engine.submit(task_from_wire({"id": "again", "name": "job", "countdown": 3600}, now, config), now)
    part.stop()
    more = NodeConfig(node_id="n", data_dir=str(tmp_path), max_tombstones=10)
    back = _replayed(tmp_path, more, now + 1, monkeypatch, compact=False)
    assert "again" in back.table.live and back.table.tombstone("again") is None
    assert list(back.table.tombstones) == ["other"] and back.table.result_bytes == 3
