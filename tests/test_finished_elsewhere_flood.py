"""A flood of ends heard for tasks a node has no trace of does not push
finished tasks' tombstones out (docs/cluster.md, "Ends heard ahead of
the copy"; docs/security.md, "Input validation and memory limits";
:mod:`miyaq.cluster.ends_ahead`).

Another holder's ``F`` event, a REPLICATE's handed-off outcomes
(``stones``) and a SYNC answer's stones leave a tombstone even for an id
the receiver has no trace of, so a late copy is not stored. Before
2026-12-06 those shared ``max_tombstones`` with every finished task's
tombstone, oldest dropped first: a peer (any node that claims membership
without ``--secure``, a buggy member with it) that sent ends of ids nobody
had pushed out every finished task's tombstone -- its result, and its key,
so a second submit of that key ran the task again. Now they are counted
apart, at most ``max_tombstones`` of them; one more is refused and
nothing is kept.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from test_cancel_ahead_flood import _finished_with_keys
from test_cancel_ahead_log import _config
from test_cluster_cancel_standby import _ask
from test_log_replayed_state import durable_engine, written

from miyaq.cluster.ends_ahead import finish_unknown
from miyaq.cluster.holder_events import apply_events
from miyaq.cluster.peer_requests import REPLICATE
from miyaq.config import NodeConfig
from miyaq.core.cancels_ahead import END_AHEAD
from miyaq.core.engine import Engine
from miyaq.protocol import commands as c
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.log import AppendLog
from miyaq.store.records import task_record
from miyaq.store.table import TaskTable
from miyaq.store.task import CANCELLED, DONE, Task

pytestmark = pytest.mark.timeout(90)

T0 = time.time()


def _flood(cluster: Any, path: str, dst: str, n: int) -> None:
    """``n`` ends of ids nobody has, from n2 to ``dst``, the way ``path`` says:
    a stream's ``F`` events, a REPLICATE's ``stones`` (an outcome handoff),
    or a SYNC answer's stones."""
    node = cluster[dst]
    if path == "events":
        apply_events(node.role, "n2", [["F", f"ghost-{j}", DONE, b"r", None, f"gk-{j}"] for j in range(n)])
        return
    rows = [[f"ghost-{j}", DONE, b"r", None, f"gk-{j}"] for j in range(n)]
    if path == "handoff":
        answers: list[Any] = []
        cluster["n2"].role.peer.request(dst, REPLICATE, {"stones": rows}, 5.0, answers.append)
        cluster.wait_until(lambda: answers, what="the REPLICATE's answer")
        assert answers[0] is not None and answers[0]["ids"] == []
    else:
        node.role.resync._apply("n2", {"stones": rows}, 0, 1)


@pytest.mark.parametrize("path", ["events", "handoff", "sync"])
def test_a_flood_of_ends_of_unknown_ids_leaves_finished_tasks_their_tombstones(inproc, path):
    """Fault: 40 tasks with keys finished on every holder (``max_tombstones``
    50); then n2 sends n1 the ends of 200 ids nobody has -- as ``F``
    events on the stream, as a REPLICATE's handed-off outcomes, or in an
    answer to n1's SYNC -- as a buggy or hostile member would. Before,
    each left a tombstone that pushed out the oldest: all 40 finished
    tasks' tombstones and keys were gone on n1, and a second submit of a
    finished task's key was accepted (it ran again). Now 50 are kept
    apart, the other 150 refused, counted (STATUS ``tombstones_apart``)
    and logged once; every finished task keeps its result and its key."""
    cluster = inproc(3, replicas=3, max_tombstones=50)
    tasks = _finished_with_keys(cluster, "n1", 40)
    _flood(cluster, path, "n1", 200)

    table = cluster["n1"].engine.table
    lost = [tid for tid, _ in tasks if table.tombstone(tid) is None]
    assert not lost, f"{len(lost)} of 40 finished tasks' tombstones pushed out by the flood"
    assert all(table.keys.get(key) == tid for tid, key in tasks)
    assert len(table.ends_ahead) == 50 and len(table.tombstones) == 90 and table.ends_ahead_refused == 150
    assert table.tombstone("ghost-49").state == DONE and table.tombstone("ghost-50") is None
    command, status = _ask(cluster, "n1", c.STATUS, {})
    assert command == c.REPLY and status["tombstones_apart"] == {
        "cancels_ahead": 0, "max_cancels_ahead": 50, "cancels_ahead_refused": 0,
        "ends_ahead": 50, "max_ends_ahead": 50, "ends_ahead_refused": 150,
        "purged": 0, "max_purged": table.max_tombstones}
    tid, key = tasks[0]
    command, result = _ask(cluster, "n1", c.RESULT, {"id": tid, "timeout": 0})
    assert command == c.REPLY and result["state"] == DONE, result
    again = cluster.answered([cluster.submit("n1", cluster.task_id(), key=key)])[0]
    assert again.status == "duplicate" and again.result[2] == tid, again.result
    assert not cluster.crashes()


