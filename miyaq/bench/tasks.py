"""The benchmark's task: a no-op handler run by ``miyaq bench``'s workers.

``miyaq bench`` starts each worker as::

    miyaq worker miyaq.bench.tasks:app --processes 1 --concurrency C --connect ENDPOINT

with ``MIYAQ_BENCH_CONNECT`` (the node endpoint, the App's default) and
``MIYAQ_BENCH_RECORDS`` (a directory for record files) in its environment.
The handler does no work; when ``MIYAQ_BENCH_RECORDS`` is set it appends one
``(task id, start, done)`` line to its process's record file
(:mod:`miyaq.bench.records`). Without it the handler records nothing, so it
can also serve as a plain no-op task.

The endpoint is read when this module is imported because the App is a
module attribute (the shape ``module:app`` requires); ``--connect`` on the
worker command line overrides it anyway.
"""
from __future__ import annotations

import os
import time
from typing import Any

from ..app import App
from ..worker.context import current_task
from .records import RecordWriter

ENV_CONNECT = "MIYAQ_BENCH_CONNECT"
ENV_RECORDS = "MIYAQ_BENCH_RECORDS"
TASK_NAME = "miyaq.bench.noop"

app = App(os.environ.get(ENV_CONNECT, "tcp://127.0.0.1:7450"))

_writer: RecordWriter | None = None
_checked = False


def _recorder() -> RecordWriter | None:
    """This process's writer, or None when the bench asked for no records.
    The environment is read on the first task, not at import."""
    global _writer, _checked
    if not _checked:
        _checked = True
        directory = os.environ.get(ENV_RECORDS)
        if directory:
            _writer = RecordWriter(directory)
    return _writer


@app.task(name=TASK_NAME)
def noop(payload: Any = None) -> None:
    """Do nothing; record when this run started and when it was done."""
    start = time.time()
    writer = _writer if _checked else _recorder()
    if writer is not None:
        ctx = current_task()
        if ctx is not None:
            writer.write(ctx.id, start, time.time())
