"""``tdef.submit()``, ``submit_with()``, ``call()`` and their asyncio forms
check the handler's arguments before anything is sent: a call the handler
cannot take (an argument missing or extra, an unknown keyword) raises
``TypeError`` at once, as calling the function would, instead of a task
whose every attempt fails in the worker with that TypeError, retried, then
dead-lettered. Celery checks the same at ``delay()``."""
from __future__ import annotations

import asyncio
import functools

import pytest

import miyaq

pytestmark = pytest.mark.timeout(60)


def _app(endpoint: str) -> miyaq.App:
    app = miyaq.App(endpoint)

    @app.task(name="add")
    def add(a, b):
        return a + b

    @app.task(name="greet")
    def greet(name, greeting="hello", *, punctuation="!"):
        return f"{greeting} {name}{punctuation}"

    @app.task(name="anything")
    def anything(*args, **kwargs):
        return [list(args), kwargs]

    @app.task(name="paged")
    def paged(query, offset=0):
        return [query, offset]

    app.task(max, name="builtin.max")      # a signature inspect cannot read: not checked

    def with_session(fn):
        """A decorator that passes its own first argument (a database
        session, a connection): the wrapper, not ``fn``, is what runs."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn("session", *args, **kwargs)
        return wrapper

    @app.task(name="with_session")
    @with_session
    def with_session_task(session, a, b):
        return [session, a, b]

    return app


def _live(client) -> int:
    return client.status()["totals"]["live"]


@pytest.fixture
def app(node):
    app = _app(node.endpoint)
    yield app
    app.close()


@pytest.mark.parametrize("call,args,kwargs,said", [
    ("submit", (1,), {}, "missing a required argument: 'b'"),
    ("submit", (1, 2, 3), {}, "too many positional arguments"),
    ("call", (1,), {}, "missing a required argument: 'b'"),
    ("submit", (1, 2), {"expires": 60}, "unexpected keyword argument 'expires'"),
])
def test_arguments_the_handler_cannot_take_raise_at_once_nothing_sent(app, client, call, args, kwargs, said):
    """Fault: ``add.submit(1)`` (an argument forgotten), ``add.submit(1, 2,
    3)``, or Celery's ``expires=`` passed to ``submit`` (not a miyaq option,
    so a handler argument). Before 2026-12-07 each was accepted, and every
    attempt failed in the worker (``TypeError: add() missing 1 required
    positional argument``), retried with backoff and dead-lettered seconds
    later. Now TypeError here, naming the task and the handler's
    signature; the node holds nothing."""
    add = app.tasks["add"]
    with pytest.raises(TypeError) as err:
        getattr(add, call)(*args, **kwargs)
    message = str(err.value)
    assert message.startswith("task 'add' not sent: its handler add(a, b) cannot take these arguments ("), message
    assert said in message, message
    if "expires" in kwargs:
        assert "'expires' is not a miyaq option: 'ttl'" in message, message
    app.client.flush(timeout=10)
    assert _live(client) == 0


def test_a_handler_parameter_named_like_an_option_is_pointed_to_submit_with(app, client):
    """Mistake: ``lookup.submit("ann", key="k1")`` for ``def lookup(name,
    key)``: ``key`` is the task option (deduplication), so the handler
    misses its argument. The TypeError says so and names ``submit_with``;
    ``submit_with`` sends it."""
    lookup = app.task(lambda name, key: [name, key], name="lookup")
    with pytest.raises(TypeError) as err:
        lookup.submit("ann", key="k1")
    assert "missing a required argument: 'key'" in str(err.value)
    assert "'key' was taken as the task option, not the handler's parameter: pass it with submit_with(" \
        in str(err.value), str(err.value)
    assert lookup.submit_with(["ann"], {"key": "k1"}).wait_accepted(timeout=10).accepted


def test_submit_with_checks_its_args_and_kwargs(app, client):
    """Fault: ``greet.submit_with(["ann"], {"greting": "hi"})``, a typo in a
    keyword. TypeError at once; nothing stored."""
    greet = app.tasks["greet"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'greting'"):
        greet.submit_with(["ann"], {"greting": "hi"})
    with pytest.raises(TypeError, match="missing a required argument: 'name'"):
        greet.submit_with([], {})
    app.client.flush(timeout=10)
    assert _live(client) == 0


def test_submit_with_args_given_as_a_string_is_checked_as_the_characters_sent(app, client):
    """Fault: ``greet.submit_with("ann")`` (the list forgotten). The client
    sends ``list(args)``, three arguments, so every attempt failed in the
    worker with TypeError; the check looked only at a list or a tuple
    (before review36, 2026-12-07) and let it through. Now TypeError at
    once, nothing stored; a string the handler can take as characters is
    sent as before."""
    greet = app.tasks["greet"]
    with pytest.raises(TypeError, match="too many positional arguments"):
        greet.submit_with("ann")
    app.client.flush(timeout=10)
    assert _live(client) == 0
    assert greet.submit_with("an").wait_accepted(timeout=10).accepted     # name="a", greeting="n"


def test_the_asyncio_calls_check_too(app, client):
    """Fault: ``await add.submit_async(1)`` and ``await add.call_async(1,
    2, 3)`` from asyncio code: TypeError before anything reaches the
    app's ``miyaq.aio`` client."""
    add = app.tasks["add"]

    async def main() -> None:
        with pytest.raises(TypeError, match="missing a required argument: 'b'"):
            await add.submit_async(1)
        with pytest.raises(TypeError, match="too many positional arguments"):
            await add.call_async(1, 2, 3)
        await app.aclose()

    asyncio.run(main())
    assert _live(client) == 0


