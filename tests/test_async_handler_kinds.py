"""``@app.task`` tells an ``async def`` handler from a sync one however the
``async def`` is wrapped. Fault simulated: a handler declared under
``@staticmethod`` (or a callable object whose ``__call__`` is async) was
taken for a sync one; the worker called it on its pool and got a coroutine
back as the task's result -- the handler never ran and the task failed on a
result msgpack cannot pack (with a "coroutine was never awaited" warning)."""
from __future__ import annotations

import functools

import pytest

import miyaq


async def plain_async(x: int) -> int:
    return x


def plain_sync(x: int) -> int:
    return x


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x


class SyncCallable:
    def __call__(self, x: int) -> int:
        return x


@pytest.fixture
def app():
    app = miyaq.App("tcp://127.0.0.1:1")
    yield app
    app.close()


def test_an_async_def_under_staticmethod_runs_on_the_asyncio_loop(app):
    class Jobs:
        @app.task(name="jobs.static_async")
        @staticmethod
        async def fetch(x: int) -> int:
            return x

        @app.task(name="jobs.static_sync")
        @staticmethod
        def add(x: int) -> int:
            return x

    assert app.tasks["jobs.static_async"].is_async is True
    assert app.tasks["jobs.static_sync"].is_async is False


@pytest.mark.parametrize("fn, is_async", [
    (plain_async, True),
    (functools.partial(plain_async, 1), True),
    (AsyncCallable(), True),
    (functools.partial(AsyncCallable(), 1), True),
    (plain_sync, False),
    (functools.partial(plain_sync, 1), False),
    (SyncCallable(), False),
    (AsyncCallable, False),      # the class: calling it makes an instance
], ids=["async-def", "partial-of-async", "object-with-async-call", "partial-of-object-with-async-call", "def",
        "partial-of-def", "object-with-sync-call", "a-class"])
def test_each_kind_of_handler_is_told_async_or_not(app, fn, is_async):
    tdef = app.task(fn, name=f"kind.{id(fn)}")
    assert tdef.is_async is is_async


def test_a_sync_handler_that_returns_a_coroutine_fails_saying_so(recwarn):
    """Fault: a plain ``def`` returns a coroutine (a wrapper hiding an
    ``async def``): the worker runs it as a sync handler. Its task fails at
    once (``ResultNotSerializable``, not retried) saying the coroutine was
    never run and how to declare the handler; the coroutine is closed, so
    no "never awaited" warning follows it into the worker's log."""
    import gc

    import msgpack

    from miyaq.worker.execute import run_sync

    def wrapper(x: int):
        return plain_async(x)

    kind, error = run_sync(wrapper, msgpack.packb([[1], {}]))
    gc.collect()
    assert kind == "failed" and error["type"] == "ResultNotSerializable" and error["retry"] is False
    assert "returned a coroutine, which was never run" in error["message"]
    assert "async def" in error["message"]
    assert not [w for w in recwarn.list if "never awaited" in str(w.message)]
