"""Log compaction while the node goes on: the snapshot is encoded and written
in slices, other greenlets run between them, and what they change meanwhile
is appended after the snapshot's seqno -- neither lost nor applied twice at
replay (docs/durability.md, "Compaction").

``green.HUB_SLICE`` is set to 0 in these tests, and the hub made first, so a
compaction yields after every record: the interleavings are the same on any
machine and in any order of the tests, and nothing asserts on time. Fault
tests say in their docstring which fault they simulate.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.core.refusals import Refusals
from miyaq.errors import MiyaqError
from miyaq.persistence.journal import Persistence
from miyaq.protocol.commands import ACCEPTED
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import fairness
from miyaq.runtime import Supervisor
from miyaq.store.log import AppendLog
from miyaq.store.log_writer import LogWriter
from miyaq.store.records import stone_record, task_record
from miyaq.store.task import CANCELLED, DONE, Task
from test_log_replayed_state import Consumer, now_for_each_test  # noqa: F401 (autouse: T0 each test's)

pytestmark = pytest.mark.timeout(60)

T0 = time.time()     # each test's own: test_log_replayed_state.now_for_each_test


@pytest.fixture(autouse=True)
def yield_after_every_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fairness, "HUB_SLICE", 0.0)
    gevent.get_hub()     # a compaction yields only in a thread with a hub: the first test must not run without


class Ticker:
    """A greenlet that counts how often it ran: spawned before a compaction,
    it runs during one only if the compaction yields."""

    def __init__(self) -> None:
        self.ticks = 0
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self.ticks += 1
            gevent.sleep(0)

    def stop(self) -> None:
        self.greenlet.kill()


def watched(records: Iterable[dict[str, Any]], ticker: Ticker, seen: list[int]) -> Iterator[dict[str, Any]]:
    """``records``, noting the ticker's count as each one is read."""
    for record in records:
        seen.append(ticker.ticks)
        yield record


def test_a_compaction_lets_other_greenlets_run_while_it_encodes(tmp_path: Path) -> None:
    """Fault: the snapshot's records are encoded and written in one go, the
    hub held throughout: a node holding a million tasks answered nothing for
    seconds (STATUS waited 1.4 s at 200,000 live tasks; at the defaults past
    heartbeat x liveness, so its workers were declared lost). Now a greenlet
    spawned before the compaction runs while the records are read."""
    log = AppendLog(tmp_path, fsync="never", offload_fsync=False)
    assert list(log.replay()) == []
    log.append_many([{"k": i} for i in range(10)])
    ticker = Ticker()
    seen: list[int] = []
    try:
        assert log.compact(watched([{"k": i} for i in range(200)], ticker, seen)) == 10
    finally:
        ticker.stop()
    assert len(seen) == 200 and seen[-1] > seen[0]
    log.close()
    again = AppendLog(tmp_path)
    assert list(again.replay()) == [{"k": i} for i in range(200)]
    again.close()


class Counters:
    """A stand-in for a node whose changes do not commute with a snapshot:
    counters that records add to (``add``: applied twice, a count is wrong)
    and snapshots set (``set``). Its snapshot is a copy taken when asked,
    as the node's is."""

    def __init__(self, directory: Path) -> None:
        self.counts: dict[str, int] = {}
        self.log = AppendLog(directory, fsync="always", offload_fsync=False)
        apply(self.counts, self.log.replay())
        self.writer = LogWriter(self.log, self.snapshot)
        self.acked: list[str] = []

    def snapshot(self) -> Iterator[dict[str, Any]]:
        return iter([{"k": k, "set": v} for k, v in self.counts.items()])

    def add(self, k: str) -> None:
        self.counts[k] = self.counts.get(k, 0) + 1
        self.writer.add({"k": k, "add": 1})
        self.writer.after_written(lambda: self.acked.append(k))


def apply(counts: dict[str, int], records: Iterable[dict[str, Any]]) -> None:
    for record in records:
        if "set" in record:
            counts[record["k"]] = record["set"]
        else:
            counts[record["k"]] = counts.get(record["k"], 0) + record["add"]


