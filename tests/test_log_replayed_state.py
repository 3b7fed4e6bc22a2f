"""What a node restarted on its log rebuilds, after the less common moves:
a task given back unstarted, a dedup key held by a live task while an
older task with the same key finished (docs/durability.md).

Each test drives a real :class:`~miyaq.core.engine.Engine` with the node's
durability part (:class:`~miyaq.persistence.journal.Persistence`) on a real
log in a temporary directory, stops it as a node does (or leaves it as a
kill -9 would), and replays the log into a new engine: what a restarted
node would hold. No sockets. Every call gets an explicit ``now`` near the
wall clock's, which the replay reads (tombstones older than ``result_ttl``
are not restored).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.core.refusals import Refusals
from miyaq.persistence.journal import Persistence
from miyaq.protocol.commands import ACCEPTED, DUPLICATE
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import Supervisor
from miyaq.store.log import AppendLog
from miyaq.store.task import DONE, READY, Task

pytestmark = pytest.mark.timeout(60)

T0 = time.time()     # read at import: tests here stay far inside result_ttl of it


class Consumer:
    """A pull consumer as the engine sees one: a principal and its leases."""

    principal = "consumer"

    def __init__(self) -> None:
        self.running: dict[str, Task] = {}

    def abort(self, ids: list[str]) -> None:
        pass

    def lease_expired(self, task: Task, now: float) -> None:
        pass


def durable_engine(directory: Path, config: NodeConfig, now: float) -> tuple[Engine, Persistence]:
    engine = Engine(config)
    log = AppendLog(directory, fsync="always", offload_fsync=False)
    part = Persistence(engine, log, Supervisor("test"), Refusals(), node_id=config.node_id)
    part.setup()
    return engine, part


def written(part: Persistence) -> None:
    """Everything buffered is in the log (what the writer greenlet does)."""
    assert part.writer.write_pending()


def submit(engine: Engine, config: NodeConfig, now: float, **wire: Any) -> Task:
    task = task_from_wire({"name": "job", "body": b"\x92\x90\x80", **wire}, now, config)
    assert engine.submit(task, now)[0] == ACCEPTED
    return task


@pytest.mark.parametrize("stop", ["clean", "kill-9"])
def test_a_task_given_back_unstarted_comes_back_ready(tmp_path: Path, stop: str) -> None:
    """A consumer leases two tasks and gives both back unstarted (NACK
    ``returned``, a stopping worker's RETURN, a pull consumer gone before it
    read its task): no attempt spent, both ready. Before, the log said only
    that they had started, so a restarted node took them for running: the
    at-most-once one came back dead ("the node restarted while this
    at-most-once task ran" -- it never ran), the other with an attempt spent."""
    config = NodeConfig(node_id="n")
    engine, part = durable_engine(tmp_path, config, T0)
    once = submit(engine, config, T0, id="once", at_most_once=True)
    plain = submit(engine, config, T0, id="plain")
    consumer = Consumer()
    for task in (once, plain):
        taken = engine.take(["default"], T0)
        assert taken is task
        engine.start(taken, consumer, T0)
    written(part)
    assert engine.release("once", T0 + 1) and engine.release("plain", T0 + 1)
    written(part)
    if stop == "clean":
        part.stop()
    else:
        part.log.close()           # what is on disk, as a kill -9 leaves it

    again, part2 = durable_engine(tmp_path, config, T0 + 2)
    for task_id in ("once", "plain"):
        info = again.info(task_id)
        assert (info["state"], info["attempt"]) == (READY, 0), info
    part2.stop()


@pytest.mark.parametrize("stop", ["clean", "kill-9"])
def test_tasks_accepted_across_a_clock_step_back_come_back_in_the_order_they_were_accepted(
        tmp_path: Path, stop: str) -> None:
    """Fault: the wall clock is stepped back a minute between two batches of
    submits, so the second batch's ``created`` stamps are older than the
    first's. The replay sorted the tasks by ``created``: after a restart the
    second batch ran first, against the acceptance order docs/semantics.md
    ("Ordering") promises. Now the log's own order is kept."""
    config = NodeConfig(node_id="n")
    engine, part = durable_engine(tmp_path, config, T0)
    ids = [submit(engine, config, T0, id=f"first-{i}").id for i in range(3)]
    ids += [submit(engine, config, T0 - 60, id=f"second-{i}").id for i in range(3)]
    written(part)
    if stop == "clean":
        part.stop()
    else:
        part.log.close()

    again, part2 = durable_engine(tmp_path, config, T0 + 1)
    taken = [again.take(["default"], T0 + 1) for _ in ids]
    assert [t.id for t in taken if t is not None] == ids
    part2.stop()


def test_a_finished_tasks_key_stays_with_the_live_task_that_holds_it(tmp_path: Path) -> None:
    """A task with dedup key K finishes; its dedup window passes; a new task
    with K is accepted and waits. After a restart the finished one's tombstone
    (kept for its result) used to take K back from the live task, so once the
    old window had passed a third submit with K was accepted beside the
    second: two live tasks with one key."""
    config = NodeConfig(node_id="n", dedup_window=1.0, result_ttl=3600.0)
    engine, part = durable_engine(tmp_path, config, T0)
    first = submit(engine, config, T0, id="first", key="K")
    consumer = Consumer()
    engine.start(engine.take(["default"], T0), consumer, T0)
    assert engine.complete("first", 1, None, T0 + 1)
    second = submit(engine, config, T0 + 5, id="second", key="K", countdown=3600)
    assert engine.table.holder_of_key("K", T0 + 5, config.dedup_window) == second.id
    part.stop()

    again, part2 = durable_engine(tmp_path, config, T0 + 10)
    assert again.result(first.id) is not None and again.result(first.id).state == DONE
    third = task_from_wire({"id": "third", "name": "job", "body": b"\x92\x90\x80", "key": "K"}, T0 + 10, config)
    assert again.submit(third, T0 + 10) == (DUPLICATE, second.id)
    part2.stop()


def test_another_holders_finish_of_an_unknown_copy_leaves_a_live_tasks_key(tmp_path: Path) -> None:
    """In a cluster, a holder hears that a task it never stored finished
    elsewhere (its copy never arrived); it keeps a tombstone so a late copy
    cannot come back. That tombstone must not take a dedup key a live task
    here holds."""
    config = NodeConfig(node_id="n")
    engine = Engine(config)
    live = submit(engine, config, T0, id="live", key="K", countdown=3600)
    engine.finish_copy("elsewhere", DONE, None, None, T0 + 1, key="K")
    assert engine.table.tombstone("elsewhere") is not None
    assert engine.table.holder_of_key("K", T0 + 2, config.dedup_window) == live.id


def test_dead_letters_past_max_dead_stay_dropped_after_a_restart(tmp_path: Path) -> None:
    """Four tasks dead-lettered with ``max_dead`` 2: the two oldest dropped.
    Before 2026-12-05 the drop was not logged: a restart brought all four
    back, dropped two again (the newest by creation, not by death), and the
    queue's count stayed at four for good -- STATUS and the metrics wrong,
    and the queue never forgotten after a purge."""
    config = NodeConfig(node_id="n", max_dead=2)
    engine, part = durable_engine(tmp_path, config, T0)
    consumer = Consumer()
    for i, task_id in enumerate(["d3", "d2", "d1", "d0"]):      # created in this order, die in it
        submit(engine, config, T0 + i, id=task_id)
        engine.start(engine.take(["default"], T0 + i), consumer, T0 + i)
        assert engine.fail(task_id, 1, {"type": "E", "message": "no"}, False, None, T0 + i)
    assert list(engine.table.dead) == ["d1", "d0"]
    part.stop()

    again, part2 = durable_engine(tmp_path, config, T0 + 10)
    assert list(again.table.dead) == ["d1", "d0"]
    assert again.queue_counts()["default"]["dead"] == 2
    assert again.dead_purge("default") == 2
    assert "default" not in again.queue_counts() or again.queue_counts()["default"]["dead"] == 0
    part2.stop()
