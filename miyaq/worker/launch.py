"""Runs worker processes and keeps them running: ``miyaq worker``'s main.

``--processes 1`` runs the worker in this process. More starts children with
the ``spawn`` method (never fork a gevent process), restarts a child that
dies with a growing delay (at most ``MAX_RESTARTS_PER_MINUTE``), and passes
SIGTERM/SIGINT on, waiting for the children to drain.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from ..runtime import monotonic
from .config import CHILD_STOP_SLACK, MAX_RESTARTS_PER_MINUTE, PROCESS_POLL, RESTART_DELAY_MAX, WorkerConfig

logger = logging.getLogger(__name__)


def run_one(app_spec: str, config: WorkerConfig) -> int:
    """Run one worker in this process until SIGTERM/SIGINT. Exit status 1
    if a critical part of the worker died."""
    from ..logs import setup_logging
    setup_logging(config.log_level)
    from .loader import load_app
    from .runner import Worker
    app = load_app(app_spec)
    worker = Worker(app, config)
    worker.install_signal_handlers()
    worker.run()
    return 1 if worker.crashed else 0


def _child(app_spec: str, config: WorkerConfig) -> None:
    sys.exit(run_one(app_spec, config))


def run_supervised(app_spec: str, config: WorkerConfig) -> int:
    if config.processes == 1:
        return run_one(app_spec, config)
    from ..logs import setup_logging
    setup_logging(config.log_level)
    from .loader import load_app
    load_app(app_spec)   # fail fast, in the parent, on a bad module:attribute
    ctx = multiprocessing.get_context("spawn")
    children: list[Any] = []
    stopping = False
    restarts: list[float] = []

    def start_child() -> Any:
        child = ctx.Process(target=_child, args=(app_spec, config), daemon=False)
        child.start()
        return child

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.is_alive() and child.pid:
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children.extend(start_child() for _ in range(config.processes))
    while True:
        if stopping:
            for child in children:
                child.join(config.grace + CHILD_STOP_SLACK)
                if child.is_alive():
                    child.kill()
            return 0
        for i, child in enumerate(children):
            if not child.is_alive():
                now = monotonic()
                restarts[:] = [t for t in restarts if t > now - 60] + [now]
                if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                    logger.error("workers keep dying (%d restarts in a minute); giving up", len(restarts))
                    on_signal(signal.SIGTERM, None)
                    continue
                logger.warning("worker process %s exited with %s; restarting", child.pid, child.exitcode)
                time.sleep(min(RESTART_DELAY_MAX, 0.2 * len(restarts)))
                children[i] = start_child()
        time.sleep(PROCESS_POLL)
