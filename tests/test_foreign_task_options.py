"""A task option another task queue has -- Celery's ``time_limit``,
``expires``, ``bind``, Dramatiq's ``min_backoff``, RQ's ``job_timeout`` --
given to ``@app.task`` or ``client.submit``: the refusal says what miyaq
calls it (or why there is none) and lists the options there are, rather
than only the name it refused (docs/celery.md)."""
from __future__ import annotations

import pytest

import miyaq
from miyaq.client.wire import TASK_OPTIONS

pytestmark = pytest.mark.timeout(30)


def _handler(a):
    return a


@pytest.mark.parametrize("option,value,hint", [
    ("time_limit", 10, "the lease is 'timeout', in seconds"),
    ("expires", 60, "'ttl': seconds from acceptance"),
    ("bind", True, "miyaq.current_task()"),
    ("autoretry_for", (ValueError,), "raise miyaq.Reject to fail without retrying"),
    ("acks_late", True, "at_most_once=True"),
    ("min_backoff", 1000, "'backoff', in seconds (not milliseconds)"),
])
def test_a_celery_or_dramatiq_option_at_decoration_says_what_it_is_here(option, value, hint):
    """Mistake: a Celery team ports ``@app.task(time_limit=10)`` (or
    ``expires=``, ``bind=True``, ...). Before 2026-12-07 the ConfigError
    said only ``unknown task option(s): time_limit``: nothing about the
    lease being ``timeout``, nor which options there are."""
    app = miyaq.App("tcp://127.0.0.1:1")
    with pytest.raises(miyaq.ConfigError) as err:
        app.task(_handler, name="ported", **{option: value})
    message = str(err.value)
    assert message.startswith(f"unknown task option(s): {option!r} ("), message
    assert hint in message, message
    assert "the task options are " + ", ".join(TASK_OPTIONS) in message, message
    assert app.tasks == {}


def test_a_typo_in_an_option_lists_the_options_there_are():
    """Mistake: ``max_retry=5`` for ``max_retries``. The message lists the
    options, so the right spelling is on the screen."""
    app = miyaq.App("tcp://127.0.0.1:1")
    with pytest.raises(miyaq.ConfigError, match=r"unknown task option\(s\): 'max_retry'; the task options are "
                                                r"queue, priority, .*max_retries"):
        app.task(_handler, name="typo", max_retry=5)


def test_a_foreign_option_at_submit_is_refused_with_the_same_hint_and_nothing_sent():
    """Mistake: ``client.submit("resize", [...], expires=60)``, Celery's
    ``apply_async`` habit. TypeError before anything is sent, saying
    ``ttl``."""
    with miyaq.Client("tcp://127.0.0.1:1") as client:
        with pytest.raises(TypeError) as err:
            client.submit("resize", ["cat.png"], expires=60, soft_time_limit=5)
        message = str(err.value)
        assert "'expires' ('ttl'" in message and "'soft_time_limit' (the lease is 'timeout'" in message, message
        assert client.flush(timeout=5) is None


def test_many_unknown_options_keep_the_message_short():
    """Bound: a mapping splatted by mistake (``**request.POST``) names at
    most five options and counts the rest."""
    app = miyaq.App("tcp://127.0.0.1:1")
    with pytest.raises(miyaq.ConfigError) as err:
        app.task(_handler, name="many", **{f"opt{i:02d}": i for i in range(40)})
    assert "'opt04'" in str(err.value) and "'opt05'" not in str(err.value)
    assert " and 35 more;" in str(err.value)


def test_no_hint_shadows_an_option_miyaq_has():
    """Guard: a name both miyaq and another library use (``countdown``,
    ``eta``, ``priority``, ``queue``) is miyaq's, never given a hint."""
    from miyaq.client.wire import FOREIGN_OPTIONS
    assert not set(FOREIGN_OPTIONS) & set(TASK_OPTIONS)
