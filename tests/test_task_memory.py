"""The memory-lean task record and timers (issue 10: a million delayed tasks
in under 500 MiB): shared specs, rarely-set extras, and timers that keep far
ones in coarse buckets -- each checked against the behaviour they replace
(exact firing order, O(1) cancel, nothing lost, nothing fired twice)."""
from __future__ import annotations

import gc
import random
import weakref

import pytest

from miyaq.store import spec as spec_module
from miyaq.store.task import NO_EXTRA, Task
from miyaq.store.timers import NEAR, TimerHeap

T0 = 1_700_000_000.0


def make(i: int, **kw) -> Task:
    t = Task(f"t{i}", kw.pop("queue", "q"), "job", b"x", **kw)
    t.seq = i + 1
    return t


# -- the task record -----------------------------------------------------------------

def test_tasks_of_one_kind_share_one_spec_and_no_extra():
    a, b = make(1), make(2)
    assert a.spec is b.spec and a.extra is NO_EXTRA and b.extra is NO_EXTRA
    assert (a.queue, a.name, a.method, a.timeout, a.lane) == ("q", "job", "POST", 300.0, "q")


def test_setting_a_shared_field_changes_only_that_task():
    a, b = make(1), make(2)
    a.priority = 5
    assert (a.priority, b.priority) == (5, 0) and a.spec is not b.spec
    a.priority = 0
    assert a.spec is b.spec          # back to the interned spec


def test_extras_are_copied_on_write_and_defaults_cost_nothing():
    a, b = make(1), make(2)
    a.standby = False                # the default: no extra allocated
    assert a.extra is NO_EXTRA
    a.holders = ("n1", "n2")
    a.error = {"type": "E"}
    assert a.holders == ("n1", "n2") and b.holders == () and b.error is None
    assert NO_EXTRA.holders == () and NO_EXTRA.error is None
    c = make(3, key="k", expires=T0)
    assert c.key == "k" and c.expires == T0 and c.extra is not NO_EXTRA


def test_webhook_tasks_get_their_own_lane():
    t = Task("w", "q", None, b"", url="http://x/")
    assert t.lane == "@http/q" and t.url == "http://x/"


def test_interned_specs_are_bounded(monkeypatch):
    """Fault: a producer sends a new kind of task every time; specs stop being
    kept past the bound, and every task still reads its own values."""
    monkeypatch.setattr(spec_module, "_specs", weakref.WeakValueDictionary())
    monkeypatch.setattr(spec_module, "MAX_SPECS", 10)
    tasks = [make(i, queue=f"q{i}") for i in range(50)]
    assert len(spec_module._specs) == 10
    assert [t.queue for t in tasks] == [f"q{i}" for i in range(50)]


def test_a_spec_goes_with_the_last_task_of_its_kind(monkeypatch):
    """Fault: every kind of task ever seen kept its spec for good -- webhook
    URLs of 2 KB that producers make up (an order id in a callback URL) kept
    2.7 KB each, up to ``MAX_SPECS`` (175 MB) a node, with no task left. A
    spec is now kept only while a task uses it."""
    monkeypatch.setattr(spec_module, "_specs", weakref.WeakValueDictionary())
    kept = [Task("k", "q", None, b"", url="http://x/kept")]
    for i in range(1_000):
        Task(f"w{i}", "q", None, b"", url=f"http://x/callback/{i}?sig={'s' * 1900}")
        make(i, queue=f"made-up-{i}")
    gc.collect()
    assert len(spec_module._specs) == 1
    twin = Task("k2", "q", None, b"", url="http://x/kept")
    assert twin.spec is kept[0].spec      # one still in use is still shared


# -- timers -----------------------------------------------------------------------------

def run_clock(timers: TimerHeap, start: float) -> list[tuple[float, str]]:
    """Step a fake clock from ``start`` to each next_due until none is left;
    (time fired, id) of every task."""
    fired = []
    now = start
    while True:
        fired += [(now, t.id) for t in timers.pop_due(now, 500)]
        due = timers.next_due()
        if due is None:
            return fired
        now = max(now, due)


