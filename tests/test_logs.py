"""miyaq.logs: the bounded rate of warnings a flood of bad input could repeat."""
from __future__ import annotations

import logging

from miyaq import logs


def test_a_flood_of_one_kind_of_warning_is_logged_at_a_bounded_rate(caplog, monkeypatch) -> None:
    """Fault: a buggy or hostile peer sends the same bad input thousands of
    times a second. LogLimiter lets ``burst`` lines of a kind through per
    window, counts the rest, and says how many it left out with the next
    window's first line; another kind has its own window."""
    now = [100.0]
    monkeypatch.setattr(logs, "monotonic", lambda: now[0])
    limiter = logs.LogLimiter(logging.getLogger("miyaq.test.flood"), burst=3, per=60.0)
    with caplog.at_level(logging.WARNING, logger="miyaq.test.flood"):
        told = [limiter.warning("bad", "bad input %d", i) for i in range(1000)]
        assert limiter.warning("other", "another kind")
        now[0] += 60.0
        assert limiter.warning("bad", "bad input again")
    assert told == [True] * 3 + [False] * 997
    assert [r.getMessage() for r in caplog.records] == [
        "bad input 0", "bad input 1", "bad input 2", "another kind",
        "997 more bad line(s) were not logged in the last 60s", "bad input again"]