def test_an_end_ahead_of_its_copy_leaves_the_count_when_the_copy_comes(inproc):
    """The common case: the runner's ``F`` event reaches a standby holder
    before the task's copy (its REPLICATE held on the way). The end is
    kept as a tombstone counted apart; when the copy comes it is not
    stored, and the tombstone counts as a finished task's -- the count of
    ends ahead goes back to 0 (else a busy cluster's ends would fill it
    and later ones be refused). After 30 tasks run normally, no node
    keeps any end apart."""
    cluster = inproc(3, replicas=3)
    tid = cluster.task_id()
    first, standby = cluster.holders(tid)[:2]
    held = cluster.net.hold("REPLICATE", src=first, dst=standby)
    worker = cluster.worker(first)
    cluster.answered([cluster.submit(first, tid)])  # its copy to the standby held: not_enough_replicas
    cluster.wait_until(lambda: worker.runs(tid), what="the first holder to run the task")
    worker.complete(tid, result=b"ok")
    table = cluster[standby].engine.table
    cluster.wait_until(lambda: table.tombstone(tid) is not None, what="the F event on the standby")
    assert list(table.ends_ahead) == [tid] and table.live.get(tid) is None
    held.release()
    cluster.wait_until(lambda: not table.ends_ahead, what="the copy to come")
    assert table.tombstone(tid).state == DONE and table.live.get(tid) is None

    tasks = [cluster.task_id() for _ in range(30)]
    for t in tasks:
        cluster.submit_accepted(cluster.holders(t)[0], t)    # resent if refused after a freeze (a loaded machine)
    workers = {first: worker, **{n: cluster.worker(n) for n in cluster.ids if n != first}}

    def finish_those_running() -> bool:
        for w in workers.values():
            for t in [t for t in tasks if w.runs(t)]:
                w.complete(t, result=b"ok")
        return all(cluster[h].state(t) == DONE for t in tasks for h in cluster.ids)
    cluster.wait_until(finish_those_running, timeout=30, what="every task to end on every holder")
    assert {n: len(cluster[n].engine.table.ends_ahead) for n in cluster.ids} == {n: 0 for n in cluster.ids}
    assert not cluster.crashes()


def test_refusals_are_logged_once_a_minute_with_their_count(caplog):
    """A flood of 500 refusals logs one line (its count) and no line per end;
    an end of a task this node holds is applied past the bound as ever."""
    engine = Engine(NodeConfig(max_tombstones=5))
    for j in range(5):
        assert finish_unknown(engine, f"ghost-{j}", DONE, None, None, T0)
    caplog.set_level(logging.WARNING, logger="miyaq.cluster.ends_ahead")
    for j in range(5, 505):
        assert not finish_unknown(engine, f"ghost-{j}", DONE, None, None, T0)
    assert engine.table.ends_ahead_refused == 500 and len(engine.table.tombstones) == 5
    lines = [r.getMessage() for r in caplog.records if r.name == "miyaq.cluster.ends_ahead"]
    assert len(lines) <= 1, lines
    task = task_from_wire({"id": "t1", "name": "job"}, T0, engine.config)
    engine.submit(task, T0)
    engine.finish_copy("t1", DONE, b"r", None, T0)
    assert engine.table.tombstone("t1").state == DONE and "t1" not in engine.table.ends_ahead


def test_the_bound_holds_across_a_compaction_and_a_restart(tmp_path: Path):
    """Fault: a node holds 20 finished tasks' tombstones with keys
    (``max_tombstones`` 20) and 20 ends heard ahead of their copy, and its
    log is compacted (the snapshot holds every tombstone), then it
    restarts and a flood of ends follows. The ends' ``F`` records say
    ``end_ahead``, so the replay counts them apart again: the flood is
    refused and every finished task keeps its tombstone and key. Had the
    replay taken them for finished tasks' (the build before), 20 of the
    40 would have been dropped at once."""
    config = _config(tmp_path, max_tombstones=20)
    engine, part = durable_engine(tmp_path, config, T0)
    for i in range(20):
        task = task_from_wire({"id": f"done-{i}", "name": "job", "key": f"k{i}"}, T0, config)
        engine.submit(task, T0)
        engine.cancel(task.id, T0)
    for j in range(20):
        assert finish_unknown(engine, f"ghost-{j}", DONE, b"r", None, T0, key=f"gk-{j}")
    records = list(part.snapshot())
    assert sorted(r["id"] for r in records if r.get(END_AHEAD)) == sorted(f"ghost-{j}" for j in range(20))
    part.compact()
    written(part)
    part.kill()

    back, part = durable_engine(tmp_path, config, T0 + 1)
    table = back.table
    assert len(table.tombstones) == 40 and len(table.ends_ahead) == 20
    assert not finish_unknown(back, "ghost-new", DONE, None, None, T0 + 1)
    assert all(table.tombstone(f"done-{i}") is not None and table.keys.get(f"k{i}") == f"done-{i}"
               for i in range(20))
    part.close()