def test_far_timers_go_to_buckets_and_fire_on_time():
    timers = TimerHeap()
    timers.now = T0
    near, far = make(1), make(2)
    timers.arm(near, T0 + 1, T0)
    timers.arm(far, T0 + 86_400, T0)
    assert len(timers._heap) == 1 and timers._far == 1
    assert timers.next_due() == T0 + 1
    fired = run_clock(timers, T0)
    assert [(round(at - T0, 3), tid) for at, tid in fired] == [(1.0, "t1"), (86_400.0, "t2")]


def test_random_timers_fire_once_in_order_never_early_or_late():
    """Thousands of timers from a second to a day ahead, a third cancelled and
    a third re-armed (earlier or later): every live one fires exactly once, at
    its time (on a clock that steps to each next_due), in time order."""
    rng = random.Random(7)
    timers = TimerHeap()
    timers.now = T0
    tasks = [make(i) for i in range(3000)]
    expected: dict[str, float] = {}
    for t in tasks:
        when = T0 + rng.choice([rng.uniform(0, NEAR), rng.uniform(NEAR, 600), rng.uniform(600, 86_400)])
        timers.arm(t, when, T0)
        expected[t.id] = when
    for t in tasks[:1000]:
        timers.cancel(t)
        del expected[t.id]
    for t in tasks[1000:2000]:
        when = T0 + rng.uniform(0, 90_000)
        timers.arm(t, when, T0)
        expected[t.id] = when
    fired = run_clock(timers, T0)
    assert all(at >= expected[tid] for at, tid in fired), "fired early"
    assert sorted(tid for _, tid in fired) == sorted(expected)
    assert all(at == expected[tid] for at, tid in fired), "fired late"
    times = [expected[tid] for _, tid in fired]
    assert times == sorted(times)


def test_equal_times_fire_in_submit_order():
    timers = TimerHeap()
    timers.now = T0
    when = T0 + 3600.0
    tasks = [make(i) for i in range(100)]
    for t in reversed(tasks):
        timers.arm(t, when, T0)
    ids = [t.id for t in timers.pop_due(when, 1000)]
    assert ids == [t.id for t in tasks]


def test_cancel_is_lazy_and_compact_drops_stale_entries_and_buckets():
    timers = TimerHeap()
    timers.now = T0
    tasks = [make(i) for i in range(10_000)]
    for i, t in enumerate(tasks):
        timers.arm(t, T0 + 3600 + i, T0)
    for t in tasks[1:]:
        timers.cancel(t)
    assert len(timers) == 10_000         # O(1) cancels: nothing searched
    timers.compact()
    assert len(timers) == 1 and timers.next_due() == T0 + 3600
    timers.cancel(tasks[0])
    timers.compact()
    assert len(timers) == 0 and timers.next_due() is None


def test_a_stale_clock_only_costs_a_move_never_a_late_timer():
    """Fault: arm() without a current time after a long idle spell (the heap's
    clock is hours old): the timer still fires at its time."""
    timers = TimerHeap()
    timers.now = T0 - 7 * 86_400          # a week stale
    timers.arm(make(1), T0 + 5)
    assert run_clock(timers, T0) == [(T0 + 5, "t1")]


def test_a_huge_bucket_moves_in_bounded_steps():
    """50,000 timers in one far bucket: each pop_due moves a bounded number
    toward the heap (the node's loop is never held for all of them)."""
    timers = TimerHeap()
    timers.now = T0
    when = T0 + 10_000.0
    for i in range(50_000):
        timers.arm(make(i), when, T0)
    assert list(timers.pop_due(when - 1, 100)) == []
    assert len(timers._heap) <= 400      # 4 x limit a call
    fired = 0
    while (due := timers.next_due()) is not None:
        fired += len(list(timers.pop_due(max(due, when), 1000)))
    assert fired == 50_000


@pytest.mark.parametrize("delay", [0.5, NEAR, NEAR + 0.01, 5.0, 100.0, 1e6])
def test_every_delay_fires_exactly_at_its_time(delay):
    timers = TimerHeap()
    timers.now = T0
    t = make(1)
    timers.arm(t, T0 + delay, T0)
    now = T0
    while (due := timers.next_due()) is not None and due > now:
        now = due
        fired = list(timers.pop_due(now, 10))
        if fired:
            assert fired == [t] and now == T0 + delay
            return
    raise AssertionError("never fired")
