"""The benchmark's task: a no-op handler run by ``miyaq bench``'s workers.

``miyaq bench`` starts each worker as::

    miyaq worker miyaq.bench.tasks:app --processes 1 --concurrency C --pool P --connect ENDPOINT

with ``MIYAQ_BENCH_CONNECT`` (the node endpoint, the App's default),
``MIYAQ_BENCH_RECORDS`` (a directory for record files) and
``MIYAQ_BENCH_WORK`` (what each task does) in its environment. The work is
``""`` (nothing: the no-op), ``"sleep:MS"`` (wait MS milliseconds,
yielding to the worker's other handlers), ``"block:MS"`` (``time.sleep``
for MS milliseconds, as ordinary blocking code would) or ``"cpu:MS"`` (burn
MS milliseconds of this thread's CPU time). When ``MIYAQ_BENCH_RECORDS`` is
set the handler appends one ``(task id, start, done)`` line to its
process's record file (:mod:`miyaq.bench.records`). Without either it does
and records nothing, so it can also serve as a plain no-op task.

The endpoint is read when this module is imported because the App is a
module attribute (the shape ``module:app`` requires); ``--connect`` on the
worker command line overrides it anyway.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from ..app import App
from ..runtime import green
from ..worker.context import current_task
from . import TASK_NAME
from .records import RecordWriter

ENV_CONNECT = "MIYAQ_BENCH_CONNECT"
ENV_RECORDS = "MIYAQ_BENCH_RECORDS"
ENV_WORK = "MIYAQ_BENCH_WORK"

app = App(os.environ.get(ENV_CONNECT, "tcp://127.0.0.1:7450"))

_writer: RecordWriter | None = None
_work: Callable[[], None] | None = None
_checked = False


def parse_work(spec: str) -> Callable[[], None] | None:
    """The work ``MIYAQ_BENCH_WORK`` names (see the module doc); None for none."""
    if not spec:
        return None
    kind, _, ms_text = spec.partition(":")
    seconds = float(ms_text) / 1000.0
    if kind == "block":
        return lambda: time.sleep(seconds)
    if kind == "sleep":
        return lambda: green.sleep(seconds)
    if kind == "cpu":
        def burn() -> None:
            end = time.thread_time() + seconds
            while time.thread_time() < end:
                pass
        return burn
    raise ValueError(f"unknown bench work {spec!r}")


def _setup() -> None:
    """Read the environment on the first task, not at import."""
    global _writer, _work, _checked
    _checked = True
    directory = os.environ.get(ENV_RECORDS)
    if directory:
        _writer = RecordWriter(directory)
    _work = parse_work(os.environ.get(ENV_WORK, ""))


@app.task(name=TASK_NAME)
def noop(payload: Any = None) -> None:
    """Do the bench's work (none by default); record when this run started
    and when it was done."""
    start = time.time()
    if not _checked:
        _setup()
    if _work is not None:
        _work()
    writer = _writer
    if writer is not None:
        ctx = current_task()
        if ctx is not None:
            writer.write(ctx.id, start, time.time())