def test_calls_the_handler_takes_are_sent_as_before(app, client):
    """Guard: defaults, keyword-only parameters, ``*args``/``**kwargs``,
    ``offset`` (a handler argument for ``submit``), task options beside the
    arguments, and a handler whose signature cannot be read are all sent."""
    handles = [
        app.tasks["add"].submit(1, b=2, countdown=600),
        app.tasks["greet"].submit("ann"),
        app.tasks["greet"].submit("ann", "hi", punctuation="?", priority=-1),
        app.tasks["greet"].submit_with(["ann"], {"greeting": "hi"}, key="greet-ann"),
        app.tasks["anything"].submit(1, 2, 3, x=4, queue="other"),
        app.tasks["paged"].submit("q", offset=20),
        app.tasks["builtin.max"].submit(1, 2, 3, whatever=1),
        # functools.wraps points at the wrapped function, whose first parameter
        # the decorator fills: the wrapper's own signature is what is checked.
        app.tasks["with_session"].submit(1, 2),
    ]
    app.client.flush(timeout=10)
    assert all(h.accepted for h in handles)
    assert _live(client) == len(handles)


def test_the_quick_check_agrees_with_signature_bind_on_every_call():
    """Guard: the check without ``Signature.bind`` (``_Shape``) says a call
    is taken exactly when ``bind`` says so, on every call of up to four
    positional arguments and any subset of the keywords (and one unknown)
    for handlers of named parameters: never a false "takes"."""
    import itertools

    from miyaq.taskdef import _parameters

    def a(x, y): ...
    def b(x, y=1): ...
    def c(x=1, y=2): ...
    def d(x, *, k): ...
    def e(x, y=0, *, k=1, m): ...
    def f(): ...
    def g(*, k=1): ...

    checked = 0
    for fn in (a, b, c, d, e, f, g):
        signature, shape = _parameters(fn)
        assert shape is not None
        names = [*signature.parameters, "unknown"]
        for count in range(5):
            for size in range(len(names) + 1):
                for keys in itertools.combinations(names, size):
                    kwargs = {k: 0 for k in keys}
                    try:
                        signature.bind(*range(count), **kwargs)
                        takes = True
                    except TypeError:
                        takes = False
                    assert shape.takes(count, kwargs) is takes, (fn.__name__, count, kwargs)
                    checked += 1
    assert checked > 300
    assert _parameters(lambda *args: None)[1] is None
