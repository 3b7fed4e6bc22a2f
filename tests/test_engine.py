"""Unit tests of :class:`miyaq.core.engine.Engine`, the task state machine.

No sockets and no clock: every call gets an explicit ``now``, consumers are
:class:`FakeConsumer` objects that record what the engine asks of them, and
listeners are recorded by :class:`Recorder`. Fault tests (lost leases, stale
completions, full dead-letter queues) say in their docstring which fault
they simulate.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Any

import pytest

from miyaq.config import NodeConfig
from miyaq.errors import Busy, NotFound, ShuttingDown
from miyaq.core import invariants
from miyaq.core.attempts import retry_delay
from miyaq.core.engine import Engine
from miyaq.core.listener import EngineListener
from miyaq.protocol.commands import ACCEPTED, DUPLICATE
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.table import stone_bytes
from miyaq.store.task import (
    ALL_STATES, CANCELLED, DEAD, DONE, EXPIRED, LIVE_STATES, READY, RETRYING, RUNNING, SCHEDULED, Task,
)
from miyaq.store.task_bytes import held_bytes

T0 = 1_700_000_000.0


# -- helpers -------------------------------------------------------------------


class FakeConsumer:
    """Stands in for a worker or pull consumer: holds leased tasks, records aborts."""

    def __init__(self, name: str = "c") -> None:
        self.name = name
        self.principal = name
        self.running: dict[str, Task] = {}
        self.aborted: list[list[str]] = []

    def abort(self, ids: list[str]) -> None:
        self.aborted.append(list(ids))

    def lease_expired(self, task: Task, now: float) -> None:
        pass

    def __repr__(self) -> str:
        return f"<FakeConsumer {self.name}>"


class Recorder(EngineListener):
    """Records every duplicate run and the names of the hooks called."""

    def __init__(self) -> None:
        self.duplicates: list[tuple[str, dict[str, Any]]] = []
        self.calls: list[tuple[str, str]] = []

    def duplicate_run(self, task: Task, info: dict[str, Any]) -> None:
        self.duplicates.append((task.id, info))

    def task_finished(self, task, stone) -> None:
        self.calls.append(("finished", task.id))

    def task_dead(self, task) -> None:
        self.calls.append(("dead", task.id))


def make_engine(**settings: Any) -> Engine:
    return Engine(NodeConfig(**settings))


def task(task_id: str, queue: str = "default", **options: Any) -> Task:
    return Task(task_id, queue, "echo", b"\x92\x90\x80", **options)


def submit(engine: Engine, task_id: str, now: float = T0, **wire: Any) -> Task:
    """Submit through the wire decoder, as the node does; returns the stored task."""
    wire.setdefault("name", "echo")
    t = task_from_wire({"id": task_id, **wire}, now, engine.config)
    assert engine.submit(t, now) == (ACCEPTED, None)
    return t


def run(engine: Engine, queues: list[str], consumer: FakeConsumer, now: float) -> Task:
    """Take the next ready task and lease it to ``consumer`` (what the dispatcher does)."""
    t = engine.take(queues, now)
    assert t is not None, f"no ready task in {queues}"
    engine.start(t, consumer, now)
    return t


def state_of(engine: Engine, task_id: str) -> str:
    return engine.info(task_id)["state"]


def check_consistent(engine: Engine) -> None:
    """The engine's counters agree with its table, and nothing is negative."""
    table = engine.table
    expected: dict[str, Counter[str]] = {}
    ready_by_lane: Counter[str] = Counter()
    for t in table.live.values():
        assert t.state in LIVE_STATES, t
        expected.setdefault(t.queue, Counter())[t.state] += 1
        if t.state == READY:
            ready_by_lane[t.lane] += 1
        if t.state == RUNNING:
            assert t.consumer is not None and t.consumer.running.get(t.id) is t, t
        else:
            assert t.consumer is None, t
    for t in table.dead.values():
        assert t.state == DEAD and t.id not in table.live, t
        expected.setdefault(t.queue, Counter())[DEAD] += 1
    assert not (set(table.tombstones) & (set(table.live) | set(table.dead)))
    for queue, counts in engine.counts.items():
        for s in ALL_STATES:
            assert counts[s] >= 0, (queue, s, counts[s])
    shown = engine.queue_counts()
    for queue in set(shown) | set(expected):
        row = shown.get(queue, {})
        for s in (SCHEDULED, READY, RUNNING, RETRYING, DEAD):
            assert row.get(s, 0) == expected.get(queue, Counter())[s], (queue, s, row, expected.get(queue))
    assert sum(sum(r.values()) for r in shown.values()) == len(table.live) + len(table.dead)
    for name, lane in engine.ready.lanes.items():
        assert lane.count == ready_by_lane[name], (name, lane.count, ready_by_lane[name])
    assert all(n >= 0 for n in engine.outcomes.values())
    for key, task_id in table.keys.items():
        assert task_id in table.live or task_id in table.dead or task_id in table.tombstones, key
    assert table.payload_bytes == sum(held_bytes(t) for t in list(table.live.values()) + list(table.dead.values()))
    assert table.result_bytes == sum(stone_bytes(s.result, s.error) for s in table.tombstones.values())


# -- ordering --------------------------------------------------------------------


def test_priority_first_then_fifo_across_the_queues_asked_for():
    """take() over several queues returns the lowest priority first and, within
    a priority, the oldest submit, whichever queue it is in; other queues are untouched."""
    engine = make_engine()
    plan = [("a", 5, "a5-1"), ("b", 1, "b1-1"), ("c", 0, "c0-1"), ("a", 1, "a1-1"),
            ("b", 5, "b5-1"), ("a", 0, "a0-1"), ("b", 0, "b0-1"), ("a", 5, "a5-2"), ("b", 1, "b1-2")]
    for i, (queue, prio, tid) in enumerate(plan):
        submit(engine, tid, T0 + i * 0.001, queue=queue, priority=prio)
    order = []
    while (t := engine.take(["a", "b"], T0 + 1)) is not None:
        engine.start(t, FakeConsumer(), T0 + 1)
        order.append(t.id)
    assert order == ["a0-1", "b0-1", "b1-1", "a1-1", "b1-2", "a5-1", "b5-1", "a5-2"]
    assert engine.queue_counts()["c"][READY] == 1
    assert engine.take(["c"], T0 + 1).id == "c0-1"
    check_consistent(engine)


def test_negative_priorities_run_before_zero():
    """Priorities are signed: -5 runs before 0 before 3."""
    engine = make_engine()
    for prio in (3, 0, -5):
        submit(engine, f"p{prio}", priority=prio)
    c = FakeConsumer()
    assert [run(engine, ["default"], c, T0).id for _ in range(3)] == ["p-5", "p0", "p3"]


# -- eta and ttl -----------------------------------------------------------------


