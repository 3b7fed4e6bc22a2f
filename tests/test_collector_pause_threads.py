"""The cycle collector paused by blocks in several threads at once
(miyaq.runtime.heap ``collector_paused``: a JSON body's parse, a large
msgpack body in a node, a log compaction's snapshot of the task table).

The collector is one for the whole process, and nodes may run in threads
of one process (:class:`miyaq.testing.harness.ThreadNode`, a test suite's).
Before 2026-12-08 each block read the collector's state and disabled it on
its own: a thread preempted between the two (its read "off", another
thread's block running) disabled it only after that other block had
enabled it again, and, having read "off", never enabled it: the collector
stayed off for the rest of the process (8 threads pausing 20,000 times
each left it off in 3 runs of 3). Found while looking for the cause of a
suite run's failure that turned out to be another (mypy's thresholds:
tests/test_public_typing.py).
"""
from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any

import pytest

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import heap
from miyaq.store import table as table_module

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
"""At most this long for the other thread to reach its step (it is a few
microseconds away; the bound only keeps a broken test from hanging)."""


class PreemptedCollector:
    """The ``gc`` module, except that thread B is preempted between reading
    the collector's state and disabling it: its ``disable()`` first lets
    thread A's block end (waits until it has)."""

    def __init__(self) -> None:
        self.b_thread: int | None = None
        self.progress = threading.Event()     # B read the state, or B is inside its block
        self.a_done = threading.Event()       # A's block has ended

    def __getattr__(self, name: str) -> Any:
        return getattr(gc, name)

    def disable(self) -> None:
        if threading.get_ident() == self.b_thread:
            self.progress.set()
            self.a_done.wait(WAIT)
        gc.disable()


def _paused_block(preempted: PreemptedCollector) -> Callable[[], bool]:
    """B pauses with ``collector_paused`` and stays in its block until A's
    has ended; returns whether the collector was off then."""
    def run() -> bool:
        with heap.collector_paused():
            preempted.progress.set()
            preempted.a_done.wait(WAIT)
            return not gc.isenabled()
    return run


def _table_snapshot(preempted: PreemptedCollector) -> Callable[[], bool]:
    """B takes a snapshot of a task table (a log compaction's), which pauses
    the collector for its copy."""
    engine = Engine(NodeConfig())
    task = task_from_wire({"id": "t1", "name": "job"}, 1_700_000_000.0, engine.config)
    engine.table.add(task)

    def run() -> bool:
        assert [t.id for t in engine.table.snapshot().tasks] == ["t1"]
        preempted.progress.set()
        return True
    return run


@pytest.mark.parametrize("pauser", [_paused_block, _table_snapshot], ids=["collector_paused", "table-snapshot"])
def test_a_thread_preempted_while_pausing_the_collector_leaves_it_on_after_both_blocks(
        monkeypatch: pytest.MonkeyPatch, pauser: Callable[[PreemptedCollector], Callable[[], bool]]) -> None:
    """Fault: thread A pauses the collector; thread B starts a pause of its
    own, reads the collector's state (off: A's block runs) and is preempted
    before it disables it; A's block ends and enables it; B disables it.
    Before 2026-12-08 B, having read "off", did not enable it at its end:
    the collector stayed off for good (A after B: both blocks over, gc off).
    Now the collector is on again once the last block running ends, and
    stays off until then."""
    assert gc.isenabled(), "the test process's collector is off before the test"
    preempted = PreemptedCollector()
    monkeypatch.setattr(heap, "gc", preempted)
    monkeypatch.setattr(table_module, "gc", preempted, raising=False)   # the snapshot's own pause, before the fix
    a_inside = threading.Event()
    outcome: dict[str, Any] = {}
    run_b = pauser(preempted)

    def a() -> None:
        with heap.collector_paused():
            a_inside.set()
            outcome["a saw its pause"] = not gc.isenabled()
            outcome["b got going"] = preempted.progress.wait(WAIT)
        preempted.a_done.set()

    def b() -> None:
        preempted.b_thread = threading.get_ident()
        if a_inside.wait(WAIT):
            outcome["b paused after a ended"] = run_b()

    threads = [threading.Thread(target=a, name="pauser A"), threading.Thread(target=b, name="pauser B")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(3 * WAIT)
        assert not any(thread.is_alive() for thread in threads)
        after = gc.isenabled()
    finally:
        gc.enable()      # whatever happened, the rest of this process collects
    assert outcome == {"a saw its pause": True, "b got going": True, "b paused after a ended": True}, outcome
    assert after, "both blocks ended and the collector was left off"


def test_blocks_nested_in_one_thread_and_a_collector_turned_off_before_them_are_left_as_found() -> None:
    """The count of blocks running keeps what a single block did: nested
    blocks enable the collector at the outer one's end, not before; a
    collector someone turned off before the first block stays off."""
    assert gc.isenabled()
    try:
        with heap.collector_paused():
            with heap.collector_paused():
                assert not gc.isenabled()
            assert not gc.isenabled(), "the inner block's end enabled it while the outer still runs"
        assert gc.isenabled()
        gc.disable()
        with heap.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "a collector off before the block was turned on"
        with pytest.raises(KeyError), heap.collector_paused():
            raise KeyError("the block failed")
        assert not gc.isenabled()
    finally:
        gc.enable()
