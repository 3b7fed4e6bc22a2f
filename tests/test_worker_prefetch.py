"""The default prefetch (miyaq.worker.prefetch): a worker holds more tasks
while they are short, and takes the extra back when they grow longer; a
worker given --prefetch holds exactly concurrency + prefetch."""
from __future__ import annotations

from typing import Any

import pytest

from apps import basic
from miyaq.testing.harness import wait_for
from miyaq.worker import prefetch
from miyaq.worker.config import WorkerConfig
from miyaq.worker.prefetch import ExtraCredit, RunTimes


def _runs(*seconds: float) -> RunTimes:
    times = RunTimes()
    for s in seconds:
        times.add(s)
    return times


# -- the arithmetic ----------------------------------------------------------------------

def test_capacity_is_sixteen_times_concurrency_by_default_and_exact_with_prefetch():
    assert WorkerConfig(concurrency=8).base_credit == 16
    assert WorkerConfig(concurrency=8).capacity == 16 * 8
    assert WorkerConfig(concurrency=8, prefetch=0).capacity == 8
    assert WorkerConfig(concurrency=8, prefetch=24).capacity == 32


def test_the_extra_holds_about_prefetch_time_of_work_in_multiples_of_the_concurrency(monkeypatch):
    monkeypatch.setattr(prefetch, "PREFETCH_TIME", 0.005)
    extra = ExtraCredit(slots=8, base=16, capacity=64)
    assert extra.target(RunTimes()) == 0                      # nothing ran yet
    assert extra.target(_runs(0.000_010)) == 48               # no-ops: the cap
    assert extra.target(_runs(0.001)) == 24                   # 40 held -> 24 beyond 16, whole eights
    assert extra.target(_runs(0.0025)) == 0                   # 16 held: the base is enough
    assert extra.target(_runs(0.5)) == 0
    assert ExtraCredit(slots=8, base=16, capacity=16).target(_runs(0.000_010)) == 0   # --prefetch: fixed


def test_large_bodies_bound_the_extra(monkeypatch):
    """Short tasks with large bodies: the extra holds at most PREFETCH_BYTES
    of them (the base 2 x concurrency is not bound by it)."""
    monkeypatch.setattr(prefetch, "PREFETCH_BYTES", 8 * 1024 * 1024)
    extra = ExtraCredit(slots=8, base=16, capacity=128)
    quick = RunTimes()
    quick.add(0.000_010, 100)
    assert extra.target(quick) == 112                          # the cap
    large = RunTimes()
    large.add(0.000_010, 256 * 1024)
    assert extra.target(large) == 16                           # 32 bodies of 256 KiB: 8 MiB
    huge = RunTimes()
    huge.add(0.000_010, 1024 * 1024)
    assert extra.target(huge) == 0


@pytest.mark.parametrize("slots, capacity", [(8, 128), (1, 16), (3, 48), (8, 64), (8, 60)])
def test_the_quick_check_after_each_task_agrees_with_the_target(slots, capacity):
    """``at_most`` (checked after every task instead of working out the
    target) says "nothing to do" only where ``adjust`` would do nothing: run
    times and body sizes on both sides of the limits, extras at and below the
    most, growth allowed or not. (A most that is not whole multiples of the
    slots -- capacity 60 -- never takes the quick way.)"""
    base = 2 * slots
    means = [1e-7, 1e-5, 1e-4] + [prefetch.PREFETCH_TIME * slots / capacity * f
                                  for f in (0.5, 0.98, 0.99, 0.995, 1.0, 1.01, 2.0)]
    sizes = [0, 100] + [prefetch.PREFETCH_BYTES / capacity * f for f in (0.98, 0.99, 1.0, 1.01)]
    quick = 0
    for mean in means:
        for size in sizes:
            times = RunTimes()
            times.add(mean, int(size))
            for start in {capacity - base, capacity - base - slots, 0}:
                for may_grow in (False, True):
                    extra = ExtraCredit(slots, base, capacity)
                    extra.extra = max(0, start)
                    if extra.at_most(times):
                        quick += 1
                        assert extra.target(times) == extra.extra == extra.most
                        assert extra.adjust(extra.target(times), may_grow) == 0
                        assert (extra.extra, extra.withhold) == (extra.most, 0)
    if (capacity - base) % slots == 0:
        assert quick > 0            # short, small tasks at the most do take the quick way
    else:
        assert quick == 0