def test_eta_scheduling_with_fire_due():
    """A task with a countdown stays scheduled until fire_due reaches its eta."""
    engine = make_engine()
    submit(engine, "later", countdown=10)
    submit(engine, "now")
    submit(engine, "abs", eta=T0 + 20)
    assert state_of(engine, "later") == SCHEDULED and state_of(engine, "now") == READY
    assert engine.fire_due(T0 + 5) == T0 + 10
    assert state_of(engine, "later") == SCHEDULED
    assert engine.take(["default"], T0 + 5).id == "now"
    assert engine.take(["default"], T0 + 5) is None
    assert engine.fire_due(T0 + 10) == T0 + 20
    assert state_of(engine, "later") == READY and state_of(engine, "abs") == SCHEDULED
    assert engine.take(["default"], T0 + 10).id == "later"
    assert engine.fire_due(T0 + 25) is None
    assert engine.take(["default"], T0 + 25).id == "abs"


def test_eta_in_the_past_is_ready_at_once():
    """eta before now: the task is ready on submit, no timer needed."""
    engine = make_engine()
    submit(engine, "past", eta=T0 - 100)
    assert state_of(engine, "past") == READY


def test_ttl_expires_a_scheduled_task():
    """A scheduled task whose ttl passes before its eta expires and never becomes ready."""
    engine = make_engine()
    submit(engine, "s", countdown=60, ttl=5)
    engine.fire_due(T0 + 4.9)
    assert state_of(engine, "s") == SCHEDULED
    engine.fire_due(T0 + 5)
    assert state_of(engine, "s") == EXPIRED
    engine.fire_due(T0 + 61)
    assert engine.take(["default"], T0 + 61) is None
    assert engine.outcomes[("default", EXPIRED)] == 1
    check_consistent(engine)


def test_ttl_expires_a_ready_task():
    """A ready task nobody takes expires by its timer at its ttl."""
    engine = make_engine()
    submit(engine, "r", ttl=5)
    submit(engine, "keep")
    engine.fire_due(T0 + 4)
    assert state_of(engine, "r") == READY
    engine.fire_due(T0 + 5)
    assert state_of(engine, "r") == EXPIRED
    assert engine.take(["default"], T0 + 5).id == "keep"
    check_consistent(engine)


def test_ttl_is_checked_at_take():
    """take() does not hand out a task whose ttl passed, even if no timer fired yet."""
    engine = make_engine()
    submit(engine, "stale", ttl=1)
    submit(engine, "fresh")
    assert engine.take(["default"], T0 + 2).id == "fresh"
    assert state_of(engine, "stale") == EXPIRED
    check_consistent(engine)


def test_ttl_after_eta_still_lets_it_run():
    """A ttl longer than the countdown: the task becomes ready at its eta and runs."""
    engine = make_engine()
    submit(engine, "x", countdown=10, ttl=30)
    engine.fire_due(T0 + 10)
    assert engine.take(["default"], T0 + 11).id == "x"


# -- retries -----------------------------------------------------------------------


class _FixedRng:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("attempt,base", [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)])
def test_retry_delay_is_exponential_with_equal_jitter(attempt, base):
    """retry_delay doubles per attempt up to backoff_max; jitter keeps it in [base/2, base)."""
    t = task("x", backoff=2.0, backoff_max=10.0)
    t.attempt = attempt
    assert retry_delay(t, _FixedRng(0.0)) == base / 2
    assert retry_delay(t, _FixedRng(0.5)) == pytest.approx(base * 0.75)
    assert retry_delay(t, _FixedRng(0.999999)) < base
    rng = random.Random(attempt)
    samples = [retry_delay(t, rng) for _ in range(2000)]
    assert all(base / 2 <= d < base for d in samples)
    assert max(samples) - min(samples) > base / 4      # it really is jittered


def test_failure_retries_with_backoff_then_dead_after_max_retries():
    """FAILED (retryable) is retried after a backoff in [base/2, base); after
    max_retries retries the next failure moves the task to the dead letters."""
    engine = make_engine()
    rec = Recorder()
    engine.listeners.append(rec)
    submit(engine, "f", max_retries=2, backoff=4.0, backoff_max=100.0)
    c = FakeConsumer()
    now = T0
    for attempt, base in ((1, 4.0), (2, 8.0)):
        t = run(engine, ["default"], c, now)
        assert t.attempt == attempt
        assert engine.fail("f", attempt, {"type": "E", "message": "m"}, True, None, now)
        assert t.state == RETRYING and not c.running
        due = engine.timers.next_due()
        assert now + base / 2 <= due < now + base
        engine.fire_due(now + base / 2 - 0.001)
        assert t.state == RETRYING
        engine.fire_due(due)
        assert t.state == READY
        now = due
    run(engine, ["default"], c, now)
    assert engine.fail("f", 3, {"type": "E", "message": "last"}, True, None, now)
    assert state_of(engine, "f") == DEAD
    assert engine.table.dead["f"].error == {"type": "E", "message": "last"}
    assert ("dead", "f") in rec.calls
    assert engine.outcomes[("default", "retried")] == 2
    check_consistent(engine)


def test_failure_with_explicit_delay_and_non_retryable():
    """A delay given with FAILED replaces the backoff; retry=False dead-letters at once."""
    engine = make_engine()
    submit(engine, "d", max_retries=5)
    submit(engine, "n", max_retries=5)
    c = FakeConsumer()
    run(engine, ["default"], c, T0)
    assert engine.fail("d", 1, {"type": "Retry", "message": ""}, True, 7.0, T0)
    assert engine.timers.next_due() == T0 + 7.0
    run(engine, ["default"], c, T0)
    assert engine.fail("n", 1, {"type": "Reject", "message": ""}, False, None, T0)
    assert state_of(engine, "n") == DEAD
    engine.fire_due(T0 + 7)
    assert state_of(engine, "d") == READY


def test_failure_with_zero_delay_is_ready_at_once():
    """FAILED with delay 0 goes straight back to ready, no timer wait."""
    engine = make_engine()
    submit(engine, "z")
    run(engine, ["default"], FakeConsumer(), T0)
    engine.fail("z", 1, {"type": "E", "message": ""}, True, 0.0, T0)
    assert state_of(engine, "z") == READY


def test_at_most_once_is_never_retried():
    """at_most_once: a retryable failure, and a lost lease, both dead-letter the task."""
    engine = make_engine()
    submit(engine, "amo-fail", at_most_once=True, max_retries=5)
    submit(engine, "amo-lost", at_most_once=True, max_retries=5, timeout=10)
    c = FakeConsumer()
    run(engine, ["default"], c, T0)
    run(engine, ["default"], c, T0)
    assert engine.fail("amo-fail", 1, {"type": "E", "message": ""}, True, None, T0)
    assert state_of(engine, "amo-fail") == DEAD
    engine.fire_due(T0 + 10)
    assert state_of(engine, "amo-lost") == DEAD
    assert engine.table.dead["amo-lost"].error["type"] == "Lost"
    check_consistent(engine)


# -- leases ------------------------------------------------------------------------


def test_lease_expiry_puts_the_task_back_with_the_attempt_spent():
    """Fault: the worker holding a task goes quiet and never touches it; when
    the lease runs out the task is ready again at once, attempt 1 spent."""
    engine = make_engine()
    submit(engine, "l", timeout=10, max_retries=3)
    c1, c2 = FakeConsumer("c1"), FakeConsumer("c2")
    t = run(engine, ["default"], c1, T0)
    assert t.lease_end == T0 + 10 and c1.running == {"l": t}
    engine.fire_due(T0 + 9.99)
    assert t.state == RUNNING
    engine.fire_due(T0 + 10)
    assert t.state == READY and t.attempt == 1 and not c1.running and t.consumer is None
    assert t.error["type"] == "Lost"
    assert run(engine, ["default"], c2, T0 + 10).attempt == 2
    assert engine.outcomes[("default", "lost")] == 1
    check_consistent(engine)


