"""The task app a chaos run's workers execute: ``miyaq.chaos.tasks:app``.

Each worker process is started as::

    miyaq worker miyaq.chaos.tasks:app --processes 1 --pool POOL --connect EPS

with ``MIYAQ_CHAOS_DIR`` and ``MIYAQ_CHAOS_WORKER`` (the name the run gave
the worker, ``worker3``) in its environment. The handler sleeps for the
time it is given (so a worker can be killed in the middle of a task), or
computes for it with ``busy`` (``miyaq chaos --busy``: CPU-bound code in
each pool), and
appends a ``start`` record before and a ``finish`` record after, each one
flushed to the kernel at once, to ``$MIYAQ_CHAOS_DIR/exec-<pid>.jsonl``,
``pid`` the process that runs the handler: a worker killed with SIGKILL
keeps every record it wrote (a torn last line is skipped by the reader).
Records carry the task id, attempt, that pid, the worker's name and the
endpoint of the node that gave the task to the worker.

Correct in every pool: the sleep is ``time.sleep`` -- gevent's cooperative
one in the gevent pool (the worker patched ``time`` before it imported this
module), a plain one in a handler thread of the threads pool or in a child
of the processes pool. A child writes a file of its own (its pid), and the
worker's name, inherited with the environment, is what ties its records
to the worker that the ``worker`` fault kills (that fault's record names
the worker's pid, not its children's; :mod:`.explain`).

A task may carry padding (``pad``: ``miyaq chaos --payload``) and ask for
a result of ``result`` bytes (``--result``): the large messages of a run
over slow links (docs/chaos.md, "Large tasks and slow links").

A task submitted with ``reject`` set (``miyaq chaos --reject-every K``)
raises :class:`~miyaq.errors.Reject` once it has written its finish record:
the failure that must not be retried, which the cluster must dead-letter
and never run again (the checker expects such a task to end ``dead``).

The environment is read on the first task, not at import (under the lock
the records are written under: the threads pool's first handlers start at
once, and before 2026-12-07 all but the one that opened the file wrote
nothing). Without ``MIYAQ_CHAOS_DIR`` the handler records nothing.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import IO, Any

from ..app import App
from ..errors import Reject
from ..worker.context import TaskContext, current_task

ENV_DIR = "MIYAQ_CHAOS_DIR"
ENV_WORKER = "MIYAQ_CHAOS_WORKER"
TASK_NAME = "miyaq.chaos.work"
QUEUE = "miyaq-chaos"
"""A queue of its own, so the workers of a deployment never take chaos tasks."""
MAX_SLEEP = 60.0
MAX_RESULT = 64 * 1024 * 1024
"""The largest result a handler makes (``miyaq chaos --result`` keeps to the nodes' ``max_payload``)."""

app = App()

_lock = threading.Lock()
_file: IO[str] | None = None
_opened = False
_worker: str | None = None


def exec_path(directory: str, pid: int) -> str:
    """Where worker process ``pid`` writes its records."""
    return os.path.join(directory, f"exec-{pid}.jsonl")


def _out() -> IO[str] | None:
    """The records file, opened on the first call; call under ``_lock``."""
    global _file, _opened, _worker
    if not _opened:
        _opened = True
        _worker = os.environ.get(ENV_WORKER) or None
        directory = os.environ.get(ENV_DIR)
        if directory:
            _file = open(exec_path(directory, os.getpid()), "a", encoding="utf-8")   # noqa: SIM115
    return _file


def node_endpoint(ctx: TaskContext) -> str | None:
    """The endpoint of the node that leased this task to the worker
    (``TaskContext.node``)."""
    return ctx.node


def record(event: str, ctx: TaskContext) -> None:
    """Append one record and flush it (one line, one write). The time is
    taken under the lock, so each file is in time order (the end-of-run
    merge relies on it)."""
    with _lock:
        out = _out()
        if out is None:
            return
        fields: dict[str, Any] = {"ev": event, "t": time.time(), "id": ctx.id, "attempt": ctx.attempt,
                                  "pid": os.getpid(), "node": node_endpoint(ctx)}
        if _worker is not None:
            fields["worker"] = _worker
        out.write(json.dumps(fields, separators=(",", ":")) + "\n")
        out.flush()


def spin(seconds: float) -> int:
    """Compute for ``seconds`` of wall-clock time without sleeping or
    yielding: what ordinary CPU-bound code does to a worker -- it holds the
    GIL between the interpreter's switches (threads pool), keeps the gevent
    hub from running (gevent pool: the worker's side-channel heartbeats,
    :mod:`miyaq.worker.pulse`, keep it registered) or keeps one child of
    the processes pool busy. Returns the rounds computed."""
    end = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < end:
        for _ in range(200):       # a little pure-Python work between looks at the clock
            rounds += 1
    return rounds // 200


@app.task(name=TASK_NAME, queue=QUEUE, max_retries=100, backoff=0.2, backoff_max=2.0, timeout=30)
def work(seconds: float = 0.0, seq: int = 0, reject: bool = False, pad: bytes = b"", result: int = 0,
         busy: bool = False) -> Any:
    """Sleep ``seconds`` (cooperatively in the gevent pool) between a start and a finish record
    -- or, with ``busy`` (``miyaq chaos --busy``), compute for that long
    (:func:`spin`: the GIL held, the gevent hub not given back);
    returns ``seq``, or ``result`` zero bytes when ``result`` is above 0
    (``miyaq chaos --result``; at most MAX_RESULT), or with ``reject``
    raises Reject after the finish record. ``pad`` is the task's padding
    (``--payload``), ignored. Retries are many and quick: a chaos task
    should only end dead-lettered when something is wrong, or when it
    rejected itself."""
    ctx = current_task()
    assert ctx is not None
    record("start", ctx)
    seconds = min(max(0.0, float(seconds)), MAX_SLEEP)
    if busy:
        spin(seconds)
    else:
        time.sleep(seconds)    # patched by gevent in the gevent pool
    record("finish", ctx)
    if reject:
        raise Reject(f"chaos task {seq} rejects itself: it must be dead-lettered, never run again")
    size = min(max(0, int(result)), MAX_RESULT)
    return bytes(size) if size else seq