def test_changes_made_during_a_compaction_are_acknowledged_meanwhile_and_replay_once(tmp_path: Path) -> None:
    """Fault: a compaction holds the writer: changes made while it runs wait
    for its end to be written, and their acknowledgements with them (a
    client resends a SUBMIT after ``ack_timeout``, 5 s; a compaction at the
    defaults took longer). Now they are appended between the slices,
    after the snapshot's seqno, acknowledged before the compaction ends,
    and a replay applies each exactly once."""
    node = Counters(tmp_path)
    for i in range(300):
        node.add(f"c{i % 30}")
    assert node.writer.write_pending()
    before_compaction = dict(node.counts)
    acked_when_read: list[int] = []

    def meddle() -> None:
        for i in range(40):
            node.add(f"c{i % 7}")
            node.add(f"new{i}")
            gevent.sleep(0)

    real_snapshot = node.snapshot

    def snapshot() -> Iterator[dict[str, Any]]:
        records = list(real_snapshot())           # the copy, taken now
        gevent.spawn(meddle)
        for record in records:
            acked_when_read.append(len(node.acked))
            yield record

    node.writer.snapshot = snapshot
    acked_before = len(node.acked)
    assert node.writer.compact()
    assert acked_when_read[-1] > acked_before, "no acknowledgement went out during the compaction"
    assert node.writer.write_pending()
    final = dict(node.counts)
    assert final != before_compaction
    node.writer.close()

    log = AppendLog(tmp_path)
    entries = list(log.replay_entries())
    log.close()
    snapshot_records = [e.record for e in entries if e.from_snapshot]
    assert {r["k"]: r["set"] for r in snapshot_records} == before_compaction
    replayed: dict[str, int] = {}
    apply(replayed, (e.record for e in entries))
    assert replayed == final


def durable_engine(directory: Path, config: NodeConfig) -> tuple[Engine, Persistence]:
    engine = Engine(config)
    log = AppendLog(directory, fsync="always", offload_fsync=False)
    part = Persistence(engine, log, Supervisor("test"), Refusals(), node_id=config.node_id)
    part.setup()
    return engine, part


def submit(engine: Engine, config: NodeConfig, now: float, **wire: Any) -> Task:
    task = task_from_wire({"name": "job", "body": b"\x92\x90\x80", **wire}, now, config)
    assert engine.submit(task, now)[0] == ACCEPTED
    return task


def state_records(engine: Engine) -> dict[str, dict[str, Any]]:
    """What a snapshot of this engine holds, by task id."""
    table = engine.table
    records = {task.id: task_record(task) for task in [*table.live.values(), *table.dead.values()]}
    records.update((stone.id, stone_record(stone)) for stone in table.tombstones.snapshot())
    return records


def test_tasks_submitted_finished_and_cancelled_during_a_compaction_replay_once(tmp_path: Path) -> None:
    """Fault: the node's compaction holds the hub, so no task is submitted,
    finished or cancelled while it runs. Now they are -- and the records
    of those changes, appended after the snapshot's seqno, replay once: a
    restarted node holds exactly the state the node had (the snapshot, a
    copy taken when the compaction began, does not hold them)."""
    config = NodeConfig(node_id="n")
    engine, part = durable_engine(tmp_path, config)
    for i in range(120):
        submit(engine, config, T0, id=f"t{i}", countdown=3600 if i % 2 else 0)
    assert part.writer.write_pending()
    at_start = state_records(engine)
    compactions: list[int] = []
    consumer = Consumer()

    def meddle() -> None:
        compactions.append(part.log.stats()["compactions"])
        for i in range(10):
            submit(engine, config, T0, id=f"new{i}")     # due at once, at replay too
            assert engine.cancel(f"t{2 * i + 1}", T0 + 1)[0]        # delayed ones
            task = engine.take(["default"], T0 + 1)
            assert task is not None and task.id.startswith("t")
            engine.start(task, consumer, T0 + 1)
            assert engine.complete(task.id, task.attempt, b"ok", T0 + 1)
            gevent.sleep(0)
        compactions.append(part.log.stats()["compactions"])

    meddler = gevent.spawn(meddle)
    assert part.writer.compact()
    meddler.get()
    assert compactions == [0, 0], "the changes were not made during the compaction"
    assert part.writer.write_pending()
    expected = state_records(engine)
    assert expected != at_start
    part.stop()

    log = AppendLog(tmp_path)
    entries = list(log.replay_entries())
    log.close()
    in_snapshot = {e.record["id"] for e in entries if e.from_snapshot}
    assert in_snapshot == set(at_start)                          # the copy taken at the start
    again, part2 = durable_engine(tmp_path, config)
    assert state_records(again) == expected
    states = {task_id: record.get("state") for task_id, record in expected.items()}
    assert [states[f"t{2 * i + 1}"] for i in range(10)] == [CANCELLED] * 10
    assert sum(state == DONE for state in states.values()) == 10
    assert all(f"new{i}" in again.table.live for i in range(10))
    part2.stop()