def test_lease_expiry_on_the_last_attempt_dead_letters():
    """Fault: lease lost on the final allowed attempt; the task goes dead, not back."""
    engine = make_engine()
    submit(engine, "l", timeout=1, max_retries=0)
    run(engine, ["default"], FakeConsumer(), T0)
    engine.fire_due(T0 + 1)
    assert state_of(engine, "l") == DEAD


def test_touch_extends_the_lease():
    """TOUCH moves lease_end to now + timeout; the old lease end passes harmlessly."""
    engine = make_engine()
    submit(engine, "t", timeout=10)
    t = run(engine, ["default"], FakeConsumer(), T0)
    assert engine.touch("t", T0 + 8)
    assert t.lease_end == T0 + 18
    engine.fire_due(T0 + 12)
    assert t.state == RUNNING
    engine.fire_due(T0 + 18)
    assert t.state == READY
    assert not engine.touch("t", T0 + 18)          # not running any more
    assert not engine.touch("nope", T0 + 18)


def test_release_does_not_spend_an_attempt():
    """RETURN of an unstarted task: back to ready, attempt unchanged, lease timer gone."""
    engine = make_engine()
    submit(engine, "r", timeout=10, max_retries=0)
    c = FakeConsumer()
    t = run(engine, ["default"], c, T0)
    assert engine.release("r", T0 + 1)
    assert t.state == READY and t.attempt == 0 and not c.running
    engine.fire_due(T0 + 100)                     # the old lease must not fire
    assert t.state == READY
    assert run(engine, ["default"], c, T0 + 100).attempt == 1
    assert not engine.release("unknown", T0)
    check_consistent(engine)


def test_give_back_takes_only_the_current_attempt_from_its_own_lessee():
    """A consumer gives back unstarted the task it was leased (a cancelled
    receive, an HTTP caller found gone): only its own, current attempt. A
    stale give-back -- its lease ran out and the same consumer got the task
    again -- or another consumer's changes nothing."""
    engine = make_engine()
    submit(engine, "g", timeout=10, max_retries=3)
    c = FakeConsumer("c")
    t = run(engine, ["default"], c, T0)
    assert not engine.give_back("g", 1, "other", T0 + 1)
    assert not engine.give_back("g", 2, "c", T0 + 1)
    assert engine.give_back("g", 1, "c", T0 + 1)
    assert t.state == READY and t.attempt == 0
    run(engine, ["default"], c, T0 + 2)
    engine.fire_due(T0 + 20)                       # attempt 1 ran out
    assert run(engine, ["default"], c, T0 + 200).attempt == 2
    assert not engine.give_back("g", 1, "c", T0 + 201)      # the stale one
    assert t.state == RUNNING and t.attempt == 2
    assert not engine.give_back("unknown", 1, "c", T0)
    check_consistent(engine)


def test_a_consumer_that_gave_its_attempt_back_cannot_report_on_the_next_lease_of_it():
    """Fault: consumer A gives its attempt back unstarted; B is leased the
    same attempt number; then A's stale give-back and report arrive (a
    duplicated or late message). Before 2026-12-05 A's lease stayed on record:
    A released B's lease, or finished the task with its own result while B
    ran it. Now only B may act on that attempt."""
    engine = make_engine()
    submit(engine, "g", timeout=10, max_retries=3)
    a, b = FakeConsumer("a"), FakeConsumer("b")
    run(engine, ["default"], a, T0)
    assert engine.give_back("g", 1, "a", T0 + 1)
    t = run(engine, ["default"], b, T0 + 2)
    assert t.attempt == 1
    assert not engine.give_back("g", 1, "a", T0 + 3)
    assert not engine.complete("g", 1, b"from a", T0 + 3, by="a")
    assert t.state == RUNNING and t.consumer is b
    assert engine.complete("g", 1, b"from b", T0 + 4, by="b")
    assert engine.result("g").result == b"from b"
    check_consistent(engine)


def _revived_and_run_again(engine: Engine, old: FakeConsumer, new: FakeConsumer) -> Task:
    """Task ``r``: attempt 1 leased to ``old``, its lease run out (its last
    attempt: dead-lettered), revived by an operator, and attempt 1 again --
    counted from zero after the revival -- leased to ``new``."""
    submit(engine, "r", timeout=5, max_retries=1)
    run(engine, ["default"], old, T0)
    engine.fire_due(T0 + 5)
    run(engine, ["default"], FakeConsumer("between"), T0 + 5)
    engine.fire_due(T0 + 10)
    assert state_of(engine, "r") == DEAD
    assert engine.dead_retry(["r"], T0 + 11) == ["r"]
    t = run(engine, ["default"], new, T0 + 12)
    assert t.attempt == 1 and t.consumer is new
    return t


def test_a_late_failure_from_before_a_revival_does_not_end_the_run_after_it():
    """Fault: a worker's lease runs out (it was cut off, not dead), the task
    is dead-lettered, an operator revives it and another worker runs it --
    attempt 1 again, attempts counting from zero -- and then the first
    worker's FAILED of its own attempt 1 arrives. Before 2026-12-07 the
    engine took it for the current run's report (attempt 1 had been leased
    to it): the run under way was taken from its worker, which went on
    running it, and the task retried -- a second run at once -- or was
    dead-lettered. Now only the worker holding the current lease reports on
    it; the late failure changes nothing and is counted in ``not_leased``."""
    engine = make_engine()
    old, new = FakeConsumer("old"), FakeConsumer("new")
    t = _revived_and_run_again(engine, old, new)
    ignored = engine.not_leased
    assert not engine.fail("r", 1, {"type": "E", "message": "late"}, True, 0.0, T0 + 13, by="old")
    assert t.state == RUNNING and t.consumer is new and new.running == {"r": t}
    assert engine.not_leased == ignored + 1
    assert not engine.give_back("r", 1, "old", T0 + 13)      # nor gives the run under way back
    assert not engine.touch("r", T0 + 13, by="old")
    assert t.state == RUNNING and t.consumer is new
    assert engine.complete("r", 1, b"new", T0 + 14, by="new")
    assert engine.result("r").result == b"new"
    check_consistent(engine)


def test_a_late_completion_from_before_a_revival_aborts_the_run_after_it():
    """Fault: as above, but the first worker's late report is DONE: its run
    did finish, so the task is done -- and the run under way since the
    revival is a second execution, aborted and reported as a duplicate, as
    for any earlier attempt's completion. Before 2026-12-07 the engine took
    it for the current run's report: the task was done, but the second
    worker was not told to stop and no duplicate was reported."""
    engine = make_engine()
    rec = Recorder()
    engine.listeners.append(rec)
    old, new = FakeConsumer("old"), FakeConsumer("new")
    _revived_and_run_again(engine, old, new)
    assert engine.complete("r", 1, b"old", T0 + 13, by="old")
    assert engine.result("r").result == b"old"
    assert new.aborted == [["r"]] and not new.running
    assert [d[0] for d in rec.duplicates] == ["r"]
    check_consistent(engine)