def test_a_log_of_the_build_before_reads_the_mark_as_a_finished_tasks_tombstone(tmp_path: Path):
    """An ``F`` record with ``end_ahead`` replays apart; without it (a
    snapshot of the build before) as a finished task's tombstone, pushing
    the oldest out as it did; a bad mark is refused, counted, skipped."""
    config = _config(tmp_path, max_tombstones=3)
    log = AppendLog(tmp_path, fsync="always", offload_fsync=False)
    assert not list(log.replay())
    stone = {"o": "F", "state": DONE, "at": T0, "queue": "default", "attempt": 0}
    log.append_many([*({**stone, "id": f"done-{i}"} for i in range(3)),
                     {**stone, "id": "marked", END_AHEAD: True}, {**stone, "id": "plain"},
                     {**stone, "id": "bad", END_AHEAD: "yes"}])
    log.close()
    back, part = durable_engine(tmp_path, config, T0 + 1)
    part.close()
    assert list(back.table.ends_ahead) == ["marked"] and "bad" not in back.table.tombstones
    assert [t for t in back.table.tombstones if t != "marked"] == ["done-1", "done-2", "plain"]


def test_the_tables_bound_of_ends_ahead_beside_the_others():
    """The table's own bounds: ``max_tombstones`` finished tasks' tombstones,
    ``max_ends_ahead`` (as many) ends ahead, ``max_ahead`` cancels ahead;
    an end ahead leaves the count when released (its copy came: its
    tombstone is then a finished task's, pushed out as the oldest), and
    with its tombstone."""
    table = TaskTable(3, 3600.0, 10)
    assert table.max_ends_ahead == 3
    for i in range(3):
        table.bury(Task(f"t{i}", "q", "noop", b""), DONE, b"r", T0 + i)
    for j in range(3):
        table.hold_end_ahead(f"end-{j}")
        table.bury(Task(f"end-{j}", "default", None, b""), DONE, None, T0 + 10 + j)
    table.hold_ahead("cancel-0")
    table.bury(Task("cancel-0", "default", None, b""), CANCELLED, None, T0 + 20)
    assert len(table.tombstones) == 7 and all(f"t{i}" in table.tombstones for i in range(3))
    table.release_end_ahead("end-0")
    table.release_end_ahead("end-0")        # a second time: no change
    table.bury(Task("t3", "q", "noop", b""), DONE, b"r", T0 + 21)
    assert "t0" not in table.tombstones and "t1" not in table.tombstones and "end-0" in table.tombstones
    assert list(table.ends_ahead) == ["end-1", "end-2"] and list(table.ahead) == ["cancel-0"]
    assert table.sweep(T0 + 3600 + 11) == 3 and list(table.ends_ahead) == ["end-2"]


def test_ends_ahead_carrying_results_stop_short_of_max_result_bytes():
    """Fault: 40 finished tasks with keys and small results, then 200 ends
    ahead of ids nobody has, each with a result of 10,000 bytes
    (``max_result_bytes`` 100,000). Their count stays far below the bound,
    but their results passed twice ``max_result_bytes``, from where the
    table forgets the oldest tombstones of all: before, 40 of 40 finished
    tasks' tombstones and keys were gone. Now an end whose result would
    take the results kept past ``max_result_bytes`` is refused and
    counted; the finished tasks keep theirs, and an end without a result
    is still kept."""
    engine = Engine(NodeConfig(max_result_bytes=100_000))
    for i in range(40):
        task = task_from_wire({"id": f"done-{i}", "name": "job", "key": f"k{i}"}, T0, engine.config)
        engine.submit(task, T0)
        engine.finish_copy(task.id, DONE, b"x" * 100, None, T0)
    table = engine.table
    kept = sum(finish_unknown(engine, f"ghost-{j}", DONE, b"y" * 10_000, None, T0, key=f"gk-{j}")
               for j in range(200))
    assert all(table.tombstone(f"done-{i}") is not None and table.keys.get(f"k{i}") == f"done-{i}"
               for i in range(40))
    assert kept == 9 and table.ends_ahead_refused == 191 and table.result_bytes <= 100_000
    assert table.results_dropped == 0
    assert finish_unknown(engine, "ghost-bare", CANCELLED, None, None, T0)


def test_an_end_ahead_leaves_the_count_when_a_resync_brings_its_copy(inproc):
    """The copy of a task whose end this node heard first may come by a
    resync (a SYNC answer's tasks) instead of a REPLICATE: it is not
    stored, and the end leaves the count as it does for a REPLICATE --
    before, such ends stayed counted until they aged out, and a busy
    cluster's resyncs could fill the bound and get later ends refused."""
    cluster = inproc(3, replicas=3)
    tid = cluster.task_id()
    first, standby = cluster.holders(tid)[:2]
    held = cluster.net.hold("REPLICATE", src=first, dst=standby)
    cluster.submit(first, tid)
    record = task_record(cluster[first].engine.table.live[tid])
    engine = cluster[standby].engine
    assert finish_unknown(engine, tid, DONE, b"ok", None, time.time())
    assert list(engine.table.ends_ahead) == [tid]
    cluster[standby].role.resync._apply(first, {"tasks": [record]}, 0, 1)
    assert not engine.table.ends_ahead
    assert engine.table.tombstone(tid).state == DONE and engine.table.live.get(tid) is None
    held.release()
    assert not cluster.crashes()
