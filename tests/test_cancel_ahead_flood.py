"""A flood of cancels kept ahead of their copy does not push finished
tasks' tombstones out (docs/cluster.md, "Cancelling at any holder";
docs/security.md, "Input validation and memory limits";
:mod:`miyaq.core.cancels_ahead`).

A first holder keeps a peer's CANCEL of a task it has no copy of yet as a
``cancelled`` tombstone. Before 2026-12-06 those shared ``max_tombstones``
with every finished task's tombstone, oldest dropped first: a peer (any
node that claims membership without ``--secure``, a buggy member with it)
that sent CANCELs of ids nobody had pushed out every finished task's
tombstone -- its result, and its key, so a second submit of that key ran
the task again. Now they are counted apart, at most ``max_tombstones`` of
them (up to 20,000); one more is refused ``busy`` and nothing is kept.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from test_cancel_ahead_log import _config, _restarted
from test_cluster_cancel_standby import _ask, _cancel
from test_log_replayed_state import durable_engine, written

from miyaq.cluster.peer_requests import CANCEL
from miyaq.config import NodeConfig
from miyaq.core.cancels_ahead import AHEAD, KEPT_AHEAD
from miyaq.core.engine import Engine
from miyaq.errors import Busy
from miyaq.protocol import commands as c
from miyaq.protocol.commands import DUPLICATE
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.log import AppendLog
from miyaq.store.table import MAX_AHEAD, TaskTable
from miyaq.store.task import CANCELLED, DONE, Task

pytestmark = pytest.mark.timeout(90)

T0 = time.time()


def _finished_with_keys(cluster: Any, node: str, n: int) -> list[tuple[str, str]]:
    """``n`` tasks with keys, first held by ``node``, run there and finished
    with their id as result: ``[(task id, key)]``.

    Each submit waits for its answer and is sent again while refused
    ``unavailable`` (:meth:`~miyaq.testing.inprocess.InProcessCluster.submit_accepted`):
    under a loaded machine the test process itself can stall past ``STALL``,
    every node then takes it for a freeze and coordinates no submit for a
    while. Before 2026-12-07 the submits were not checked: a full suite run
    with ``-n 4`` on 2 cores saw the nodes "frozen for 2.7s", the submits
    refused, and "every task to run" never reached (the nodes themselves
    dispatched again 50 ms after the freeze)."""
    keys = [k for k in (f"key-{i}" for i in range(200 * n)) if cluster.holders("x", key=k)[0] == node][:n]
    tasks = [(cluster.task_id(), key) for key in keys]
    worker = cluster.worker(node)
    for tid, key in tasks:
        cluster.submit_accepted(node, tid, key=key)
    left = {tid for tid, _ in tasks}

    def finish_those_running() -> bool:
        for tid in [t for t in left if worker.runs(t)]:
            worker.complete(tid, result=tid.encode())
            left.discard(tid)
        return not left

    cluster.wait_until(finish_those_running, timeout=30, what="every task to run")
    cluster.wait_until(lambda: all(cluster[h].state(t) == DONE for t, _ in tasks for h in cluster.ids),
                       what="every holder to hear every end")
    return tasks


def test_a_flood_of_cancels_ahead_leaves_finished_tasks_their_tombstones(inproc):
    """Fault: 40 tasks with keys finished on every holder (``max_tombstones``
    50); then peers send 200 CANCELs of ids nobody has to every holder
    (n2 to n1 and n3, n3 to n2), as a buggy or hostile member would.
    Before, each was kept and pushed out the oldest tombstone: all 40
    finished tasks' tombstones and keys were gone on n1, and a second
    submit of a finished task's key was accepted (it ran again). Now 50
    cancels are kept on each node (``held: false``), the other 150
    refused (``busy``: the asker hears an error), counted, and logged
    once; every finished task keeps its result and its key."""
    cluster = inproc(3, replicas=3, max_tombstones=50)
    tasks = _finished_with_keys(cluster, "n1", 40)
    answers: dict[str, list[Any]] = {"n1": [], "n2": [], "n3": []}
    for src, dst in (("n2", "n1"), ("n2", "n3"), ("n3", "n2")):
        peer = cluster[src].role.peer
        for j in range(200):
            peer.request(dst, CANCEL, {"id": f"ghost-{j}", "key": f"gk-{j}"}, 5.0, answers[dst].append)
    cluster.wait_until(lambda: all(len(a) == 200 for a in answers.values()), what="every answer")

    first = cluster["n1"]
    table = first.engine.table
    lost = [tid for tid, _ in tasks if table.tombstone(tid) is None]
    assert not lost, f"{len(lost)} of 40 finished tasks' tombstones pushed out by the flood"
    assert all(table.keys.get(key) == tid for tid, key in tasks)
    kept = [{k: a[k] for k in ("cancelled", "state", "held")} for a in answers["n1"] if a is not None]
    assert kept == [{"cancelled": True, "state": "scheduled", "held": False}] * 50
    assert answers["n1"].count(None) == 150 and first.engine.cancels_ahead.refused == 150
    assert len(table.ahead) == 50 and len(table.tombstones) == 90
    tid, key = tasks[0]
    command, result = _ask(cluster, "n1", c.RESULT, {"id": tid, "timeout": 0})
    assert command == c.REPLY and result["state"] == DONE, result
    again = cluster.answered([cluster.submit("n1", cluster.task_id(), key=key)])[0]
    assert again.status == "duplicate" and again.result[2] == tid, again.result
    assert not cluster.crashes()


def test_a_cancel_ahead_refused_for_the_bound_is_answered_unconfirmed(inproc):
    """Fault: the first holder holds its most cancels ahead (a flood came
    first), and a real task is submitted through its second holder and
    CANCELled there while its REPLICATE to the first holder is held on the
    way. The first holder refuses to keep one more; the holder asked
    cancels its own copy and answers ``unconfirmed`` (not the first
    holder's word), as for a first holder that did not answer. When the
    copy comes, the asker's F event (sent at once) ended it there."""
    cluster = inproc(3, min_acks=2, max_tombstones=20)
    cluster.settle(0.6)       # tasks made a replica offset after the asker's view
    tid = cluster.task_id()
    first, standby = cluster.holders(tid)[:2]
    cancels = cluster[first].role.cancels
    for j in range(20):
        ghost = next(g for g in (f"ghost-{j}-{i}" for i in range(1000)) if first in cluster.holders(g))
        assert cancels.serve(standby, {"id": ghost})["held"] is False
    held = cluster.net.hold("REPLICATE", src=standby, dst=first)
    cluster.submit_accepted(standby, tid)

    assert _cancel(cluster, standby, tid) == {"cancelled": True, "state": "scheduled", "unconfirmed": True}
    assert cluster[first].engine.cancels_ahead.refused == 1 and tid not in cluster[first].engine.table.ahead
    worker = cluster.worker(first)
    held.release()
    cluster.wait_until(lambda: cluster[first].state(tid) == CANCELLED, what="the task to end cancelled there")
    cluster.settle(0.3)
    assert worker.times(tid) == 0
    assert not cluster.crashes()


def test_refusals_are_logged_once_a_minute_with_their_count(caplog):
    """A flood of 500 refusals logs one line (its count) and no line per cancel."""
    engine = Engine(NodeConfig(max_tombstones=5))
    for j in range(5):
        engine.cancels_ahead.keep(f"ghost-{j}", None, T0)
    caplog.set_level(logging.WARNING, logger="miyaq.core.cancels_ahead")
    for j in range(5, 505):
        with pytest.raises(Busy):
            engine.cancels_ahead.keep(f"ghost-{j}", None, T0)
    assert engine.cancels_ahead.refused == 500 and len(engine.table.tombstones) == 5
    lines = [r.getMessage() for r in caplog.records if r.name == "miyaq.core.cancels_ahead"]
    assert len(lines) <= 1, lines


def test_the_bound_holds_across_a_restart_and_a_compaction(tmp_path):
    """Fault: a node full of finished tasks' tombstones (``max_tombstones``
    20) and cancels kept ahead (20, with and without keys) restarts, then
    compacts and restarts again; a flood follows. The kept cancels are
    counted apart after each replay (their ``F`` records say
    ``kept_ahead``), so the flood is refused and no finished task's
    tombstone is pushed out; had the replay taken them for finished
    tasks' (the build before), 20 of the 40 would have been dropped."""
    config = _config(tmp_path, max_tombstones=20)
    engine, part = durable_engine(tmp_path, config, T0)
    for i in range(20):
        task = task_from_wire({"id": f"done-{i}", "name": "job", "key": f"k{i}"}, T0, config)
        engine.submit(task, T0)
        engine.cancel(task.id, T0)
    for j in range(20):
        engine.cancels_ahead.keep(f"ghost-{j}", f"gk-{j}" if j % 2 else None, T0)
    written(part)
    part.kill()

    for step in ("replay", "compacted"):
        back, part = durable_engine(tmp_path, config, T0 + 1)
        table = back.table
        assert len(table.tombstones) == 40 and len(table.ahead) == 20, step
        with pytest.raises(Busy):
            back.cancels_ahead.keep("ghost-new", None, T0 + 1)
        assert all(table.tombstone(f"done-{i}") is not None for i in range(20)), step
        if step == "replay":
            records = list(part.snapshot())
            assert sum(1 for r in records if r.get(KEPT_AHEAD)) == 20
            assert sum(1 for r in records if r.get(AHEAD)) == 10
            part.compact()
        part.close()


def test_a_log_of_the_build_before_counts_its_keyless_ones_apart(tmp_path):
    """A log of the build before the ``kept_ahead`` mark: its keyless cancels
    kept ahead carry ``ahead`` and are counted apart again; its keyed ones
    carry no mark and replay as finished tasks' tombstones (they push the
    oldest out as they did)."""
    config = _config(tmp_path, max_tombstones=5)
    log = AppendLog(tmp_path, fsync="always", offload_fsync=False)
    assert not list(log.replay())
    stone = {"o": "F", "state": CANCELLED, "at": T0, "queue": "default", "attempt": 0}
    log.append_many([*({**stone, "id": f"done-{i}"} for i in range(5)),
                     {**stone, "id": "keyless", AHEAD: True}, {**stone, "id": "keyed", "key": "k"}])
    log.close()
    back = _restarted(tmp_path, config, T0 + 1)
    assert list(back.table.ahead) == ["keyless"] and list(back.cancels_ahead.keyless) == ["keyless"]
    assert [t for t in back.table.tombstones if t.startswith("done-")] == [f"done-{i}" for i in range(1, 5)]


def test_a_kept_cancel_that_leaves_is_counted_no_more_and_its_id_ends_as_any_task():
    """A cancel kept ahead leaves the count with its tombstone -- past its
    age, or pushed out as the oldest of all by finished tasks -- and no
    mark stays behind: a task of that id that comes and finishes later
    here leaves a finished task's tombstone, and its key is not given to
    it by a later CANCEL. While it is kept, its copy is not stored (the
    task cannot finish here)."""
    engine = Engine(NodeConfig(max_tombstones=3, result_ttl=60.0, dedup_window=60.0))
    table = engine.table
    engine.cancels_ahead.keep("aged", None, T0)
    engine.cancels_ahead.keep("pushed", None, T0 + 30)
    assert set(table.ahead) == {"aged", "pushed"}
    assert table.sweep(T0 + 61) == 1 and list(table.ahead) == ["pushed"]
    for i in range(4):
        task = task_from_wire({"id": f"t{i}", "name": "job"}, T0 + 31, engine.config)
        engine.submit(task, T0 + 31)
        engine.cancel(task.id, T0 + 31)
    assert not table.ahead and table.tombstone("pushed") is None and len(table.tombstones) == 3
    again = task_from_wire({"id": "pushed", "name": "job"}, T0 + 32, engine.config)
    engine.submit(again, T0 + 32)
    engine.cancel("pushed", T0 + 32)
    assert "pushed" not in table.ahead and table.tombstone("pushed").state == CANCELLED
    assert not engine.cancels_ahead.take_key("pushed", "k1") and table.keys.get("k1") is None


def test_a_cancel_kept_ahead_pushes_no_finished_tasks_tombstone_out_of_a_full_table():
    """The table's own bound: ``max_tombstones`` finished tasks' tombstones
    and ``max_ahead`` (as many, up to ``MAX_AHEAD``) kept ahead; the
    setting changed later moves the first bound only."""
    table = TaskTable(4, 3600.0, 10)
    assert table.max_ahead == 4 and TaskTable(10 * MAX_AHEAD, 3600.0, 10).max_ahead == MAX_AHEAD
    for i in range(4):
        table.bury(Task(f"t{i}", "q", "noop", b""), DONE, b"r", T0 + i)
    for j in range(4):
        table.hold_ahead(f"ghost-{j}")
        table.bury(Task(f"ghost-{j}", "default", None, b""), CANCELLED, None, T0 + 10 + j)
    assert len(table.tombstones) == 8 and all(f"t{i}" in table.tombstones for i in range(4))
    table.bury(Task("t4", "q", "noop", b""), DONE, b"r", T0 + 20)
    assert "t0" not in table.tombstones and len(table.ahead) == 4
    table.max_tombstones = 2
    table.bury(Task("t5", "q", "noop", b""), DONE, b"r", T0 + 21)
    assert [t for t in table.tombstones if t.startswith("t")] == ["t4", "t5"] and len(table.ahead) == 4
    table.release_ahead("ghost-0")
    table.release_ahead("ghost-0")      # a second time: no change
    assert len(table.ahead) == 3


def test_a_duplicate_submit_within_the_window_stays_a_duplicate_after_a_flood(tmp_path: Path):
    """In one engine: a finished task's key, then ``max_tombstones`` + 50
    cancels kept ahead of ids nobody has: the key still answers
    ``duplicate`` (before, the flood released it and the task ran again)."""
    engine = Engine(NodeConfig(max_tombstones=50))
    task = task_from_wire({"id": "t1", "name": "job", "key": "k1"}, T0, engine.config)
    engine.submit(task, T0)
    engine.cancel("t1", T0)
    kept = refused = 0
    for j in range(100):
        try:
            engine.cancels_ahead.keep(f"ghost-{j}", f"gk-{j}", T0)
            kept += 1
        except Busy:
            refused += 1
    assert (kept, refused) == (50, 50)
    second = task_from_wire({"id": "t2", "name": "job", "key": "k1"}, T0 + 1, engine.config)
    assert engine.submit(second, T0 + 1) == (DUPLICATE, "t1")
