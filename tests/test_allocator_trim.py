"""When a node gives freed memory back to the system
(:class:`miyaq.runtime.heap.AllocatorTrim`), driven with a stand-in
allocator and resident size: no timing, ``now`` is passed in."""
from __future__ import annotations

from miyaq.runtime import heap
from miyaq.runtime.heap import TRIM_INTERVAL, TRIM_SLACK, AllocatorTrim

MB = 1 << 20


class Process:
    """A resident size that a trim brings down to ``kept``."""

    def __init__(self, resident: int, kept: int) -> None:
        self.now, self.kept, self.trims = resident, kept, 0

    def trim(self) -> bool:
        self.trims += 1
        self.now = self.kept
        return True


def test_a_node_that_let_go_of_a_replayed_log_gives_the_memory_back_once():
    """Fault: a node that replayed a long log (or drained a burst) kept what
    it freed for as long as it ran: 251 MB resident with 13 tasks, 156 MB
    once trimmed (a soak audit's data dir, 2026-12-06). The first look is a
    minute after start; it trims once, and not again while nothing grows."""
    process = Process(resident=251 * MB, kept=156 * MB)
    trim = AllocatorTrim(trim=process.trim, resident=lambda: process.now)
    assert not trim.observe(1 * MB, 1000.0)                      # the first call: the first look a minute on
    assert not trim.observe(1 * MB, 1000.0 + TRIM_INTERVAL / 2)
    assert trim.observe(1 * MB, 1000.0 + TRIM_INTERVAL)
    assert process.trims == 1 and trim.after_trim == 156 * MB
    for minute in range(2, 10):                                  # 156 MB left: no trim for it again and again
        assert not trim.observe(1 * MB, 1000.0 + minute * TRIM_INTERVAL)
    assert process.trims == 1
    process.now = 156 * MB + TRIM_SLACK                          # it grew (a burst) and let go again
    assert trim.observe(1 * MB, 1000.0 + 10 * TRIM_INTERVAL)
    assert process.trims == 2


def test_memory_the_store_uses_is_never_trimmed_for():
    """A node holding a million delayed tasks is as big as its store says:
    no trim, whatever its size."""
    process = Process(resident=490 * MB, kept=489 * MB)
    trim = AllocatorTrim(trim=process.trim, resident=lambda: process.now)
    trim.observe(500 * MB, 0.0)
    for minute in range(1, 10):
        assert not trim.observe(500 * MB, minute * TRIM_INTERVAL)
    assert process.trims == 0


def test_without_a_resident_size_or_a_trim_nothing_happens():
    """Not Linux (no /proc/self/statm): no look. Not glibc: the trim is a no-op."""
    calls = []
    trim = AllocatorTrim(trim=lambda: calls.append(1) or True, resident=lambda: None)
    trim.observe(0, 0.0)
    assert not trim.observe(0, TRIM_INTERVAL) and calls == []
    assert isinstance(heap.give_back_free_memory(), bool)
    resident = heap.resident_bytes()
    assert resident is None or resident > 0
