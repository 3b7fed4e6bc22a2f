"""A purged dead letter in the node's log (docs/durability.md, "The log";
docs/cluster.md, "Purged dead letters stay purged"): its ``P`` record says
when, a replay remembers the id for a tombstone's life (the longer of
``result_ttl`` and ``dedup_window``), and
a compaction writes a ``P`` record for each id still remembered. A real
engine with the node's durability part on a real log, as
tests/test_cancel_ahead_log.py drives it."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_log_replayed_state import durable_engine, submit, written

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.core.refusals import Refusals
from miyaq.persistence.replay import replay
from miyaq.store.log import AppendLog

pytestmark = pytest.mark.timeout(60)


def _replayed(tmp_path: Path, config: NodeConfig, now: float) -> Engine:
    engine, log = Engine(config), AppendLog(tmp_path, fsync="always", offload_fsync=False)
    replay(engine, log, now, Refusals())
    log.close()
    return engine


def test_a_purge_is_remembered_across_a_restart_and_a_compaction_for_the_tombstones_life(tmp_path):
    """Fault: a purge was not remembered past a restart (its ``P`` record
    had no time, a compaction dropped it), so a holder restarted after a
    purge stored a peer's stale dead copy again. Remembered for a
    tombstone's life (60 s here) from the purge, then forgotten (and not
    compacted)."""
    t0 = time.time()
    config = NodeConfig(node_id="n1", data_dir=str(tmp_path), result_ttl=60.0, dedup_window=60.0)
    engine, part = durable_engine(tmp_path, config, t0)
    task = submit(engine, config, t0, id="dead-1")
    engine.kill_copy(task, {"type": "Failure", "message": "no"})     # dead-lettered (as by a peer's D event)
    assert task.id in engine.table.dead
    assert engine.dead_purge(None, [task.id]) == 1
    written(part)
    part.close()
    assert _replayed(tmp_path, config, time.time()).table.purged.was(task.id)      # from its P record

    engine, part = durable_engine(tmp_path, config, time.time())
    purge_records = [r for r in part.snapshot() if r.get("o") == "P"]
    assert [r["id"] for r in purge_records] == [task.id] and type(purge_records[0]["at"]) is float
    part.compact()
    part.close()
    assert _replayed(tmp_path, config, time.time()).table.purged.was(task.id)      # from the compaction's
    assert not _replayed(tmp_path, config, t0 + 61).table.purged.was(task.id)      # its ttl past

    engine, part = durable_engine(tmp_path, config, time.time())
    engine.table.sweep(t0 + 61)
    assert not engine.table.purged.was(task.id) and not [r for r in part.snapshot() if r.get("o") == "P"]
    part.close()


def test_an_id_submitted_again_after_its_purge_is_no_purged_dead_letter_any_more():
    """Fault (the lead's review of the purge marks): an id purged and then
    submitted again stayed marked in memory until the mark expired, so a
    dead copy of the new task from a peer (a holder that missed it) would
    have been dropped as a stale copy of the old one. A task stored under
    the id clears its mark, as an ``A`` record does at replay."""
    from miyaq.store.table import TaskTable
    from miyaq.store.task import Task

    table = TaskTable(max_tombstones=100, tombstone_ttl=3600.0, max_dead=100)
    table.purged.mark("again", 1_700_000_000.0)
    assert table.purged.was("again")
    table.add(Task("again", "default", "job", b""))
    assert not table.purged.was("again")
