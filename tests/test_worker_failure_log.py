"""What a worker logs of an attempt that did not succeed
(miyaq/worker/failures.py): a line a failed attempt naming the task, its
error and the handler's traceback, in every pool and for ``async def``
handlers; ``Retry`` and ``Reject`` at INFO; a flood bounded. Worker
processes against a node in this process; no timing is asserted."""
from __future__ import annotations

import logging
import time
import uuid

import pytest

from miyaq.errors import TaskFailed
from miyaq.logs import LogLimiter, OneLineMessages
from miyaq.testing.harness import ThreadNode, wait_for
from miyaq.worker import failures
from miyaq.worker.jobs import Job

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def node():
    with ThreadNode(heartbeat=1.0) as n:
        yield n


def _worker(procs, node, pool):
    w = procs.worker("apps.failing:app", node.endpoint, 2, "--pool", pool)
    if pool == "processes":
        wait_for(lambda: "child process(es) ready" in w.log_tail(400), timeout=60, what="the pool's children")
    return w


def _lines(w, tag):
    """The worker's log lines (and the traceback lines after each) of the task tagged ``tag``."""
    return [line for line in w.log_tail(400).splitlines() if tag in line]


@pytest.mark.parametrize("pool,name", [("gevent", "fail"), ("threads", "fail"), ("processes", "fail"),
                                       ("gevent", "afail"), ("threads", "afail")])
def test_a_handler_that_raises_is_logged_with_its_traceback(procs, node, client, pool, name):
    """Fault: a handler raises on each of its 2 attempts. Before 2026-12-06
    the worker's log said nothing of it, even at DEBUG (only the node
    logged the dead letter). Now each attempt has a WARNING naming the
    task (id, name, attempt, queue), the exception's type and message, and
    the traceback down to the handler's frame -- a processes-pool child's
    too, as it comes back in the attempt's error."""
    w = _worker(procs, node, pool)
    tag = uuid.uuid4().hex
    handle = client.submit(name, [tag], max_retries=1, backoff=0.05)
    with pytest.raises(TaskFailed):
        handle.result(60)
    wait_for(lambda: sum("attempt" in line for line in _lines(w, tag)) >= 2, timeout=20,
             what="a line for each attempt")
    log = w.log_tail(400)
    heads = [line for line in _lines(w, tag) if "WARNING miyaq.worker.tasks" in line]
    assert len(heads) == 2, log
    for attempt, head in enumerate(heads, 1):
        assert f"task {handle.id} ({name}) attempt {attempt} on queue default failed: ValueError: " \
               f"handler failed on purpose {tag}" in head, head
    assert "Traceback (most recent call last):" in log
    assert "in _explode" in log and f"\n    ValueError: handler failed on purpose {tag}" in log


def test_retry_and_reject_are_logged_at_info_without_a_traceback(procs, node, client):
    """Fault: a handler raises ``Retry`` or ``Reject`` on purpose. Said at
    INFO (what the handler chose is no error), with its message, no
    traceback; a task that succeeds logs nothing here."""
    w = _worker(procs, node, "gevent")
    tag = uuid.uuid4().hex
    retried = client.submit("retry_me", [tag], max_retries=1)
    rejected = client.submit("reject_me", [tag])
    assert client.call("fine", [tag], timeout=30) == tag
    for handle in (retried, rejected):
        with pytest.raises(TaskFailed):
            handle.result(60)
    wait_for(lambda: len(_lines(w, tag)) >= 3, timeout=20, what="the lines of both tasks")
    lines = _lines(w, tag)
    assert all("INFO miyaq.worker.tasks" in line for line in lines), lines
    assert sum("(retry_me) attempt" in line and f"asked to be retried (Retry: not yet {tag}), in 0.1s" in line
               for line in lines) == 2, lines
    assert sum(f"rejected itself (Reject: never {tag})" in line for line in lines) == 1, lines
    assert "Traceback" not in w.log_tail(400)
    assert not any("(fine)" in line for line in w.log_tail(400).splitlines())


