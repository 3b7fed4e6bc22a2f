"""A cancel kept ahead of its copy at the task's first holder survives
that holder's restart, in process (miyaq.testing.inprocess; docs/cluster.md,
"Cancelling at any holder").

When a peer's CANCEL reaches a task's first holder before the task's copy
(the asker's REPLICATE on its way), the first holder keeps the cancel as a
tombstone (``held: false``), so the copy is not stored when it comes.
Before 2026-12-06 that tombstone was not logged, and ``held: false`` was
answered before any write: a first holder restarted before the copy came
forgot it, stored the copy and ran the task the caller had been told was
cancelled. Now it is written (as the fsync mode promises) before the
answer leaves, and replayed at a restart. What the log holds, and how a
compaction keeps it: tests/test_cancel_ahead_log.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_cluster_cancel_standby import _ask, _cancel

from miyaq.protocol import commands as c
from miyaq.store.task import CANCELLED

pytestmark = pytest.mark.timeout(60)


def _as_killed_now(data: Path) -> Path:
    """A copy of a node's data dir as it is now: what a kill -9 at this
    moment keeps (the log's records written so far; no LOCK)."""
    kept = data.with_name(data.name + "-kept")
    shutil.copytree(data, kept, ignore=shutil.ignore_patterns("LOCK"))
    return kept


@pytest.mark.parametrize("asker", ["unkeyed", "keyed", "keyless-cancel"])
def test_a_cancel_kept_ahead_of_its_copy_survives_the_first_holders_restart(inproc, tmp_path, monkeypatch, asker):
    """Fault: a task is submitted through its second holder and CANCELled
    there at once, its REPLICATE to the first holder held on the way; the
    first holder keeps the cancel ahead of the copy (``held: false``) and
    is killed (-9: its data dir as it was when the answer came) and
    restarted; then the copy arrives. Before, the restarted node had
    forgotten the cancel: it stored the copy and its worker ran the task
    the caller was told was cancelled. Now the copy is not stored, the
    task does not run, its state and result there say ``cancelled``, and
    (``keyed``) the key stays taken: a second task of that key at the
    first holder is a ``duplicate`` of the cancelled one.
    ``keyless-cancel``: the asker's CANCEL carries no key (an older
    build); the copy that comes after the restart gives the tombstone its
    key, as it would have without the restart."""
    cluster = inproc(3, min_acks=2, data_dir=str(tmp_path), fsync="always")
    cluster.settle(0.6)       # tasks made a replica offset after the asker's view (held: false is its word)
    key = None if asker == "unkeyed" else "key-1"
    tid = cluster.task_id()
    holders = cluster.holders(tid) if key is None else cluster.holders("x", key=key)
    first, standby = holders[0], holders[1]
    if asker == "keyless-cancel":
        cancels = cluster[standby].role.cancels
        target = cancels.target
        monkeypatch.setattr(cancels, "target", lambda task_id: (target(task_id)[0], None))
    held = cluster.net.hold("REPLICATE", src=standby, dst=first)
    cluster.submit_accepted(standby, tid, **({} if key is None else {"key": key}))

    assert _cancel(cluster, standby, tid) == {"cancelled": True, "state": "scheduled"}
    assert cluster[first].state(tid) == CANCELLED and cluster[first].task(tid) is None
    sent = cluster.net.messages("CANCEL", src=standby, dst=first)
    assert [m.body.get("key") for m in sent] == [None if asker != "keyed" else key]

    data = tmp_path / first
    kept = _as_killed_now(data)
    cluster.stop_node(first)
    shutil.rmtree(data)
    kept.rename(data)
    back = cluster.start_node(first)
    assert back.state(tid) == CANCELLED, "the restarted first holder forgot the cancel kept ahead of the copy"
    worker = cluster.worker(first)
    held.release()
    cluster.wait_until(lambda: cluster.net.messages("REPLICATE", src=standby, dst=first, task=tid),
                       what="the copy to reach the restarted first holder")
    cluster.settle(0.5)

    assert worker.times(tid) == 0 and back.task(tid) is None
    assert back.state(tid) == CANCELLED
    command, info = _ask(cluster, first, c.TASK, {"id": tid})
    assert command == c.REPLY and info["task"]["state"] == CANCELLED, info
    command, result = _ask(cluster, first, c.RESULT, {"id": tid, "timeout": 0})
    assert command == c.REPLY and result == {"state": CANCELLED}, result
    if key is not None:
        assert back.tombstone(tid).key == key
        again = cluster.answered([cluster.submit(first, cluster.task_id(), key=key)])[0]
        cluster.settle(0.3)
        assert again.status == "duplicate" and again.result[2] == tid, again.result
        assert worker.times(again.task_id) == 0
    assert not cluster.crashes()


def test_a_first_holder_that_cannot_write_its_log_keeps_no_cancel_ahead(inproc, tmp_path, monkeypatch):
    """Fault: the first holder's log cannot be written when a peer's
    CANCEL of a task it has no copy of yet comes. It answers ``busy``
    (``storage``) and keeps nothing: a cancel kept ahead is a stored
    change like any other cancel (before, it was kept in memory and
    answered ``held: false`` whatever the disk)."""
    cluster = inproc(3, data_dir=str(tmp_path))
    first = cluster.ids[0]
    tid = next(t for t in (f"ahead-{i}" for i in range(1000)) if cluster.holders(t)[0] == first)
    other = cluster.holders(tid)[1]
    persistence = next(p for p in cluster[first].node.parts if p.name == "persistence")
    monkeypatch.setattr(type(persistence.writer), "writable", property(lambda self: False))

    assert cluster[first].role.cancels.serve(other, {"id": tid}) == {"busy": "storage"}
    assert cluster[first].state(tid) is None and not cluster[first].role.cancels.keyless_ahead
