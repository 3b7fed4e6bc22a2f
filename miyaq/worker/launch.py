"""Runs worker processes and keeps them running: ``miyaq worker``'s main.

``--processes 1`` runs the worker in this process (with the gevent pool,
in a fresh interpreter that patches first: :mod:`miyaq.worker.main`). More
starts that many ``python -m miyaq.worker.main`` children (spawned, never
forked from a gevent process), restarts a child that dies with a growing
delay (at most ``MAX_RESTARTS_PER_MINUTE``) -- a child that cannot be
started (the limit on processes: ``ulimit -u``) is logged and counts as
such a restart --, and passes a stop on, waiting
for the children to drain: its first SIGTERM, SIGINT or SIGHUP as SIGTERM,
a second as :data:`~miyaq.worker.config.HURRY_SIGNAL` (end the wait for
running handlers at once). The children are told they are supervised
(``--supervised``): they ignore SIGINT and SIGHUP, which a terminal sends
the whole process group, and take the stop from the supervisor alone.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

from ..runtime import green, heap, monotonic
from .config import (
    CHILD_STOP_SLACK, HURRY_SIGNAL, MAX_RESTARTS_PER_MINUTE, PROCESS_POLL, RESTART_DELAY_MAX, WorkerConfig,
)
from .interpreter import interpreter_flags

logger = logging.getLogger(__name__)


def run_one(app_spec: str, config: WorkerConfig, supervised: bool = False) -> int:
    """Run one worker in this process until SIGTERM, SIGINT or SIGHUP (only
    SIGTERM and :data:`HURRY_SIGNAL` when ``supervised``: a process of
    ``--processes N``). Exit status 1 if a critical part of the worker died."""
    from ..logs import setup_logging
    setup_logging(config.log_level)
    from .loader import load_app
    from .runner import Worker
    from .signals import stop_on_signals
    # The worker's settings as MIYAQ_* variables, as in a child it starts:
    # an App() that reads MIYAQ_CONNECT submits to the worker's nodes.
    environ = config.environ(os.environ)
    for name in set(os.environ) - set(environ):
        del os.environ[name]
    os.environ.update(environ)
    app = load_app(app_spec)
    worker = Worker(app, config, app_spec=app_spec)
    stop_on_signals(worker, supervised)
    green.log_hub_errors()          # not gevent's stderr: the log, bounded
    heap.freeze_startup_heap()      # the app and everything it imports are loaded: miyaq.runtime.heap
    worker.run()
    return 1 if worker.crashed else 0


def worker_command(app_spec: str, supervised: bool = False) -> list[str]:
    """The command line of a worker process (re-exec'd, or one of ``--processes N``):
    this interpreter, with its options (:func:`~miyaq.worker.interpreter.interpreter_flags`)."""
    return [sys.executable, *interpreter_flags(), "-m", "miyaq.worker.main",
            *(["--supervised"] if supervised else []), app_spec]


def run_supervised(app_spec: str, config: WorkerConfig, supervised: bool = False) -> int:
    """``miyaq worker``: one worker process here, or ``processes`` children.
    Exit status 1 when it gave up on children that kept dying (before
    2026-12-04: 0, as after a clean stop, hiding it from a service manager).
    ``supervised``: this is one of those children (:func:`run_one`)."""
    if config.processes == 1 or supervised:
        if config.pool == "gevent" and not green.is_patched("socket"):
            # Patch in a fresh interpreter: this one imported ssl & co. already.
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, worker_command(app_spec, supervised), config.environ(os.environ))
        return run_one(app_spec, config, supervised)
    from ..logs import setup_logging
    setup_logging(config.log_level)
    from .loader import load_app
    load_app(app_spec)   # fail fast, in the parent, on a bad module:attribute
    env = replace(config, processes=1).environ(os.environ)
    children: list[subprocess.Popen[bytes] | None] = []     # None: a slot whose process could not start
    stopping = False
    gave_up = False
    restarts: list[float] = []
    hurried = False
    told: set[int] = set()      # pids sent SIGTERM
    hurried_pids: set[int] = set()      # pids sent HURRY_SIGNAL

    def tell_to_stop(child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None and child.pid not in told:
            told.add(child.pid)
            child.send_signal(signal.SIGTERM)
        if hurried and child.poll() is None and child.pid not in hurried_pids:
            hurried_pids.add(child.pid)
            child.send_signal(HURRY_SIGNAL)

    def stop_all() -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child is not None:
                tell_to_stop(child)

    def on_signal(signum: int, frame: object) -> None:
        """SIGTERM, SIGINT, SIGHUP: tell every child to stop; once stopping,
        a second one tells them to wait no longer for running handlers."""
        nonlocal hurried
        if stopping and not hurried:
            hurried = True
            logger.warning("worker processes: asked again to stop: telling them not to wait for running tasks "
                           "any longer")
        stop_all()

    def start_child(slot: int | None) -> None:
        """Start a worker process (in ``slot``, else a new one). One started
        while a stop signal arrived is told to stop too: the handler may have
        run before it was in ``children`` (before 2026-12-05 a child
        restarted during a stop took new tasks and was killed mid-task at
        the end of the grace). One that cannot be started (the system
        refuses a process: ``ulimit -u``) leaves the slot empty, logged; the
        loop starts it again as it restarts a process that died (before
        2026-12-06 the supervisor exited 1 with a traceback)."""
        child: subprocess.Popen[bytes] | None
        try:
            child = subprocess.Popen(worker_command(app_spec, supervised=True), env=env)
        except OSError as exc:
            logger.error("cannot start a worker process: %s (the limit on processes, ulimit -u?); trying again "
                         "as for a worker process that exits", exc)
            child = None
        if slot is None:
            children.append(child)
        else:
            children[slot] = child
        if stopping and child is not None:
            tell_to_stop(child)

    def on_hurry(signum: int, frame: object) -> None:
        """:data:`HURRY_SIGNAL` sent to the supervisor itself (the pid an
        operator knows): stop, and wait no longer for running handlers, as
        a second stop signal does (before 2026-12-05's review its default
        action killed the supervisor and left its processes running)."""
        nonlocal hurried
        hurried = True
        stop_all()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    signal.signal(HURRY_SIGNAL, on_hurry)
    for _ in range(config.processes):
        if not stopping:
            start_child(None)
    while True:
        if stopping:
            # One deadline for all (they got SIGTERM together), not one each
            # in turn: the last of N stuck workers is killed after the same wait.
            deadline = monotonic() + config.grace + CHILD_STOP_SLACK
            for child in children:
                if child is None:
                    continue
                try:
                    child.wait(max(0.0, deadline - monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            return 1 if gave_up else 0
        for i, child in enumerate(children):
            if stopping:
                break               # the ones that exit now were told to
            if child is None or child.poll() is not None:
                now = monotonic()
                restarts[:] = [t for t in restarts if t > now - 60] + [now]
                if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                    logger.error("workers keep dying or cannot start (%d restarts in a minute); giving up",
                                 len(restarts))
                    gave_up = True
                    stop_all()
                    break
                if child is not None:
                    logger.warning("worker process %s exited with %s; restarting", child.pid, child.returncode)
                time.sleep(min(RESTART_DELAY_MAX, 0.2 * len(restarts)))
                if stopping:
                    break           # asked to stop during the delay: nothing to restart
                start_child(i)
        time.sleep(PROCESS_POLL)