def test_growing_grants_only_when_the_backlog_ran_dry_and_shrinking_withholds():
    extra = ExtraCredit(slots=2, base=4, capacity=16)
    assert extra.adjust(12, may_grow=False) == 0 and extra.extra == 0
    assert extra.adjust(12, may_grow=True) == 12
    extra.granted(12)
    assert extra.adjust(12, may_grow=True) == 0                # there already
    assert extra.adjust(4, may_grow=False) == 0 and extra.withhold == 8 and extra.extra == 4
    assert [extra.take_withhold() for _ in range(9)] == [True] * 8 + [False]
    # Growing again before the withholds are spent cancels them first.
    extra.adjust(0, may_grow=False)
    assert extra.withhold == 4
    assert extra.adjust(6, may_grow=True) == 2 and extra.withhold == 0 and extra.extra == 4
    extra.granted(2)
    assert extra.extra == 6


def test_a_ready_counts_tasks_held_beyond_the_base_as_extra():
    extra = ExtraCredit(slots=2, base=4, capacity=16)
    extra.adjust(0, may_grow=False)
    extra.withhold = 3
    extra.registered(held=10)
    assert (extra.extra, extra.withhold) == (6, 0)
    extra.registered(held=2)
    assert extra.extra == 0
    extra.registered(held=40)                                  # never beyond the cap
    assert extra.extra == 12


# -- a worker and a node -------------------------------------------------------------------

def _row(client: Any) -> dict[str, Any] | None:
    rows = client.status()["workers"]
    return rows[0] if rows else None


def _credit_settles_at(client: Any, credit: int, what: str) -> None:
    wait_for(lambda: (row := _row(client)) is not None and row["running"] == 0 and row["credit"] == credit,
             what=what)


def _short_tasks_on(node: Any, client: Any, thread_worker: Any, monkeypatch: Any, capacity: int,
                    **options: Any) -> None:
    """A worker of concurrency 2 (with ``options``) runs 40 no-op tasks, every
    one counted as short; its READY said ``capacity``."""
    monkeypatch.setattr(prefetch, "PREFETCH_TIME", 60.0)
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2, **options)
    for h in [client.submit("echo", [i]) for i in range(40)]:
        h.result(timeout=30)
    row = _row(client)
    assert row is not None and row["capacity"] == capacity


def test_a_worker_with_short_tasks_grants_extra_credit_up_to_its_capacity(node, client, thread_worker,
                                                                         monkeypatch):
    """Default prefetch, no-op tasks: once its backlog ran dry the worker
    grants the node credit up to its capacity (16 × concurrency)."""
    _short_tasks_on(node, client, thread_worker, monkeypatch, capacity=32)
    _credit_settles_at(client, 32, "the node's credit for the worker at its capacity")


def test_a_worker_given_prefetch_holds_exactly_concurrency_plus_prefetch(node, client, thread_worker,
                                                                       monkeypatch):
    _short_tasks_on(node, client, thread_worker, monkeypatch, capacity=3, prefetch=1)
    _credit_settles_at(client, 3, "the node's credit for the worker back at 3")


def test_a_worker_whose_tasks_grew_long_takes_its_extra_credit_back(node, client, thread_worker,
                                                                  monkeypatch):
    """Fault it guards against: a worker that granted extra credit for
    no-op tasks keeps holding that many when its tasks turn slow, and they
    wait in its backlog while other workers could run them."""
    monkeypatch.setattr(prefetch, "PREFETCH_TIME", 0.05)      # no-ops: the cap; 0.1 s tasks: none
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2)
    for h in [client.submit("echo", [i]) for i in range(40)]:
        h.result(timeout=30)
    _credit_settles_at(client, 32, "the extra credit granted for short tasks")
    slow = [client.submit("sleep", [0.1]) for _ in range(32)]   # 28 reports take the extra back
    for h in slow:
        h.result(timeout=60)
    _credit_settles_at(client, 4, "the node's credit for the worker back at its base (2 × concurrency)")


@pytest.mark.parametrize("prefetch_option", [None, 0])
def test_the_worker_never_holds_more_than_its_capacity(node, client, thread_worker, monkeypatch,
                                                       prefetch_option):
    """However many tasks wait, the node never has more out with the worker
    than its capacity (the node caps credit at the capacity of its READY)."""
    monkeypatch.setattr(prefetch, "PREFETCH_TIME", 60.0)
    options = {} if prefetch_option is None else {"prefetch": prefetch_option}
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2, **options)
    capacity = 32 if prefetch_option is None else 2
    handles = [client.submit("sleep", [0.01]) for _ in range(60)]
    client.flush()
    highest = 0
    for _ in range(5000):                     # bounded; 60 tasks of 10 ms take well under a second
        status = client.status()
        for row in status["workers"]:
            highest = max(highest, row["running"] + row["credit"])
        counts = status["queues"]["default"]
        if counts["ready"] + counts["running"] == 0:
            break
    assert 0 < highest <= capacity
    for h in handles:
        h.result(timeout=60)
