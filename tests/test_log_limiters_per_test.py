"""Module-level log limiters start empty in every test (tests/conftest.py,
``fresh_log_limiters``): a test's lines do not depend on which tests the
same pytest process ran before it. The two tests run in this order in one
process (the file's order; ``--dist loadfile`` keeps a file on one worker)."""
from __future__ import annotations

import pytest

from miyaq.worker import link

pytestmark = pytest.mark.timeout(30)


def test_a_test_that_used_up_a_kind_of_line(caplog):
    """Fault (with the next test, run in the same process just after): this
    test uses up the worker link's ``error`` lines (5 a minute). Before
    2026-12-07 the next test, and any test waiting for a worker's refusal
    line (tests/test_worker_queue_bound.py), saw none for a minute."""
    with caplog.at_level("WARNING", logger="miyaq.worker.link"):
        for _ in range(link._log.burst + 1):
            link._log.warning("error", "node %s: %s: %s", "tcp://127.0.0.1:1", "busy", "used up")
    assert sum("used up" in r.getMessage() for r in caplog.records) == link._log.burst


def test_the_next_test_in_the_process_gets_its_lines(caplog):
    """The worker link's limiter is among those reset, and a refusal line
    this test logs is let through whatever the test before it logged."""
    with caplog.at_level("WARNING", logger="miyaq.worker.link"):
        assert link._log.warning("error", "node %s: %s: %s", "tcp://127.0.0.1:1", "busy", "refused")
    assert any("refused" in r.getMessage() for r in caplog.records)
