"""A cancel kept ahead of its copy in the node's log (docs/durability.md,
"The log"; :mod:`miyaq.core.cancels_ahead`): an ``F`` record, replayed with
its key, or marked ``ahead`` when it has none so it may still take its
copy's key; kept by a compaction while it lives, dropped after; an older
log replays as before. Each test drives a real engine with the node's
durability part on a real log in a temporary directory, as
tests/test_log_replayed_state.py does. The cluster's side:
tests/test_cancel_ahead_restart.py.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from test_log_replayed_state import durable_engine, written

from miyaq.config import NodeConfig
from miyaq.core.cancels_ahead import AHEAD, MAX_KEYLESS_AHEAD
from miyaq.core.engine import Engine
from miyaq.core.refusals import Refusals
from miyaq.persistence.replay import replay
from miyaq.protocol.commands import DUPLICATE
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.log import AppendLog
from miyaq.store.task import CANCELLED

pytestmark = pytest.mark.timeout(60)

T0 = time.time()     # each test's own: see _now_for_each_test


@pytest.fixture(autouse=True)
def _now_for_each_test() -> None:
    """``T0`` is the wall clock when each test starts. The replay reads the
    wall clock itself (tombstones older than ``result_ttl`` are dropped), and
    a ``T0`` read at import is as old as the suite when xdist runs this file
    late in it: a whole-suite run failed so, a ``result_ttl`` of 60 s passed."""
    global T0
    T0 = time.time()


def _config(tmp_path: Path, **over: Any) -> NodeConfig:
    return NodeConfig(node_id="n1", data_dir=str(tmp_path), **over)


def _restarted(tmp_path: Path, config: NodeConfig, now: float) -> Engine:
    engine, part = durable_engine(tmp_path, config, now)
    part.close()
    return engine


def test_a_kept_cancel_is_logged_and_replayed_with_its_key_or_its_mark(tmp_path):
    """Fault: the node stops (or is killed once the records are written)
    after keeping two cancels ahead of their copies, one with a key and
    one without. Before, its log held neither, and a restart forgot both.
    Now each is an ``F`` record (``cancelled``); the keyed one holds its
    key again after the replay, and the keyless one is remembered as kept
    ahead (``ahead``), so its copy's key is still taken when the copy comes."""
    config = _config(tmp_path)
    engine, part = durable_engine(tmp_path, config, T0)
    engine.cancels_ahead.keep("keyed-1", "k1", T0)
    engine.cancels_ahead.keep("keyless-1", None, T0)
    written(part)
    part.kill()          # as kill -9 would: only what was written is kept

    back, part = durable_engine(tmp_path, config, T0 + 1)
    assert back.table.tombstone("keyed-1").state == CANCELLED
    assert back.table.tombstone("keyed-1").key == "k1" and back.table.keys.get("k1") == "keyed-1"
    assert back.table.tombstone("keyless-1").state == CANCELLED
    assert list(back.cancels_ahead.keyless) == ["keyless-1"]
    task = task_from_wire({"id": "another", "name": "job", "key": "k1"}, T0 + 1, config)
    assert back.submit(task, T0 + 1) == (DUPLICATE, "keyed-1")
    assert back.cancels_ahead.take_key("keyless-1", "k2")
    assert back.table.keys.get("k2") == "keyless-1"
    part.close()


def test_a_key_taken_after_the_cancel_is_logged_too(tmp_path):
    """Fault: a cancel kept ahead without a key takes its copy's key when
    the copy comes, and the node restarts. The key's record is logged: the
    tombstone holds the key after the restart, and is no longer marked."""
    config = _config(tmp_path)
    engine, part = durable_engine(tmp_path, config, T0)
    engine.cancels_ahead.keep("keyless-1", None, T0)
    assert engine.cancels_ahead.take_key("keyless-1", "k1")
    part.close()

    back = _restarted(tmp_path, config, T0 + 1)
    assert back.table.tombstone("keyless-1").key == "k1" and back.table.keys.get("k1") == "keyless-1"
    assert not back.cancels_ahead.keyless