def _job(name: str, task_id: str = "t1", attempt: int = 1) -> Job:
    return Job([task_id, "default", name, b"", attempt, 30.0], lambda: None, False)


def test_a_poison_task_failing_in_a_burst_logs_a_few_lines_and_counts_the_rest(monkeypatch, caplog):
    """Fault: a poison task fails thousands of times (a tight retry loop).
    At most LINES_PER_MINUTE lines a task name and minute, the rest counted
    and the count told with the next line; another task's failure still has
    its line."""
    monkeypatch.setattr(failures, "_log", LogLimiter(failures.logger, burst=failures.LINES_PER_MINUTE, per=0.5))
    error = {"type": "ValueError", "message": "poison", "retry": True,
             "traceback": "Traceback (most recent call last):\n  File \"x.py\", line 1, in h\nValueError: poison\n"}
    with caplog.at_level(logging.INFO, logger="miyaq.worker.tasks"):
        for i in range(3000):
            failures.log_outcome("w1", _job("poison", f"p{i}"), error)
        failures.log_outcome("w1", _job("other", "o1"), error)
        heads = [r for r in caplog.records if r.name == "miyaq.worker.tasks"]
        assert sum("(poison)" in r.getMessage() for r in heads) == failures.LINES_PER_MINUTE
        assert sum("(other)" in r.getMessage() for r in heads) == 1
        assert heads[0].exc_text is not None and heads[0].exc_text.endswith("ValueError: poison")
        wait_for(lambda: failures._log._rate.windows["poison failure"][0] + 0.5 <= time.monotonic(),
                 timeout=5, what="the window's end")
        caplog.clear()
        failures.log_outcome("w1", _job("poison", "p-last"), error)
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith(f"{3000 - failures.LINES_PER_MINUTE} more poison failure line(s) were not logged"), said
    assert "p-last" in said[1]


def test_a_traceback_cannot_forge_a_line_with_control_characters(caplog):
    """Fault: an exception message carrying a terminal escape or a carriage
    return (text a producer sent). In the traceback, kept on its lines, the
    control characters other than the line breaks are escaped, as in
    miyaq's messages."""
    error = {"type": "ValueError", "message": "a\rb", "retry": False,
             "traceback": "Traceback (most recent call last):\nValueError: a\rb\x1b[2J\n"}
    with caplog.at_level(logging.INFO, logger="miyaq.worker.tasks"):
        failures.log_outcome("w1", _job("forge", "f1"), error)
    (record,) = [r for r in caplog.records if r.name == "miyaq.worker.tasks"]
    assert record.levelno == logging.ERROR and "failed for good" in record.getMessage()
    assert record.exc_text == "    Traceback (most recent call last):\n    ValueError: a\\rb\\x1b[2J"


def test_a_traceback_cannot_start_a_line_that_reads_as_a_record(caplog):
    """Fault: an exception message holding a line break and text shaped as
    a log record (``ValueError("ok\\n2026-12-06 19:00:00,000 ERROR
    miyaq.node: FORGED")``, from a task's arguments): the traceback kept its
    lines, and that one stood at the margin of the worker's log, a record
    of its own to the reader (review22). Every traceback line is indented."""
    forged = "2026-12-06 19:00:00,000 ERROR miyaq.node: FORGED LINE"
    error = {"type": "ValueError", "message": f"ok\n{forged}", "retry": True,
             "traceback": ("Traceback (most recent call last):\n  File \"t.py\", line 1, in h\n"
                           f"ValueError: ok\n{forged}\n")}
    with caplog.at_level(logging.INFO, logger="miyaq.worker.tasks"):
        failures.log_outcome("w1", _job("forge", "f2"), error)
    (record,) = [r for r in caplog.records if r.name == "miyaq.worker.tasks"]
    text = OneLineMessages("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)   # the worker's
    lines = text.split("\n")
    assert all(line.startswith(failures.TRACEBACK_INDENT) for line in lines[1:]), lines
    assert f"{failures.TRACEBACK_INDENT}{forged}" in lines
