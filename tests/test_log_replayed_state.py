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
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from engine_doubles import LeasingConsumer

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.core.refusals import Refusals
from miyaq.persistence import journal
from miyaq.persistence.journal import Persistence
from miyaq.persistence.replay import replay
from miyaq.protocol.commands import ACCEPTED, DUPLICATE
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import Supervisor
from miyaq.store.log import AppendLog
from miyaq.store.task import DEAD, DONE, READY, RETRYING, Task

pytestmark = pytest.mark.timeout(60)

T0 = time.time()     # each test's own: see now_for_each_test


@pytest.fixture(autouse=True)
def now_for_each_test(request: pytest.FixtureRequest) -> None:
    """The ``T0`` of the test's module is the wall clock when each test
    starts (autouse here, and where a module imports it). The replay reads
    the wall clock itself (tombstones older than ``result_ttl`` are
    dropped), and a ``T0`` read at import is as old as the suite when xdist
    runs the file late in it: a whole-suite run failed so, a ``result_ttl``
    of 60 s passed."""
    request.module.T0 = time.time()


def Consumer() -> LeasingConsumer:
    return LeasingConsumer("consumer")


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


def run_and_fail(engine: Engine, now: float) -> Task:
    """The next ready task starts and fails for good (not retryable): dead."""
    task = engine.take(["default"], now)
    assert task is not None
    engine.start(task, Consumer(), now)
    assert engine.fail(task.id, task.attempt, {"type": "Boom", "message": "no"}, False, None, now)
    return task


def restarted(directory: Path, config: NodeConfig, part: Persistence, stop: str,
              now: float) -> tuple[Engine, Persistence]:
    """Stop (cleanly, or as a kill -9 leaves the log) and start again on the log."""
    written(part)
    if stop == "clean":
        part.stop()
    else:
        part.log.close()
    return durable_engine(directory, config, now)


@pytest.mark.parametrize("stop", ["clean", "kill-9"])
def test_a_full_dead_letter_queue_drops_the_letter_that_died_first_after_a_restart_too(
        tmp_path: Path, stop: str) -> None:
    """Fault: with ``max_dead`` 3, d0, d1 and d2 die; d0 is retried from the
    dead letters and dies again, so d1 died first. After a restart the
    replay put the dead letters back by their ``created`` stamps, d0 first:
    the next death dropped d0, the letter that died last (docs/semantics.md:
    "the one that died first"). Now the log's order is kept: d1 goes."""
    config = NodeConfig(node_id="n", max_dead=3)
    engine, part = durable_engine(tmp_path, config, T0)
    for i in range(3):
        submit(engine, config, T0, id=f"d{i}", max_retries=0)
    for _ in range(3):
        run_and_fail(engine, T0)
    assert engine.dead_retry(["d0"], T0 + 1) == ["d0"]
    assert run_and_fail(engine, T0 + 1).id == "d0"
    again, part2 = restarted(tmp_path, config, part, stop, T0 + 2)
    submit(again, config, T0 + 2, id="d3", max_retries=0)
    run_and_fail(again, T0 + 2)
    assert list(again.table.dead) == ["d2", "d0", "d3"]
    part2.stop()


@pytest.mark.parametrize("stop", ["clean", "kill-9"])
def test_dead_letters_a_restart_drops_past_a_lower_max_dead_stay_dropped(tmp_path: Path, stop: str) -> None:
    """Fault: five dead letters with keys k0..k4; the node restarts with
    ``max_dead`` 2 and keeps d3 and d4 -- silently, and without logging the
    drop, so a restart with ``max_dead`` 5 brought d0..d2 back, d0 holding
    key k0 that a new task had taken meanwhile. Now the drop is logged (a
    warning naming them) and journaled: they stay dropped."""
    config = NodeConfig(node_id="n", max_dead=5)
    engine, part = durable_engine(tmp_path, config, T0)
    for i in range(5):
        submit(engine, config, T0, id=f"d{i}", key=f"k{i}", max_retries=0)
    for _ in range(5):
        run_and_fail(engine, T0)
    lower = NodeConfig(node_id="n", max_dead=2)
    smaller, part2 = restarted(tmp_path, lower, part, stop, T0 + 1)
    assert list(smaller.table.dead) == ["d3", "d4"]
    submit(smaller, lower, T0 + 1, id="new0", key="k0", countdown=3600)
    larger, part3 = restarted(tmp_path, config, part2, stop, T0 + 2)
    assert list(larger.table.dead) == ["d3", "d4"]
    assert larger.table.holder_of_key("k0", T0 + 2, config.dedup_window) == "new0"
    part3.stop()