def test_a_thousand_leases_running_out_together_log_a_few_lines(caplog):
    """Fault: a worker holding 1,000 tasks vanishes; their leases run out in
    one pass. Each used to log a line (thousands of lines for one fault; a
    frozen holder made 3,283 takeover lines the same way): now a few lines a
    minute name examples and the rest are counted."""
    engine = make_engine()
    c = FakeConsumer()
    for i in range(1000):
        submit(engine, f"l{i}", timeout=10, max_retries=5)
        run(engine, ["default"], c, T0)
    with caplog.at_level(logging.INFO, logger="miyaq.core.engine"):
        engine.fire_due(T0 + 11)
    assert sum(engine.info(f"l{i}")["state"] in ("retrying", "ready") for i in range(1000)) == 1000
    assert caplog.text.count("ran out (attempt 1)") <= 5, caplog.text.count("ran out (attempt 1)")


def test_stale_completion_finishes_the_task_and_aborts_the_second_run():
    """Fault: a worker's lease ran out (it was slow, not dead) and the task was
    given to a second worker; then the first reports DONE. The task is done
    with the first result, the second run is aborted, and the duplicate is
    reported to listeners."""
    engine = make_engine()
    rec = Recorder()
    engine.listeners.append(rec)
    submit(engine, "dup", timeout=5)
    slow, second = FakeConsumer("slow"), FakeConsumer("second")
    run(engine, ["default"], slow, T0)
    engine.fire_due(T0 + 5)
    run(engine, ["default"], second, T0 + 5)
    assert engine.complete("dup", 1, b"first", T0 + 6)
    stone = engine.result("dup")
    assert stone.state == DONE and stone.result == b"first"
    assert second.aborted == [["dup"]] and not second.running
    assert rec.duplicates == [("dup", {"attempt": 1, "running": 2})]
    assert not engine.complete("dup", 2, b"second", T0 + 7)    # the aborted run's late DONE
    assert engine.result("dup").result == b"first"
    check_consistent(engine)


def test_completion_of_an_earlier_attempt_while_requeued_finishes_it():
    """Fault: lease expired, task back in the queue, then the old run reports
    DONE: the task is done (it did run) and is not handed out again."""
    engine = make_engine()
    rec = Recorder()
    engine.listeners.append(rec)
    submit(engine, "q", timeout=5)
    run(engine, ["default"], FakeConsumer(), T0)
    engine.fire_due(T0 + 5)
    assert state_of(engine, "q") == READY
    assert engine.complete("q", 1, None, T0 + 6)
    assert state_of(engine, "q") == DONE
    assert engine.take(["default"], T0 + 6) is None
    assert rec.duplicates == []
    check_consistent(engine)


def test_failure_of_a_stale_attempt_is_ignored():
    """Fault: the first worker's FAILED arrives after the task was re-leased:
    it is ignored and the second run goes on."""
    engine = make_engine()
    submit(engine, "s", timeout=5, max_retries=0)
    submit(engine, "s2", timeout=5, max_retries=3)
    c1, c2 = FakeConsumer("c1"), FakeConsumer("c2")
    run(engine, ["default"], c1, T0)      # s
    run(engine, ["default"], c1, T0)      # s2
    engine.fire_due(T0 + 5)                # s dead (no retries), s2 back
    t = run(engine, ["default"], c2, T0 + 5)
    assert t.id == "s2" and t.attempt == 2
    assert not engine.fail("s2", 1, {"type": "E", "message": ""}, True, None, T0 + 6)
    assert t.state == RUNNING and c2.running == {"s2": t}
    assert not engine.fail("nope", 1, {"type": "E", "message": ""}, True, None, T0 + 6)
    assert not engine.fail("s", 1, {"type": "E", "message": ""}, True, None, T0 + 6)   # dead
    check_consistent(engine)


# -- cancel ------------------------------------------------------------------------


def _kill(engine: Engine, tid: str, queue: str = "default") -> None:
    submit(engine, tid, queue=queue, max_retries=0)
    t = run(engine, [queue], FakeConsumer(), T0)
    assert t.id == tid
    engine.fail(tid, 1, {"type": "E", "message": "no"}, False, None, T0)




def test_cancel_in_every_state():
    """cancel works on scheduled, ready, running (the consumer is told to
    abort) and dead tasks, and leaves a cancelled tombstone for each."""
    engine = make_engine()
    submit(engine, "sched", countdown=60)
    submit(engine, "ready")
    submit(engine, "run", queue="qr", max_retries=0)
    _kill(engine, "dead", "qd")
    c = FakeConsumer()
    run(engine, ["qr"], c, T0)
    assert {tid: state_of(engine, tid) for tid in ("sched", "ready", "run", "dead")} == {
        "sched": SCHEDULED, "ready": READY, "run": RUNNING, "dead": DEAD}

    for tid, state in (("sched", SCHEDULED), ("ready", READY), ("run", RUNNING), ("dead", DEAD)):
        assert engine.cancel(tid, T0 + 1) == (True, state)
        assert state_of(engine, tid) == CANCELLED
        check_consistent(engine)
    assert c.aborted == [["run"]] and not c.running
    assert engine.dead_list(None, 10) == []
    engine.fire_due(T0 + 120)
    assert engine.take(["default", "qr", "qd"], T0 + 120) is None
    assert not engine.table.live
    assert not engine.complete("run", 1, b"late", T0 + 121)    # late DONE is ignored
    assert engine.result("run").state == CANCELLED


def test_cancel_of_a_dead_task_is_seen_by_listeners():
    """Listeners (the log, replication, metrics) learn that a dead task was
    cancelled, as they learn of every other end of a task."""
    engine = make_engine()
    rec = Recorder()
    engine.listeners.append(rec)
    _kill(engine, "d")
    assert engine.cancel("d", T0 + 1) == (True, DEAD)
    assert ("finished", "d") in rec.calls
    assert engine.outcomes[("default", CANCELLED)] == 1


def test_cancel_unknown_raises_not_found_and_finished_answers_false():
    """cancel of an unknown id raises NotFound; of a finished task, (False, its state)."""
    engine = make_engine()
    with pytest.raises(NotFound):
        engine.cancel("ghost", T0)
    submit(engine, "done")
    run(engine, ["default"], FakeConsumer(), T0)
    engine.complete("done", 1, b"r", T0)
    assert engine.cancel("done", T0) == (False, DONE)
    submit(engine, "twice")
    assert engine.cancel("twice", T0) == (True, READY)
    assert engine.cancel("twice", T0) == (False, CANCELLED)


# -- idempotence and dedup ---------------------------------------------------------


