"""What gevent's hub would print to stderr -- an exception a hub callback
raised, or that ended a greenlet nobody watches -- goes to the log in
miyaq's own processes, bounded (miyaq.runtime.green.log_hub_errors).
Each test's docstring names the fault it simulates."""
from __future__ import annotations

import logging

import pytest

from miyaq.runtime import green
from miyaq.testing.harness import in_own_hub, wait_for

pytestmark = pytest.mark.timeout(60)


def _in_own_hub(body):
    """Run ``body()`` in a native thread with a hub of its own (destroyed
    after), so the test process's hub keeps gevent's defaults."""
    in_own_hub(body, timeout=30)


def _boom():
    raise ZeroDivisionError("a callback's bug")


def _hub_records(caplog):
    return [r for r in caplog.records if r.name == "miyaq.hub"]


def test_a_hub_callback_that_raises_is_logged_with_its_traceback_not_printed(caplog, capfd):
    """Fault: a callback run by the hub raises (as gevent's server did when
    accept failed for want of descriptors). It is one ERROR record with its
    traceback; nothing reaches stderr."""
    caplog.set_level(logging.ERROR, logger="miyaq.hub")

    def body():
        green.log_hub_errors()
        green.call_soon(_boom)
        green.sleep(0.01)

    _in_own_hub(body)
    records = _hub_records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert "failed with ZeroDivisionError" in records[0].getMessage()
    assert records[0].exc_info[0] is ZeroDivisionError
    assert "ZeroDivisionError" not in capfd.readouterr().err


def test_a_flood_of_failing_greenlets_is_logged_at_a_bounded_rate(caplog, capfd):
    """Fault: 50 greenlets nobody supervises die with an exception at once.
    Five lines are logged (HUB_ERRORS_BURST a minute), the rest counted for
    the next line; nothing reaches stderr."""
    caplog.set_level(logging.ERROR, logger="miyaq.hub")

    def body():
        green.log_hub_errors()
        greenlets = [green.Greenlet.spawn(_boom) for _ in range(50)]
        green.joinall(greenlets)
        green.sleep(0.01)

    _in_own_hub(body)
    assert len(_hub_records(caplog)) == green.HUB_ERRORS_BURST
    assert "ZeroDivisionError" not in capfd.readouterr().err


def test_a_hub_without_it_keeps_gevents_default(caplog, capfd):
    """The default is unchanged where miyaq does not own the process (an
    application that uses the client): gevent prints to stderr."""
    caplog.set_level(logging.ERROR, logger="miyaq.hub")

    def body():
        green.call_soon(_boom)
        green.sleep(0.01)

    _in_own_hub(body)
    assert not _hub_records(caplog)
    assert "ZeroDivisionError: a callback's bug" in capfd.readouterr().err


def test_a_worker_logs_its_applications_failing_greenlets(procs, client_for):
    """Fault: a handler leaves greenlets of its own behind that fail, in a
    real `miyaq worker` (gevent pool). The worker logs each as a
    ``miyaq.hub`` ERROR line in its log's format, at most five, and goes
    on running tasks."""
    node = procs.node()
    worker = procs.worker("apps.stray:app", node.endpoint, 1)
    c = client_for(node.endpoint)
    assert c.call("stray", [8], timeout=20) == 8
    wait_for(lambda: worker.log_tail(200).count(" ERROR miyaq.hub: ") == green.HUB_ERRORS_BURST,
             what="the worker's log of its failing greenlets")
    log = worker.log_tail(400)
    assert "RuntimeError: stray greenlet 0 failed" in log
    assert c.call("stray", [0], timeout=20) == 0
