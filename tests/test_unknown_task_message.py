"""What a producer reads when the worker that took its task has no handler
of that name (``UnknownTask``): the names the worker's app has, the one
most likely meant first."""
from __future__ import annotations

import logging

import pytest

import miyaq


def two_task_app() -> miyaq.App:
    """An app with ``<this module>.triple`` and ``emails.send``."""
    app = miyaq.App("tcp://127.0.0.1:1")
    app.task(triple)
    app.task(send, name="emails.send")
    return app


def triple(x):
    return 3 * x


def send(to):
    return to


def test_a_task_of_a_script_run_as_main_is_explained():
    """Mistake: the producer defines the task in a script it runs
    (``python tasks.py``), so it submits ``__main__.triple``, and the worker
    imported the same file as ``tasks`` and has ``tasks.triple``. Before,
    "no handler named '__main__.triple' in worker ...", and nothing more."""
    app = two_task_app()
    message = app.unknown_task("__main__.triple", "worker w1")
    assert message.startswith("no handler named '__main__.triple' in worker w1; its app has "
                              f"'{__name__}.triple' (a task of a script run as __main__"), message
    assert "name=" in message, message


def test_a_name_no_handler_resembles_lists_the_app_s_tasks():
    """Mistake: a typo in the name given to ``client.submit`` (or ``miyaq
    submit``): the message lists what the worker's app has, at most five."""
    app = two_task_app()
    assert app.unknown_task("emails.sned", "worker w1") == (
        f"no handler named 'emails.sned' in worker w1; its app's tasks: 'emails.send', '{__name__}.triple'")
    for i in range(6):
        app.task(lambda: None, name=f"more.t{i}")
    assert app.unknown_task("nope", "worker w1").endswith(" and 3 more"), app.unknown_task("nope", "worker w1")


def test_the_worker_reports_it_to_the_producer(node, client, thread_worker):
    """Fault: a task named as in the producer's ``__main__``, taken by a
    worker whose app has it under its module's name. The producer's
    TaskFailed carries the explanation (not retried away: max_retries 0)."""
    app = two_task_app()
    thread_worker(app, node.endpoint)
    with pytest.raises(miyaq.TaskFailed) as err:
        client.call("__main__.triple", [1], max_retries=0, timeout=20)
    assert err.value.remote_type == "UnknownTask"
    assert f"its app has '{__name__}.triple' (a task of a script run as __main__" in err.value.remote_message


def test_the_worker_logs_a_name_it_has_no_handler_for(node, client, thread_worker, caplog, monkeypatch):
    """Fault: a producer submits a name the worker's app does not have (a
    typo, or a worker deployed without the module that registers it).
    Before 2026-12-07 the worker's log said nothing of it at any level --
    every other failed attempt has a line there, and Celery's worker logs
    "Received unregistered task" -- so the operator watching the worker
    saw tasks vanish into retries and the dead-letter queue. Now each such
    attempt has a WARNING naming the task, the name and what the app has;
    a flood of unknown names, which a producer chooses freely, shares one
    bounded kind of line."""
    from miyaq.logs import LogLimiter
    from miyaq.worker import failures
    # a limiter of its own: the module's is shared with the other tests of this process
    monkeypatch.setattr(failures, "_log", LogLimiter(failures.logger, burst=failures.LINES_PER_MINUTE))
    app = two_task_app()
    with caplog.at_level(logging.INFO, logger="miyaq.worker.tasks"):
        thread_worker(app, node.endpoint)
        with pytest.raises(miyaq.TaskFailed) as err:
            client.call("emails.sned", [1], id="typo-1", max_retries=1, backoff=0.05, timeout=20)
        assert err.value.remote_type == "UnknownTask"
        heads = [r for r in caplog.records if r.name == "miyaq.worker.tasks"]
    said = [r.getMessage() for r in heads]
    assert len(said) == 2, said
    for attempt, line in enumerate(said, 1):
        assert f"task typo-1 (emails.sned) attempt {attempt} on queue default failed: UnknownTask: " \
               "no handler named 'emails.sned' in worker " in line, line
        assert "its app's tasks: 'emails.send'" in line, line
    assert all(r.levelno == logging.WARNING for r in heads)


def test_unknown_names_share_one_bounded_kind_of_line(monkeypatch, caplog):
    """Fault: a producer floods a worker with names its app does not have,
    each new. The lines are bounded like a poison task's (LINES_PER_MINUTE,
    the rest counted): unknown names are not the app's, so they cannot
    each have a kind of their own."""
    from miyaq.logs import LogLimiter
    from miyaq.worker import failures
    monkeypatch.setattr(failures, "_log", LogLimiter(failures.logger, burst=failures.LINES_PER_MINUTE))
    with caplog.at_level(logging.INFO, logger="miyaq.worker.tasks"):
        for i in range(200):
            failures.log_unknown("w1", f"t{i}", f"name{i}", 1, "default", f"no handler named 'name{i}'")
    said = [r.getMessage() for r in caplog.records if r.name == "miyaq.worker.tasks"]
    assert len(said) == failures.LINES_PER_MINUTE, said