def test_closing_the_log_stops_a_compaction_in_progress(tmp_path: Path) -> None:
    """Fault: the node stops (its log closes) while a compaction, which now
    yields, is writing its snapshot: it must not go on to delete segments of
    a closed log, which another process may already have opened. Now it
    stops at its next slice; the log replays to the state it held."""
    log = AppendLog(tmp_path, fsync="always", offload_fsync=False)
    assert list(log.replay()) == []
    log.append_many([{"k": i} for i in range(5)])

    halfway = gevent.event.Event()
    closer = gevent.spawn(lambda: (halfway.wait(), log.close()))   # the hub exists before the compaction

    def records() -> Iterator[dict[str, Any]]:
        for i in range(50):
            if i == 10:
                halfway.set()
            yield {"snapshot": i}

    with pytest.raises(MiyaqError, match="closed during a compaction"):
        log.compact(records())
    closer.get()
    assert log.stats()["compaction_errors"] == 1
    assert not list(tmp_path.glob("snap-*"))
    again = AppendLog(tmp_path)
    assert list(again.replay()) == [{"k": i} for i in range(5)]
    again.close()


def test_the_node_s_snapshot_is_the_state_when_it_was_taken(tmp_path: Path) -> None:
    """Fault: the node's snapshot read each task when its record was encoded,
    not when the compaction began: with a compaction that yields, a task
    started, failed or retried meanwhile would be in the snapshot as it is
    after the change *and* have its change's record replayed after it
    (applied twice). Now the table is copied when the snapshot is taken;
    changes made after it, in place ones included (a task's error), do not
    show in its records."""
    config = NodeConfig(node_id="n")
    engine, part = durable_engine(tmp_path, config)
    for i in range(3):
        submit(engine, config, T0, id=f"t{i}", key=f"k{i}", max_retries=5)
    taken = engine.take(["default"], T0)
    assert taken is not None
    engine.start(taken, Consumer(), T0)
    assert engine.fail(taken.id, taken.attempt, {"type": "Boom", "message": "first"}, True, None, T0)
    assert part.writer.write_pending()
    expected = [task_record(task) for task in engine.table.live.values()]

    records = part.snapshot()
    again = engine.take(["default"], T0 + 1)        # t1: started
    assert again is not None and again.id == "t1"
    engine.start(again, Consumer(), T0 + 1)
    taken.error = {"type": "Boom", "message": "changed in place"}
    assert engine.cancel("t2", T0 + 1)[0]
    submit(engine, config, T0 + 1, id="t3")
    assert list(records) == expected
    part.stop()


def test_a_log_that_fails_during_a_compaction_after_appends_stays_failed(tmp_path: Path) -> None:
    """Fault: records are appended while a compaction runs, then an fsync of
    their segment fails; the finished snapshot cleared the failure (it is how
    a failed log recovers), so the log took the failed records for durable
    although their writeback may be lost. Now the failure stays until a
    snapshot taken after them (the owner's recovery)."""
    log = AppendLog(tmp_path, fsync="always", offload_fsync=False)
    assert list(log.replay()) == []
    log.append_many([{"k": i} for i in range(5)])
    calls = [0]

    def between() -> None:
        calls[0] += 1
        if calls[0] == 2:
            log.append({"k": "after"})
            log._committer.fail(OSError(5, "Input/output error"))

    assert log.compact(iter([{"snap": i} for i in range(20)]), between=between) == 5
    assert log.failure is not None and not log.writable
    assert log.compact([{"snap": "all"}]) == 6        # the recovery: state rewritten from memory
    assert log.failure is None and log.writable
    log.close()
    again = AppendLog(tmp_path)
    assert list(again.replay()) == [{"snap": "all"}]
    again.close()