def test_submit_is_idempotent_by_id_live_dead_and_tombstone():
    """Resubmitting a known id answers DUPLICATE with that id and changes nothing,
    whether the task is live, dead or finished."""
    engine = make_engine()
    submit(engine, "live", countdown=60)
    submit(engine, "dead", max_retries=0)
    submit(engine, "gone")
    c = FakeConsumer()
    for _ in range(2):
        t = run(engine, ["default"], c, T0)
        if t.id == "dead":
            engine.fail("dead", 1, {"type": "E", "message": ""}, False, None, T0)
        else:
            engine.complete(t.id, 1, b"r", T0)
    before = (dict(engine.table.live), dict(engine.table.dead), dict(engine.table.tombstones))
    for tid in ("live", "dead", "gone"):
        again = task(tid, priority=-9)
        assert engine.submit(again, T0 + 1) == (DUPLICATE, tid)
    assert (dict(engine.table.live), dict(engine.table.dead), dict(engine.table.tombstones)) == before
    assert engine.table.live["live"].priority == 0
    check_consistent(engine)


def test_key_deduplicates_inside_the_window_and_not_after():
    """A key answers DUPLICATE (with the first id) while that task is live and
    for dedup_window seconds after it finished; then a new task is accepted."""
    engine = make_engine(dedup_window=100.0, result_ttl=10.0)
    submit(engine, "k1", key="welcome")
    assert engine.submit(task("k2", key="welcome"), T0) == (DUPLICATE, "k1")
    run(engine, ["default"], FakeConsumer(), T0)
    assert engine.submit(task("k3", key="welcome"), T0 + 1) == (DUPLICATE, "k1")
    engine.complete("k1", 1, None, T0 + 10)
    assert engine.submit(task("k4", key="welcome"), T0 + 109) == (DUPLICATE, "k1")
    assert engine.submit(task("k5", key="welcome"), T0 + 110) == (ACCEPTED, None)
    assert engine.submit(task("k6", key="welcome"), T0 + 111) == (DUPLICATE, "k5")
    assert set(engine.table.live) == {"k5"}
    check_consistent(engine)


def test_key_of_a_dead_task_still_deduplicates():
    """A dead-lettered task holds its key (it can still be retried)."""
    engine = make_engine()
    submit(engine, "d", key="kk", max_retries=0)
    run(engine, ["default"], FakeConsumer(), T0)
    engine.fail("d", 1, {"type": "E", "message": ""}, False, None, T0)
    assert engine.submit(task("other", key="kk"), T0 + 10_000) == (DUPLICATE, "d")


# -- limits ------------------------------------------------------------------------


def test_busy_at_max_tasks():
    """The node holds at most max_tasks live tasks; beyond that submit raises
    Busy, duplicates are still answered, and room frees as tasks finish."""
    engine = make_engine(max_tasks=3)
    for i in range(3):
        submit(engine, f"t{i}")
    with pytest.raises(Busy):
        engine.submit(task("t3"), T0)
    assert engine.submit(task("t0"), T0) == (DUPLICATE, "t0")
    assert "t3" not in engine.table.live
    run(engine, ["default"], FakeConsumer(), T0)
    engine.complete("t0", 1, None, T0)
    assert engine.submit(task("t3"), T0) == (ACCEPTED, None)
    check_consistent(engine)


def test_busy_past_max_bytes_of_payloads_and_free_again_when_they_go():
    """Fault: producers send more payload bytes than the node may hold
    (max_bytes 1,000 here). The task that would pass the limit is refused
    BUSY (reason "bytes"); a cancelled, finished or purged task gives its
    bytes back, and the next submit is accepted. Dead letters count: they
    hold their payloads too."""
    engine = make_engine(max_bytes=1000, max_payload=400)
    for i in range(2):
        submit(engine, f"b{i}", body=b"x" * 400)
    assert engine.table.payload_bytes == 800
    with pytest.raises(Busy) as info:
        engine.submit(task_from_wire({"id": "b2", "name": "n", "body": b"y" * 201}, T0, engine.config), T0)
    assert info.value.details["reason"] == "bytes" and "max_bytes" in info.value.message
    submit(engine, "small", body=b"z" * 200)                # 1,000 exactly: still fits
    engine.cancel("small", T0)
    t = run(engine, ["default"], FakeConsumer(), T0)
    assert t.id == "b0"
    engine.fail("b0", 1, {"type": "E", "message": "no"}, False, None, T0)   # a dead letter keeps its payload
    assert engine.table.payload_bytes == 800 + len("type" "E" "message" "no")   # and its error
    engine.dead_purge(None, ["b0"])
    assert engine.table.payload_bytes == 400
    submit(engine, "b2", body=b"y" * 400)
    check_consistent(engine)


def test_busy_past_max_result_bytes_and_the_oldest_forgotten_at_twice_it():
    """Fault: workers return more result bytes than the node may keep
    (max_result_bytes 1,000 here). From the limit on, new submits are refused
    BUSY (reason "results"); results of tasks already accepted are still
    kept, but past twice the limit the oldest finished tasks are forgotten
    (counted). As results expire (result_ttl), submits are accepted again."""
    engine = make_engine(max_result_bytes=1000, max_payload=600, result_ttl=60.0, dedup_window=60.0)
    consumer = FakeConsumer()
    for i in range(5):
        submit(engine, f"r{i}")
    for i in range(2):
        t = run(engine, ["default"], consumer, T0)
        engine.complete(t.id, t.attempt, b"r" * 500, T0 + 1)
    assert engine.table.result_bytes == 1000
    with pytest.raises(Busy) as info:
        submit(engine, "refused")
    assert info.value.details["reason"] == "results"
    for i in range(3):                                      # accepted earlier: their results are kept...
        t = run(engine, ["default"], consumer, T0)
        engine.complete(t.id, t.attempt, b"r" * 500, T0 + 2)
    assert engine.table.result_bytes == 2000                # ...up to twice the limit: the oldest went
    assert engine.table.results_dropped == 1 and engine.result("r0") is None
    engine.table.sweep(T0 + 61.5)                           # r1's result expires
    assert engine.table.result_bytes == 1500
    with pytest.raises(Busy):
        submit(engine, "still-refused")
    engine.table.sweep(T0 + 62.5)
    assert engine.table.result_bytes == 0
    submit(engine, "accepted-again")
    check_consistent(engine)


def test_shutting_down_refuses_new_tasks():
    """accepting=False: a new task raises ShuttingDown, a known id is still a duplicate."""
    engine = make_engine()
    submit(engine, "known")
    engine.accepting = False
    with pytest.raises(ShuttingDown):
        engine.submit(task("new"), T0)
    assert engine.submit(task("known"), T0) == (DUPLICATE, "known")
    assert set(engine.table.live) == {"known"}
    check_consistent(engine)


def test_tombstones_are_bounded_by_count():
    """At most max_tombstones finished tasks are remembered; the oldest go
    first, and with them their dedup keys."""
    engine = make_engine(max_tombstones=5)
    for i in range(8):
        submit(engine, f"t{i}", key=f"k{i}")
        engine.cancel(f"t{i}", T0 + i)
    assert list(engine.table.tombstones) == [f"t{i}" for i in range(3, 8)]
    for i in range(3):
        with pytest.raises(NotFound):
            engine.info(f"t{i}")
        assert f"k{i}" not in engine.table.keys
    assert engine.info("t3")["state"] == CANCELLED
    assert engine.submit(task("new", key="k0"), T0 + 10) == (ACCEPTED, None)
    assert engine.submit(task("new2", key="k7"), T0 + 10) == (DUPLICATE, "t7")


