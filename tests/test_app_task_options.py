"""``@app.task`` refuses, at decoration, a name or an option the node would
refuse -- with a ConfigError naming the task and the option -- instead of
registering it for ``miyaq worker`` (or every submit) to fail on later."""
from __future__ import annotations

import datetime

import pytest

import miyaq
from own_interpreter import run_script

BAD = b"caf\xe9".decode("utf-8", "surrogateescape")

BAD_OPTIONS = {
    "queue-a-list": (dict(name="m", queue=["a", "b"]), "'m': option 'queue'"),
    "queue-with-a-space": (dict(name="m", queue="a b"), "'m': option 'queue'"),
    "queue-empty": (dict(name="m", queue=""), "'m': option 'queue'"),
    "queue-a-surrogate": (dict(name="m", queue=BAD), "'m': option 'queue'"),
    "name-an-int": (dict(name=-1), "named -1: option 'name' must be a string"),
    "name-bytes": (dict(name=b"abc"), "named b'abc': option 'name' must be a string"),
    "name-a-set": (dict(name={1, 2}), "option 'name' must be a string"),
    "name-empty": (dict(name=""), "'': option 'name' must have 1 to 256"),
    "name-too-long": (dict(name="n" * 257), "option 'name' must have 1 to 256"),
    "name-a-surrogate": (dict(name="caf" + BAD), "option 'name' holds '\\\\udce9'"),
    "key-a-surrogate": (dict(name="m", key=BAD), "'m': option 'key' holds"),
    "key-an-int": (dict(name="m", key=5), "'m': option 'key' must be a string"),
    "timeout-zero": (dict(name="m", timeout=0), "'m': option 'timeout' must be between"),
    "timeout-a-string": (dict(name="m", timeout="30"), "'m': option 'timeout' must be a number"),
    "ttl-nan": (dict(name="m", ttl=float("nan")), "'m': option 'ttl'"),
    "countdown-negative": (dict(name="m", countdown=-1), "'m': option 'countdown'"),
    "eta-and-countdown": (dict(name="m", eta=1e9, countdown=5), "option 'eta' cannot be given with 'countdown'"),
    "replicas-17": (dict(name="m", replicas=17), "'m': option 'replicas' must be between 1 and 16"),
    "max-retries-a-float": (dict(name="m", max_retries=1.5), "'m': option 'max_retries' must be an integer"),
    "priority-past-32-bits": (dict(name="m", priority=2 ** 40), "'m': option 'priority'"),
    "at-most-once-an-int": (dict(name="m", at_most_once=1), "'m': option 'at_most_once' must be true or false"),
    "offset-past-a-year": (dict(name="m", offset=4e7), "'m': option 'offset'"),
    "backoff-a-bool": (dict(name="m", backoff=True), "'m': option 'backoff' must be a number"),
}


@pytest.mark.parametrize("what", sorted(BAD_OPTIONS))
def test_a_task_option_the_node_would_refuse_is_a_config_error_at_decoration(what):
    """Bad input: ``@app.task(name="m", queue=["a", "b"])``, ``name=-1``,
    ``name=b"abc"``, ``timeout=0``... registered (``name={...}`` raised
    TypeError 'unhashable'); the queue made ``miyaq worker`` fail at start
    with a traceback, the others every submit. Now ConfigError naming the
    task and the option, and nothing registered."""
    options, message = BAD_OPTIONS[what]
    app = miyaq.App("tcp://127.0.0.1:7450")
    with pytest.raises(miyaq.ConfigError, match=f"^@app.task .*{message}"):
        app.task(**options)(lambda: None)
    assert app.tasks == {}


def test_app_task_given_something_other_than_a_function_is_a_config_error():
    """Bad input: ``app.task(42)`` raised AttributeError ('int' object has no
    attribute '__module__'); ``app.task("name")`` (the name given without
    ``name=``) the same. Now ConfigError saying a function is registered."""
    app = miyaq.App("tcp://127.0.0.1:7450")
    for given in (42, "emails.send"):
        with pytest.raises(miyaq.ConfigError, match="^app.task registers a function, not "):
            app.task(given)
    assert app.tasks == {}


def test_good_task_options_register_as_before():
    """Not a fault: every option within the node's ranges registers (None
    leaves an option to the node's default; ``eta`` may be a datetime),
    and so does a periodic task's."""
    app = miyaq.App("tcp://127.0.0.1:7450")

    @app.task(name="emails.send", queue="emails", priority=-3, eta=datetime.datetime(2030, 1, 1),
              ttl=60, max_retries=5, backoff=2.0, backoff_max=60, timeout=30, key="welcome:ann",
              replicas=2, at_most_once=True, offset=0, countdown=None)
    def send() -> None: ...

    @app.periodic(every=60, name="tick", queue="cron", timeout=10)
    def tick() -> None: ...

    assert app.tasks["emails.send"].options["queue"] == "emails"
    assert app.queues() == ["cron", "emails"]


def test_periodic_with_an_option_the_node_would_refuse_is_a_config_error():
    """Not a fault: ``@app.periodic(every=60, timeout=0)`` is still refused at
    decoration (ConfigError), now by the task's check as well as the schedule's."""
    app = miyaq.App("tcp://127.0.0.1:7450")
    with pytest.raises(miyaq.ConfigError, match="timeout"):
        app.periodic(every=60, name="tick", timeout=0)(lambda: None)


def test_miyaq_worker_on_an_app_with_a_bad_queue_fails_with_one_clear_line(tmp_path):
    """Fault: ``miyaq worker listqueue:app`` on an app whose task named a
    list as its queue exited with a traceback (TypeError: unhashable type:
    'list', in ``app.queues()``). Now the import of the app fails with the
    ConfigError, which the worker prints as one line."""
    (tmp_path / "listqueue.py").write_text(
        "import miyaq\napp = miyaq.App('tcp://127.0.0.1:7450')\n"
        "@app.task(name='m', queue=['a', 'b'])\ndef m(): pass\n")
    code, _, stderr = run_script(
        "import os, runpy, sys\n"
        "os.chdir(sys.argv[1])\n"
        "sys.argv = ['miyaq', 'worker', 'listqueue:app']\n"
        "runpy.run_module('miyaq', run_name='__main__')\n",
        str(tmp_path), timeout=60, hung="miyaq worker did not end on an app it cannot import")
    assert code != 0
    assert "Traceback" not in stderr
    assert "@app.task 'm': option 'queue' must be 1-128 characters" in stderr


@pytest.mark.parametrize("options, message", [
    (dict(green=True), "App(green=...) is not an option"),
    (dict(windw=100), "unknown client option(s) for App: windw (options: ack_timeout"),
])
def test_an_app_refuses_a_client_option_it_cannot_pass_on_at_once(options, message):
    """Bad input: ``App(green=True)`` (the app passes ``green`` itself) or a
    misspelt client option was a TypeError only at the app's first use of
    its client -- the first submit, often inside a request handler. Now
    ``App(...)`` refuses it with a ConfigError naming it."""
    with pytest.raises(miyaq.ConfigError) as raised:
        miyaq.App("tcp://127.0.0.1:1", **options)
    assert message in str(raised.value)


def test_an_apps_client_options_reach_its_clients():
    app = miyaq.App("tcp://127.0.0.1:1", window=7, request_timeout=3.0)
    client = app.client
    try:
        assert client.window == 7
    finally:
        app.close()
