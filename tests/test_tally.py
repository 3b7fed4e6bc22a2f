"""miyaq.store.tally: counts that read like a Counter and write like a dict."""
from __future__ import annotations

from collections import Counter

from miyaq.store.tally import Tally


def test_a_missing_key_reads_zero_and_is_not_added():
    tally: Tally[str] = Tally()
    assert tally["never"] == 0
    assert "never" not in tally and len(tally) == 0


def test_counts_move_as_a_counters_do():
    tally: Tally[tuple[str, str]] = Tally()
    counter: Counter[tuple[str, str]] = Counter()
    moves = [("q", "started"), ("q", "done"), ("q", "started"), ("r", "dead")]
    for key in moves:
        tally[key] += 1
        counter[key] += 1
    tally[("q", "started")] -= 1
    counter[("q", "started")] -= 1
    del tally[("r", "dead")]
    del counter[("r", "dead")]
    assert tally == dict(counter) and sorted(tally.items()) == sorted(counter.items())


def test_it_keeps_dicts_own_item_assignment():
    """Defining __setitem__ or __delitem__ (as Counter does) would give the
    type CPython's generic item-assignment slot, 2.5 times slower per count
    (docs/performance.md): a Tally overrides only __missing__."""
    assert "__setitem__" not in Tally.__dict__ and "__delitem__" not in Tally.__dict__
    assert Tally.__setitem__ is dict.__setitem__