def test_tombstones_are_swept_by_age():
    """sweep() drops tombstones older than max(result_ttl, dedup_window), oldest first."""
    engine = make_engine(result_ttl=50.0, dedup_window=20.0)
    for i in range(4):
        submit(engine, f"t{i}", now=T0 + i * 10, key=f"k{i}")
        engine.cancel(f"t{i}", T0 + i * 10)
    assert engine.table.sweep(T0 + 49) == 0
    assert engine.table.sweep(T0 + 60) == 2          # finished at T0 and T0+10
    assert list(engine.table.tombstones) == ["t2", "t3"]
    with pytest.raises(NotFound):
        engine.info("t0")
    assert "k0" not in engine.table.keys
    assert engine.table.sweep(T0 + 1000) == 2
    assert not engine.table.tombstones and not engine.table.keys


def test_dead_letters_are_bounded_dropping_the_oldest():
    """Fault: more tasks fail for good than the dead-letter queue holds; the
    oldest dead task is dropped, counted, and the counters stay right."""
    engine = make_engine(max_dead=3)
    c = FakeConsumer()
    for i in range(5):
        submit(engine, f"d{i}", queue="a" if i % 2 else "b", max_retries=0, key=f"k{i}")
        run(engine, ["a", "b"], c, T0)
        engine.fail(f"d{i}", 1, {"type": "E", "message": str(i)}, False, None, T0)
    assert list(engine.table.dead) == ["d2", "d3", "d4"]
    assert engine.table.dead_dropped == 2
    counts = engine.queue_counts()
    assert counts["a"][DEAD] + counts["b"][DEAD] == 3
    assert "k0" not in engine.table.keys and "k1" not in engine.table.keys
    check_consistent(engine)


# -- dead letters ------------------------------------------------------------------


def test_dead_list_retry_and_purge():
    """dead_list filters by queue and limit; dead_retry puts a task back with a
    fresh attempt count; dead_purge drops by queue or by ids."""
    engine = make_engine()
    for i in range(3):
        _kill(engine, f"a{i}", "qa")
    for i in range(2):
        _kill(engine, f"b{i}", "qb")
    assert [t["id"] for t in engine.dead_list(None, 100)] == ["a0", "a1", "a2", "b0", "b1"]
    assert [t["id"] for t in engine.dead_list("qb", 100)] == ["b0", "b1"]
    assert [t["id"] for t in engine.dead_list(None, 2)] == ["a0", "a1"]
    assert engine.dead_list(None, 1)[0]["error"] == {"type": "E", "message": "no"}

    assert engine.dead_retry(["a1", "nope", "b0"], T0 + 1) == ["a1", "b0"]
    assert state_of(engine, "a1") == READY and engine.table.live["a1"].attempt == 0
    t = run(engine, ["qa"], FakeConsumer(), T0 + 1)
    assert t.id == "a1" and t.attempt == 1
    check_consistent(engine)

    assert engine.dead_purge(None, ["a0", "nope"]) == 1
    assert engine.dead_purge("qb") == 1                  # b1 (b0 was revived)
    assert [t["id"] for t in engine.dead_list(None, 100)] == ["a2"]
    assert engine.dead_purge(None) == 1
    assert engine.dead_list(None, 100) == []
    for q in ("qa", "qb"):
        assert engine.queue_counts()[q][DEAD] == 0
    check_consistent(engine)


# -- consistency under a long random walk ------------------------------------------


def test_queue_counts_stay_consistent_over_a_random_walk():
    """A seeded random walk of 5,000 operations (submits with every option,
    take/start, done, failed, stale done/failed, touch, release, worker loss,
    cancel, time passing, dead-letter retry/purge, tombstone sweeps). After
    every step the counters match the table and none is negative; no task is
    stuck (core/invariants.py) and every stored task and tombstone passes the
    validation a peer's record passes (protocol/recordspec.py), checked every
    20 steps and at the end."""
    rng = random.Random(20240601)
    engine = make_engine(max_tasks=250, max_dead=20, max_tombstones=200, result_ttl=30.0,
                         dedup_window=15.0)
    rec = Recorder()
    engine.listeners.append(rec)
    queues = ["a", "b", "c"]
    consumers = [FakeConsumer(f"c{i}") for i in range(4)]
    ids: list[str] = []
    now = T0
    ops = Counter()

    def known() -> str:
        return rng.choice(ids) if ids and rng.random() < 0.9 else f"x{rng.randrange(10_000)}"

    def running() -> list[Task]:
        return [t for t in engine.table.live.values() if t.state == RUNNING]

    for step in range(5000):
        op = rng.choices(
            ["submit", "take", "done", "fail", "stale", "touch", "release", "lose",
             "cancel", "time", "dead_retry", "dead_purge", "sweep"],
            weights=[30, 25, 12, 8, 3, 3, 3, 2, 6, 10, 2, 1, 2])[0]
        ops[op] += 1
        if op == "submit":
            tid = rng.choice(ids) if ids and rng.random() < 0.05 else f"t{step}"
            wire: dict[str, Any] = {"queue": rng.choice(queues), "priority": rng.randrange(-2, 3),
                                    "max_retries": rng.randrange(0, 3), "timeout": rng.choice([1.0, 5.0]),
                                    "backoff": rng.choice([0.0, 0.5, 2.0])}
            if rng.random() < 0.3:
                wire["countdown"] = rng.uniform(0, 10)
            if rng.random() < 0.2:
                wire["ttl"] = rng.uniform(0.5, 8)
            if rng.random() < 0.2:
                wire["key"] = f"key{rng.randrange(15)}"
            if rng.random() < 0.1:
                wire["at_most_once"] = True
            t = task_from_wire({"id": tid, "name": "n", **wire}, now, engine.config)
            try:
                engine.submit(t, now)
            except Busy:
                assert len(engine.table.live) >= 250
            if tid not in ids:
                ids.append(tid)
        elif op == "take":
            t = engine.take(rng.sample(queues, rng.randrange(1, 4)), now)
            if t is not None:
                assert t.state == READY
                engine.start(t, rng.choice(consumers), now)
        elif op in ("done", "fail") and running():
            t = rng.choice(running())
            if op == "done":
                assert engine.complete(t.id, t.attempt, b"ok", now)
            else:
                assert engine.fail(t.id, t.attempt, {"type": "E", "message": ""}, rng.random() < 0.8,
                                   rng.choice([None, 0.0, 1.0]), now)
        elif op == "stale":
            live_runs = running()
            if live_runs and rng.random() < 0.6:      # a slow worker's report of an earlier attempt
                t = rng.choice(live_runs)
                tid, attempt = t.id, t.attempt - 1
            else:
                tid, attempt = known(), rng.randrange(0, 4)
            if rng.random() < 0.5:
                engine.complete(tid, attempt, None, now)
            else:
                engine.fail(tid, attempt, {"type": "E", "message": ""}, True, None, now)
        elif op == "touch":
            engine.touch(known(), now)
        elif op == "release" and running():
            engine.release(rng.choice(running()).id, now)
        elif op == "lose":
            c = rng.choice(consumers)           # a worker vanished: what it held goes back
            for t in list(c.running.values()):
                engine.lose(t, "worker went silent", now)
        elif op == "cancel":
            try:
                engine.cancel(known(), now)
            except NotFound:
                pass
        elif op == "time":
            now += rng.choice([0.0, 0.1, 0.5, 1.0, 3.0])
            engine.fire_due(now)
        elif op == "dead_retry" and engine.table.dead:
            engine.dead_retry(rng.sample(list(engine.table.dead), min(2, len(engine.table.dead))), now)
        elif op == "dead_purge":
            if rng.random() < 0.5:
                engine.dead_purge(rng.choice(queues))
            else:
                engine.dead_purge(None, [known()])
        elif op == "sweep":
            engine.table.sweep(now)
        check_consistent(engine)
        if step % 20 == 0:
            # Nothing waits forever, and everything stored passes validation
            # (as a peer's record would). O(n): every 20 steps.
            assert invariants.problems(engine) == [], (step, op)

    # The walk really went through the interesting states.
    finished = Counter(s.state for s in engine.table.tombstones.values())
    assert sum(engine.outcomes[(q, DEAD)] for q in queues) > 0
    assert sum(engine.outcomes[(q, "retried")] for q in queues) > 0
    assert sum(engine.outcomes[(q, EXPIRED)] for q in queues) > 0
    assert sum(engine.outcomes[(q, CANCELLED)] for q in queues) > 0
    assert finished[DONE] > 0 and rec.duplicates

    # Every ready task can still be taken: nothing is lost from the ready queues.
    ready = {t.id for t in engine.table.live.values() if t.state == READY}
    taken = set()
    while (t := engine.take(queues, now)) is not None:
        engine.start(t, consumers[0], now)
        taken.add(t.id)
    assert taken == ready
    check_consistent(engine)
    assert invariants.problems(engine) == []