@pytest.mark.parametrize("stop", ["clean", "kill-9"])
def test_a_task_running_its_last_attempt_when_the_node_restarts_is_dead_not_run_again(
        tmp_path: Path, stop: str) -> None:
    """Fault: a task with ``max_retries=0`` runs its one attempt (and one with
    ``max_retries=1`` its second) when the node stops. The restart made both
    ready and they started again -- attempts 2 and 3, past "at most
    ``max_retries + 1`` starts". Now, as for a lease lost on a running node,
    a task with no attempt left comes back dead-lettered as ``Lost``; one
    with attempts left comes back ready, its attempt spent."""
    config = NodeConfig(node_id="n")
    engine, part = durable_engine(tmp_path, config, T0)
    submit(engine, config, T0, id="last", max_retries=0)
    submit(engine, config, T0, id="second", max_retries=1)
    submit(engine, config, T0, id="spare", max_retries=3)
    consumer = Consumer()
    for _ in range(3):
        engine.start(engine.take(["default"], T0), consumer, T0)
    second = engine.table.live["second"]
    engine.lose(second, "the worker vanished", T0)             # its first attempt lost: ready again
    engine.start(engine.take(["default"], T0), consumer, T0)    # its second, and last
    again, part2 = restarted(tmp_path, config, part, stop, T0 + 1)
    for task_id in ("last", "second"):
        info = again.info(task_id)
        assert info["state"] == DEAD and info["error"]["type"] == "Lost", info
        assert "last attempt" in info["error"]["message"]
    assert again.info("spare")["state"] == READY and again.info("spare")["attempt"] == 1
    part2.stop()


