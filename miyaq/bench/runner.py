"""One bench run: bring up the fleet, load it, wait for the drain, measure.

What the times mean (all ``time.time()`` on this one machine: the bench,
its node and its workers are local processes sharing one clock):

* **submit** -- read by the bench just before it calls ``Client.submit()``
  for the task. In fast mode this includes time the call spends blocked on a
  full client window, so submit -> start also measures queueing behind the
  tasks submitted earlier: it is the latency of a saturated queue.
* **start** -- read by the no-op handler as its first statement, in the
  worker process: after the node leased the task, the DISPATCH crossed the
  socket, and a runner greenlet picked it from the worker's backlog.
* **done** -- read by the handler as its last statement (the return value
  is known). The DONE report to the node leaves in the worker's next outbox
  flush and is not included; the bench confirms through STATUS that the node
  saw every task finish before it reads the records.
* **last acknowledgement** -- when ``Client.flush()`` returned: every
  submit's SUBMITTED reply had arrived.

Rates: enqueue = accepted / (last acknowledgement - first submit); drain =
completed / (last done - first submit). Start and done come from record
files the workers write (:mod:`miyaq.bench.records`) and the bench reads
after the workers exit, so nothing is measured through the node under test
and the node does no extra work. A task id seen in more than one record is
a duplicate execution.
"""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from ..errors import MiyaqError
from .fleet import Fleet
from .load import Load, run_load
from .procs import ProcessGroup
from .progress import Progress
from .records import Records, read_records
from .stats import match, rate, summarize_ms
from .tasks import TASK_NAME

DRAIN_POLL = 0.02
LIVE_STATES = ("scheduled", "ready", "running", "retrying")


@dataclass
class BenchConfig:
    workers: int = 2
    concurrency: int = 8
    tasks: int = 20_000
    payload: int = 100
    rate: float | None = None
    connect: str | None = None
    timeout: float = 120.0
    fsync: str | None = None        # start the node with a log in a temp dir, this fsync policy


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so cleanup runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_bench(cfg: BenchConfig, progress_stream: TextIO | None = None) -> dict[str, Any]:
    """Run the benchmark and return its result (see :func:`_result`).
    Raises MiyaqError when the node or the workers cannot be brought up."""
    deadline = time.monotonic() + cfg.timeout
    tag = "b" + uuid.uuid4().hex[:12]
    with _sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="miyaq-bench-") as tmp:
        records_dir = os.path.join(tmp, "records")
        os.mkdir(records_dir)
        fleet = Fleet(ProcessGroup(tmp), connect=cfg.connect, workers=cfg.workers,
                      concurrency=cfg.concurrency, queue=f"bench-{tag}", records_dir=records_dir,
                      deadline=deadline, fsync=cfg.fsync, data_dir=os.path.join(tmp, "node-data"))
        try:
            fleet.start()
            return _measure(cfg, fleet, tag, records_dir, deadline, progress_stream)
        finally:
            fleet.close()


def _completed(fleet: Fleet) -> int:
    return int(fleet.status().get("outcomes", {}).get("completed", 0))


def _measure(cfg: BenchConfig, fleet: Fleet, tag: str, records_dir: str, deadline: float,
             progress_stream: TextIO | None) -> dict[str, Any]:
    assert fleet.client is not None
    load = Load()
    progress = None
    if progress_stream is not None:
        baseline = _completed(fleet)
        progress = Progress(progress_stream, cfg.tasks, lambda: load.submitted,
                            lambda: _completed(fleet) - baseline).start()
    try:
        run_load(fleet.client, name=TASK_NAME, queue=fleet.queue, tag=tag, tasks=cfg.tasks,
                 payload=b"x" * cfg.payload, rate=cfg.rate, deadline=deadline, load=load)
        observed_end, row = _wait_drained(fleet, load, deadline)
    finally:
        if progress is not None:
            progress.stop()
    rss = fleet.node_peak_rss()
    fleet.stop_workers()
    records = read_records(records_dir, tag + "-")
    return _result(cfg, fleet, load, records, tag, row, observed_end, rss)


def _wait_drained(fleet: Fleet, load: Load, deadline: float) -> tuple[float, dict[str, Any] | None]:
    """Poll the bench queue until it holds no live task (every accepted task
    is done or dead), a child exits, or the deadline passes. Returns when
    that was observed and the queue's last counters."""
    row: dict[str, Any] | None = None
    while True:
        try:
            fleet.check_children()
            row = fleet.queue_row()
        except MiyaqError as err:
            load.errors.append(f"stopped waiting for completions: {err.message}")
            return time.time(), row
        if row is None or sum(int(row.get(s, 0)) for s in LIVE_STATES) == 0:
            return time.time(), row
        if time.monotonic() >= deadline:
            live = sum(int(row.get(s, 0)) for s in LIVE_STATES)
            load.errors.append(f"timeout: {live} task(s) still unfinished")
            return time.time(), row
        time.sleep(DRAIN_POLL)


def _result(cfg: BenchConfig, fleet: Fleet, load: Load, records: Records, tag: str,
            row: dict[str, Any] | None, observed_end: float, rss: int | None) -> dict[str, Any]:
    matched = match(tag, load.submit_times, records)
    accepted = load.accepted
    errors = list(load.errors)
    dead = int(row.get("dead", 0)) if row else 0
    unfinished = sum(int(row.get(s, 0)) for s in LIVE_STATES) if row else 0
    if dead:
        errors.append(f"{dead} task(s) failed and were dead-lettered")
    missing = accepted - matched.completed - dead - unfinished
    if missing > 0:
        errors.append(f"{missing} task(s) finished on the node but left no record "
                      "(did a worker exit uncleanly?)")
    enqueue_s = load.acked_at - load.first_submit if load.submitted else 0.0
    last_done = matched.last_done if matched.last_done is not None else observed_end
    drain_s = last_done - load.first_submit if load.submitted else 0.0
    return {
        "config": asdict(cfg),
        "node": fleet.endpoint,
        "submitted": load.submitted,
        "accepted": accepted,
        "completed": matched.completed,
        "enqueue_seconds": round(enqueue_s, 4),
        "enqueue_rate": rate(accepted, enqueue_s),
        "drain_seconds": round(drain_s, 4),
        "drain_rate": rate(matched.completed, drain_s),
        "latency": {"submit_to_start_ms": summarize_ms(matched.to_start),
                    "submit_to_done_ms": summarize_ms(matched.to_done)},
        "node_peak_rss_bytes": rss,
        "duplicates": records.duplicates,
        "errors": errors,
    }