# -- scale ---------------------------------------------------------------------------


def test_cancelling_100k_scheduled_tasks_leaves_nothing_and_the_timer_heap_shrinks():
    """100,000 scheduled tasks, all cancelled: no live task remains, counters
    are zero, and fire_due drops the stale timer entries."""
    engine = make_engine(max_tombstones=1000)
    n = 100_000
    for i in range(n):
        engine.submit(task(f"t{i}", eta=T0 + 3600 + i), T0)
    assert len(engine.timers) == n
    assert engine.queue_counts()["default"][SCHEDULED] == n
    for i in range(n):
        assert engine.cancel(f"t{i}", T0 + 1) == (True, SCHEDULED)
    assert not engine.table.live
    assert engine.queue_counts()["default"] == {SCHEDULED: 0, READY: 0, RUNNING: 0, RETRYING: 0, DEAD: 0}
    assert engine.fire_due(T0 + 2) is None
    assert len(engine.timers) < n
    assert len(engine.timers) == 0
    assert engine.take(["default"], T0 + 10_000) is None
    check_consistent(engine)


def test_timer_heap_compacts_when_most_entries_are_stale():
    """Cancelling most of 100,000 scheduled tasks while the earliest stays live:
    fire_due cannot drain the stale entries from the top, so it compacts the heap."""
    engine = make_engine(max_tombstones=1000)
    n, keep = 100_000, 1000
    for i in range(n):
        engine.submit(task(f"t{i}", eta=T0 + 3600 + i), T0)
    for i in range(keep, n):
        engine.cancel(f"t{i}", T0 + 1)
    assert len(engine.timers) == n
    assert engine.fire_due(T0 + 2) == T0 + 3600
    assert len(engine.timers) == keep
    engine.fire_due(T0 + 3600 + keep)
    assert engine.queue_counts()["default"][READY] == keep
    check_consistent(engine)


def test_cancelled_ready_tasks_do_not_stay_in_their_lane():
    """Bounded memory: 10,000 ready tasks in a queue no one consumes, all
    cancelled (or expired by ttl): the ready lane must not keep holding them."""
    engine = make_engine(max_tombstones=100)
    n = 10_000
    for i in range(n):
        engine.submit(task(f"c{i}", queue="idle"), T0)
        engine.submit(task(f"e{i}", queue="idle", expires=T0 + 1), T0)
    for i in range(n):
        engine.cancel(f"c{i}", T0)
    while engine.fire_due(T0 + 2) is not None:
        pass
    assert not engine.table.live
    engine.compact_lanes()   # the node's housekeeping calls this every second
    assert "idle" not in engine.ready.lanes     # an empty lane is dropped altogether


def test_finished_tasks_hold_no_payload_where_they_are_still_referenced():
    """Bounded memory: 600 tasks of 1 MiB scheduled an hour out and cancelled,
    600 ready ones expired by ttl. Their timer and lane entries are dropped
    lazily (a timer heap is compacted only when stale entries outnumber live
    ones four to one and a thousand), so until then they reference the
    finished tasks; before 2026-12-05 each still held its body: 1.2 GB
    pinned outside max_bytes with no live task. A finished task drops its
    payload, and lanes of queues with nothing ready go (3,000 queue names
    used once left 3,000 lanes)."""
    engine = make_engine(max_tombstones=100, max_bytes=2 << 30)
    body = b"x" * (1 << 20)
    kept: list[Task] = []
    for i in range(600):
        engine.submit(Task(f"s{i}", "default", "echo", body, eta=T0 + 3600), T0)
        engine.submit(Task(f"e{i}", f"q{i}", "echo", body, expires=T0 + 1), T0)
        kept += [engine.table.live[f"s{i}"], engine.table.live[f"e{i}"]]
    for i in range(600):
        engine.cancel(f"s{i}", T0)
    while engine.fire_due(T0 + 2) not in (None, T0 + 3600):
        pass
    engine.compact_lanes()
    assert not engine.table.live and engine.table.payload_bytes == 0
    assert sum(len(t.body) for t in kept) == 0
    assert not any(name.startswith("q") for name in engine.ready.lanes)
    check_consistent(engine)


def test_dead_letters_dropped_for_good_hold_no_payload_where_they_are_still_referenced():
    """Fault: a dead letter purged (DEAD purge) or evicted at ``max_dead``
    was taken out of ``payload_bytes`` but kept its body: the lease timer of
    its failed attempt, dropped lazily (up to its timeout, or until the
    heap is compacted), still referenced it -- 300 purged tasks of 1 MiB held
    299 MB with ``payload_bytes`` 0. Dropped for good, a dead letter lets go
    of its payload, as a finished task does; so does a copy handed off."""
    engine = make_engine(max_dead=2, max_bytes=2 << 30)
    body = b"x" * (1 << 20)
    consumer = FakeConsumer()
    kept: list[Task] = []
    for i in range(6):
        engine.submit(Task(f"d{i}", "default", "echo", body, max_retries=0, timeout=3600), T0)
        kept.append(run(engine, ["default"], consumer, T0))
        engine.fail(f"d{i}", 1, {"type": "E", "message": "no"}, False, None, T0)
    assert list(engine.table.dead) == ["d4", "d5"]      # d0..d3 evicted
    assert engine.dead_purge(None, ["d4"]) == 1
    assert [len(t.body) for t in kept] == [0, 0, 0, 0, 0, len(body)]
    error = len("type" "E" "message" "no")      # d5's error counts with its payload
    assert engine.table.payload_bytes == len(body) + error
    # A copy handed off to another holder (forgotten here) likewise; its timer stays, stale.
    engine.submit(Task("moved", "default", "echo", body, eta=T0 + 3600), T0)
    moved = engine.table.live["moved"]
    engine.forget(moved)
    assert moved.body == b"" and engine.table.payload_bytes == len(body) + error
    check_consistent(engine)