@pytest.mark.parametrize("stop", ["clean", "kill-9"])
def test_a_retried_task_stays_at_the_back_of_its_queue_after_a_restart(tmp_path: Path, stop: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: r0, r1, r2 wait; r0 is taken and given back for a retry with
    no delay, so it waits behind r1 and r2 ("Not across retries",
    docs/semantics.md). After a restart it was first again (restored by its
    ``created`` stamp). Now a task's place is its latest record's; delayed
    tasks that fell due meanwhile come after, in eta order."""
    config = NodeConfig(node_id="n")
    engine, part = durable_engine(tmp_path, config, T0)
    submit(engine, config, T0, id="late", countdown=30)
    submit(engine, config, T0, id="early", countdown=20)
    for i in range(3):
        submit(engine, config, T0, id=f"r{i}")
    r0 = engine.take(["default"], T0)
    assert r0 is not None and r0.id == "r0"
    engine.start(r0, Consumer(), T0)
    assert engine.fail("r0", 1, {"type": "Again", "message": ""}, True, 0.0, T0)
    monkeypatch.setattr(journal, "wall", lambda: T0 + 60)      # the restart comes a minute later
    again, part2 = restarted(tmp_path, config, part, stop, T0 + 60)
    order = [again.take(["default"], T0 + 60) for _ in range(5)]
    assert [t.id for t in order if t is not None] == ["r1", "r2", "r0", "early", "late"]
    part2.stop()


@pytest.mark.parametrize("stop", ["clean", "kill-9"])
def test_a_task_mid_backoff_a_revived_dead_letter_and_an_id_used_again_come_back_as_they_were(
        tmp_path: Path, stop: str) -> None:
    """Fault: a restart while one task waits out its retry backoff, one was
    dead-lettered and revived, and an id whose tombstone ``max_tombstones``
    pushed out was submitted again. Each comes back as it was: still
    retrying, at the same eta; ready with no attempt spent; live, not the
    older task's tombstone (mutations, each of which passed every test: a
    retrying task came back ready, its backoff lost; the older finish took
    the id back, and the accepted task was gone)."""
    config = NodeConfig(node_id="n", max_tombstones=1)
    engine, part = durable_engine(tmp_path, config, T0)
    consumer = Consumer()
    for task_id, retries in (("backoff", 3), ("revived", 0), ("again", 0), ("other", 0)):
        submit(engine, config, T0, id=task_id, max_retries=retries)
        engine.start(engine.take(["default"], T0), consumer, T0)
    assert engine.fail("backoff", 1, {"type": "E", "message": "later"}, True, 600.0, T0)
    assert engine.fail("revived", 1, {"type": "E", "message": "no"}, True, None, T0)
    assert engine.dead_retry(["revived"], T0 + 1) == ["revived"]
    assert engine.complete("again", 1, b"old", T0 + 1)
    assert engine.complete("other", 1, None, T0 + 2)            # pushes out "again"'s tombstone
    assert engine.table.tombstone("again") is None
    submit(engine, config, T0 + 3, id="again", countdown=3600)
    before = {task_id: engine.info(task_id) for task_id in ("backoff", "revived", "again")}
    assert before["backoff"]["state"] == RETRYING and before["revived"]["attempt"] == 0

    again, part2 = restarted(tmp_path, config, part, stop, T0 + 4)
    for task_id, info in before.items():
        after = again.info(task_id)
        assert {k: after[k] for k in ("state", "attempt", "eta")} == \
            {k: info[k] for k in ("state", "attempt", "eta")}, task_id
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


def test_a_logged_record_without_a_string_id_is_refused_and_counted(tmp_path: Path) -> None:
    """Fault: whole records (their checksums hold) of this build's kinds whose
    ``id`` is missing or not a string -- a bug, another build. Before
    2026-12-07 they were skipped silently: no line, nothing in
    ``records_refused``, though docs/durability.md says every record a
    replay refuses is logged and counted. Now each is refused under ``log``;
    the rest replays, and a record of an unknown kind without an id (a later
    build's) is still ignored."""
    log = AppendLog(tmp_path, fsync="always", offload_fsync=False)
    assert not list(log.replay())
    log.append_many([{"o": "A", "id": 5, "name": "job", "queue": "default"},
                     {"o": "F", "state": DONE, "at": T0, "queue": "default", "attempt": 1},
                     {"o": "S", "id": None, "attempt": 1},
                     {"o": "Z", "later": True},
                     {"o": "F", "id": "good", "state": DONE, "at": T0, "queue": "default", "attempt": 1}])
    log.close()
    engine, refusals = Engine(NodeConfig(node_id="n")), Refusals()
    log = AppendLog(tmp_path, fsync="always", offload_fsync=False)
    replay(engine, log, T0 + 1, refusals)
    log.close()
    assert engine.table.tombstone("good") is not None
    assert refusals.by_source() == {"log": 3}


def test_a_replay_does_not_hold_the_results_of_tombstones_already_too_old(tmp_path: Path) -> None:
    """Fault: the log holds many finished tasks' records whose tombstones are
    older than ``result_ttl`` (a node down for longer, or its compactions
    failing on a nearly full disk, so its log grows). The replay held every
    one of them, results included, until its end -- 10,000 of 4 KiB: a peak
    above 40 MB of Python memory to restore none. Now one already too old is
    dropped as it is read (what the restore did with it anyway)."""
    log = AppendLog(tmp_path, fsync="never", offload_fsync=False)
    assert not list(log.replay())
    old = T0 - 7200
    for start in range(0, 10_000, 1000):
        log.append_many([{"o": "F", "id": f"t{i}", "state": DONE, "at": old, "queue": "default", "attempt": 1,
                          "result": b"r" * 4096} for i in range(start, start + 1000)])
    log.append_many([{"o": "F", "id": "recent", "state": DONE, "at": T0, "queue": "default", "attempt": 1,
                      "result": b"kept"}])
    log.close()
    engine = Engine(NodeConfig(node_id="n", result_ttl=3600.0))
    log = AppendLog(tmp_path, fsync="never", offload_fsync=False)
    tracemalloc.start()
    try:
        replayed = replay(engine, log, T0 + 1, Refusals())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        log.close()
    assert replayed.records == 10_001 and replayed.tombstones == 1
    assert engine.result("recent") is not None and engine.result("t0") is None
    assert peak < 20_000_000, peak
