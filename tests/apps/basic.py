"""Handlers used by the tests. Each records what it did in ``EVENTS`` (in a
thread worker) or in the file named by $MIYAQ_TEST_EVENTS (in a process)."""
from __future__ import annotations

import json
import os
import time


import miyaq
from miyaq.errors import Reject, Retry
from miyaq.runtime import green

app = miyaq.App()
EVENTS: list[tuple] = []


def record(*event) -> None:
    EVENTS.append(event)
    path = os.environ.get("MIYAQ_TEST_EVENTS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(event) + "\n")


def read_events(path: str) -> list[list]:
    try:
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


@app.task(name="add")
def add(a, b):
    return a + b


@app.task(name="echo")
def echo(*args, **kwargs):
    ctx = miyaq.current_task()
    record("echo", ctx.id, ctx.queue, ctx.attempt, time.time(), list(args))
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="other", queue="other")
def other(x):
    record("other", miyaq.current_task().id, x)
    return x


@app.task(name="boom", max_retries=2, backoff=0.01)
def boom():
    ctx = miyaq.current_task()
    record("boom", ctx.id, ctx.attempt)
    raise ValueError("kaboom")


@app.task(name="flaky", max_retries=5, backoff=0.01)
def flaky(fail_times):
    ctx = miyaq.current_task()
    record("flaky", ctx.id, ctx.attempt)
    if ctx.attempt <= fail_times:
        raise Retry("not yet", delay=0.01)
    return ctx.attempt


@app.task(name="reject")
def reject():
    raise Reject("bad input")


@app.task(name="sleep")
def sleep(seconds, touch_every=None):
    ctx = miyaq.current_task()
    record("sleep-start", ctx.id, ctx.attempt, os.getpid())
    end = time.time() + seconds
    while time.time() < end:
        green.sleep(min(0.05, max(0.0, end - time.time())))
        if touch_every is not None:
            ctx.touch()
    record("sleep-end", ctx.id, ctx.attempt, os.getpid())
    return ctx.attempt


@app.task(name="sleep_then_fail")
def sleep_then_fail(seconds):
    """Sleeps, then raises: a failure reported after the node that gave the task may be gone."""
    ctx = miyaq.current_task()
    record("sleep-start", ctx.id, ctx.attempt, os.getpid())
    green.sleep(seconds)
    raise ValueError("failed after the sleep")


@app.task(name="spin")
def spin(seconds):
    """CPU-bound: never yields to the gevent hub."""
    ctx = miyaq.current_task()
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
    record("spin-end", ctx.id, ctx.attempt)
    return n