def test_webhook_dead_letters_evicted_or_purged_take_their_headers_out_of_max_bytes():
    """Fault: webhook tasks with 64 KB of headers each fail their only
    attempt and are dead-lettered; the oldest are evicted at ``max_dead``
    and one is purged. What the table counts for them (``held_bytes``:
    payload and headers) must go with each, as it came: counting out only
    the payload left their headers in ``payload_bytes`` for good, and a node
    refused busy (``max_bytes``) with nothing held (mutation, review37:
    both passed every test, whose dead letters had no headers)."""
    engine = make_engine(max_dead=2, max_bytes=1 << 20)
    headers = {f"X-H-{k}": "v" * 1024 for k in range(64)}
    consumer = FakeConsumer()
    for i in range(5):
        submit(engine, f"w{i}", name=None, url="https://example.com/hook", headers=headers, max_retries=0,
               timeout=3600)
        run(engine, ["@http/default"], consumer, T0)        # the webhook lane: the deliverer takes it
        engine.fail(f"w{i}", 1, {"type": "E", "message": "no"}, False, None, T0)
    assert list(engine.table.dead) == ["w3", "w4"]          # w0..w2 evicted
    assert engine.table.payload_bytes == sum(held_bytes(t) for t in engine.table.dead.values()) > 2 * 64 * 1024
    assert engine.dead_purge(None, ["w3"]) == 1
    assert engine.table.payload_bytes == held_bytes(engine.table.dead["w4"])
    assert engine.dead_purge(None, ["w4"]) == 1
    assert engine.table.payload_bytes == 0
    assert invariants.problems(engine) == []
    check_consistent(engine)


def test_counters_of_queues_made_up_by_producers_do_not_pile_up():
    """Bounded memory: producers use 1,000 queue names once each (a task
    submitted and finished in each). Once a node has seen more than 100
    queues, housekeeping drops an empty queue's counts *and* its outcome
    counters, and tells the listeners (metrics drop the queue's series); a
    queue still in use keeps its counters."""
    engine = make_engine()
    forgotten: list[str] = []

    class Listener(EngineListener):
        def queue_forgotten(self, queue: str) -> None:
            forgotten.append(queue)

    engine.listeners.append(Listener())
    submit(engine, "kept", queue="busy")
    for i in range(1000):
        submit(engine, f"m{i}", queue=f"made-up-{i}")
        engine.cancel(f"m{i}", T0)
    assert len(engine.outcomes) > 2000
    engine.compact_lanes()
    assert set(engine.counts) == {"busy"}
    assert {q for q, _ in engine.outcomes} == {"busy"}
    assert sorted(forgotten) == sorted(f"made-up-{i}" for i in range(1000))
    check_consistent(engine)


# -- listing --------------------------------------------------------------------------------

def _mixed_engine() -> Engine:
    """Tasks of three queues in every listed state: scheduled, ready, running,
    retrying, dead, and some finished (tombstones, never listed)."""
    engine = make_engine()
    consumer = FakeConsumer()
    rng = random.Random(7)
    for i in range(300):
        queue = rng.choice(["a", "b", "c"])
        kind = rng.choice(["scheduled", "ready", "running", "retrying", "dead", "done"])
        task_id = f"t{i}"
        submit(engine, task_id, queue=queue, countdown=60 if kind == "scheduled" else 0)
        if kind in ("running", "retrying", "dead", "done"):
            t = engine.table.live[task_id]
            engine.start(t, consumer, T0)
            if kind == "retrying":
                engine.fail(task_id, 1, {"type": "E", "message": ""}, True, 30.0, T0)
            elif kind == "dead":
                engine.fail(task_id, 1, {"type": "Reject", "message": ""}, False, None, T0)
            elif kind == "done":
                engine.complete(task_id, 1, None, T0)
    check_consistent(engine)
    return engine


@pytest.mark.parametrize("queue", [None, "a", "c", "nosuch"])
@pytest.mark.parametrize("state", [None, SCHEDULED, READY, RUNNING, RETRYING, DEAD, DONE])
@pytest.mark.parametrize("limit", [1, 7, 10_000])
def test_a_listing_finds_what_a_walk_of_the_whole_table_finds(queue, state, limit):
    """The listing walks only what can match (by the counts per queue and
    state) and stops at the last match, yet lists what the whole walk would:
    live tasks first, then dead ones, up to ``limit``."""
    engine = _mixed_engine()
    everything = [*engine.table.live.values(), *engine.table.dead.values()]
    matching = [t.id for t in everything
                if (queue is None or t.queue == queue) and (state is None or t.state == state)]
    listed = [header["id"] for header in engine.list_tasks(queue, state, limit)]
    assert listed == matching[:limit]
    assert state != DONE or listed == []


class _Unwalkable(dict):
    """A table that fails the test if a listing walks it."""

    def values(self):  # type: ignore[override]
        raise AssertionError("the listing walked a table it had no need to")


def test_a_listing_that_can_match_nothing_walks_nothing():
    """Fault: a reader lists a queue the node holds nothing of (or a finished
    state) on a node with a large table. The answer is empty at once: the
    table, which the node's other work would wait for, is not walked."""
    engine = _mixed_engine()
    live, dead = engine.table.live, engine.table.dead
    engine.table.live = _Unwalkable(live)
    engine.table.dead = _Unwalkable(dead)
    assert engine.list_tasks("nosuch", None, 100) == []
    assert engine.list_tasks(None, DONE, 100) == []
    engine.table.dead = dead
    assert [h["state"] for h in engine.list_tasks(None, DEAD, 10_000)] == [DEAD] * len(dead)
    engine.table.live, engine.table.dead = live, _Unwalkable(dead)
    assert [h["state"] for h in engine.list_tasks("a", READY, 10_000)] == [READY] * engine.counts["a"][READY]


def test_a_cancelled_webhook_task_held_by_its_stale_timer_keeps_no_headers():
    """Fault: a producer submits delayed webhook tasks with 540 KB of
    headers each and cancels each at once. A cancelled task stays
    referenced by its timer's stale entry until it is due (an hour here)
    or the timers are compacted (past 4,096 stale entries): it let go of
    its payload, not its headers -- 3,000 such tasks held a node at
    1,584 MiB, no task live, payload_bytes 0. Now both go, and what the
    table counts (held_bytes) goes with them; other extras stay."""
    engine = make_engine()
    headers = {f"X-Big-{k}": "v" * 8192 for k in range(64)}
    t = submit(engine, "hooked", name=None, url="https://example.com/hook", headers=headers, countdown=3600)
    assert engine.table.payload_bytes >= 64 * 8192
    assert engine.cancel("hooked", T0 + 1)[0]
    assert len(engine.timers) == 1          # the stale entry still refers to the task
    assert t.body == b"" and t.meta is None and engine.table.payload_bytes == 0
    assert t.url == "https://example.com/hook" and t.id == "hooked"
    assert invariants.problems(engine) == []
