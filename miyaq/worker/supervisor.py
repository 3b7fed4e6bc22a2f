"""Runs worker processes and keeps them running.

``--processes 1`` runs the worker in this process. More starts children with
the ``spawn`` method (never fork a gevent process), restarts a child that
dies with a growing delay (at most ``MAX_RESTARTS_PER_MINUTE``), and passes
SIGTERM/SIGINT on, waiting for the children to drain.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

MAX_RESTARTS_PER_MINUTE = 10


@dataclass
class WorkerSpec:
    app: str
    queues: list[str] | None = None
    concurrency: int = 8
    prefetch: int | None = None
    endpoints: list[str] | None = None
    heartbeat: float = 1.0
    grace: float = 30.0
    log_level: str = "INFO"


def run_one(spec: WorkerSpec) -> int:
    """Run one worker in this process until SIGTERM/SIGINT."""
    from ..cli.main import setup_logging
    setup_logging(spec.log_level)
    from .app import load_app
    from .runner import Worker
    app = load_app(spec.app)
    worker = Worker(app, queues=spec.queues, concurrency=spec.concurrency, prefetch=spec.prefetch,
                    endpoints=spec.endpoints, heartbeat=spec.heartbeat, grace=spec.grace)
    worker.install_signal_handlers()
    worker.run()
    return 0


def _child(spec: WorkerSpec) -> None:
    sys.exit(run_one(spec))


def run_supervised(spec: WorkerSpec, processes: int) -> int:
    if processes == 1:
        return run_one(spec)
    from ..cli.main import setup_logging
    setup_logging(spec.log_level)
    from .app import load_app
    load_app(spec.app)   # fail fast, in the parent, on a bad module:attribute
    ctx = multiprocessing.get_context("spawn")
    children: list[Any] = []
    stopping = False
    restarts: list[float] = []

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.is_alive() and child.pid:
                try:
                    import os
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for _ in range(processes):
        child = ctx.Process(target=_child, args=(spec,), daemon=False)
        child.start()
        children.append(child)
    while True:
        if stopping:
            for child in children:
                child.join(spec.grace + 5)
                if child.is_alive():
                    child.kill()
            return 0
        for i, child in enumerate(children):
            if not child.is_alive():
                now = time.time()
                restarts[:] = [t for t in restarts if t > now - 60] + [now]
                if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                    logger.error("workers keep dying (%d restarts in a minute); giving up", len(restarts))
                    on_signal(signal.SIGTERM, None)
                    continue
                logger.warning("worker process %s exited with %s; restarting", child.pid, child.exitcode)
                time.sleep(min(5.0, 0.2 * len(restarts)))
                children[i] = ctx.Process(target=_child, args=(spec,), daemon=False)
                children[i].start()
        time.sleep(0.2)