def test_compaction_keeps_a_kept_cancel_and_its_mark_while_they_live(tmp_path):
    """A compaction rewrites the kept cancels as any tombstone, the mark of
    a keyless one included while the node remembers it; a tombstone past
    ``result_ttl`` is neither restored nor, once swept, compacted."""
    config = _config(tmp_path, result_ttl=60.0, dedup_window=60.0)
    engine, part = durable_engine(tmp_path, config, T0)
    engine.cancels_ahead.keep("keyless-1", None, T0)
    engine.cancels_ahead.keep("keyed-1", "k1", T0)
    records = list(part.snapshot())
    assert [r.get(AHEAD) for r in records] == [True, None]
    part.compact()
    part.close()

    back = _restarted(tmp_path, config, T0 + 1)
    assert list(back.cancels_ahead.keyless) == ["keyless-1"] and back.table.tombstone("keyed-1").key == "k1"

    later, log = Engine(config), AppendLog(tmp_path, fsync="always", offload_fsync=False)
    replay(later, log, T0 + 61, Refusals())      # their ttl is past: not restored
    log.close()
    assert later.table.tombstone("keyless-1") is None and later.table.tombstone("keyed-1") is None
    assert not later.cancels_ahead.keyless

    engine, part = durable_engine(tmp_path, config, T0 + 1)
    engine.table.sweep(T0 + 61)
    assert not list(part.snapshot())
    part.close()


def test_the_keyless_ones_stay_bounded_after_a_replay(tmp_path):
    """More keyless cancels kept ahead than ``MAX_KEYLESS_AHEAD`` in the
    log: a replay remembers the newest ones only, as the running node did."""
    config = _config(tmp_path, max_tombstones=MAX_KEYLESS_AHEAD + 10)
    engine, part = durable_engine(tmp_path, config, T0)
    for i in range(MAX_KEYLESS_AHEAD + 5):
        engine.cancels_ahead.keep(f"t{i}", None, T0)
    assert len(engine.cancels_ahead.keyless) == MAX_KEYLESS_AHEAD
    part.close()

    back = _restarted(tmp_path, config, T0 + 1)
    remembered = back.cancels_ahead.keyless
    assert len(remembered) == MAX_KEYLESS_AHEAD and next(iter(remembered)) == "t5"


def test_a_record_with_a_bad_mark_is_refused_and_the_rest_replays(tmp_path):
    """A whole ``F`` record whose ``ahead`` is not a boolean (a bug, another
    build) is refused at replay, counted under ``log``; the rest replays."""
    config = _config(tmp_path)
    log = AppendLog(tmp_path, fsync="always", offload_fsync=False)
    assert not list(log.replay())
    log.append_many([{"o": "F", "id": "bad", "state": CANCELLED, "at": T0, "queue": "default", "attempt": 0,
                      AHEAD: "yes"},
                     {"o": "F", "id": "good", "state": CANCELLED, "at": T0, "queue": "default", "attempt": 0,
                      AHEAD: True}])
    log.close()
    engine, refusals = Engine(config), Refusals()
    log = AppendLog(tmp_path, fsync="always", offload_fsync=False)
    replay(engine, log, T0 + 1, refusals)
    log.close()
    assert engine.table.tombstone("bad") is None and engine.table.tombstone("good") is not None
    assert list(engine.cancels_ahead.keyless) == ["good"]
    assert refusals.by_source() == {"log": 1}


def test_an_older_log_without_kept_cancels_replays_as_before(tmp_path):
    """A log written before 2026-12-06 holds no kept cancel and no mark:
    its ``F`` records replay as ever, and nothing is remembered as kept ahead."""
    config = _config(tmp_path)
    engine, part = durable_engine(tmp_path, config, T0)
    task = task_from_wire({"id": "t1", "name": "job", "key": "k1"}, T0, config)
    engine.submit(task, T0)
    engine.cancel("t1", T0)
    part.close()
    back = _restarted(tmp_path, config, T0 + 1)
    assert back.table.tombstone("t1").state == CANCELLED and back.table.keys.get("k1") == "t1"
    assert not back.cancels_ahead.keyless


def test_keeping_a_cancel_ahead_of_a_known_task_is_refused(tmp_path):
    """``CancelsAhead.keep`` of a task the node knows (a copy, a tombstone)
    raises ValueError and changes nothing."""
    config = _config(tmp_path)
    engine = Engine(config)
    task = task_from_wire({"id": "t1", "name": "job"}, T0, config)
    engine.submit(task, T0)
    with pytest.raises(ValueError):
        engine.cancels_ahead.keep("t1", None, T0)
    assert engine.table.live["t1"].state != CANCELLED and not engine.cancels_ahead.keyless
