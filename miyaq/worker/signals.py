"""The signals a worker process acts on, and those it leaves to someone else.

:func:`stop_on_signals` maps SIGTERM, SIGINT and SIGHUP (or, in a process of
``miyaq worker --processes N``, SIGTERM and the supervisor's
:data:`~miyaq.worker.config.HURRY_SIGNAL`) to the worker's stop.

Signals taken from someone else are disregarded, not ignored.

A worker process of ``miyaq worker --processes N`` leaves SIGINT and SIGHUP
to its supervisor (a terminal sends them the whole process group), and a
processes pool's child leaves SIGINT, SIGTERM and SIGHUP to its pool. Set to
``SIG_IGN``, a signal stays ignored in every program the process starts:
before 2026-12-05's review, a handler's own subprocess (ffmpeg, another
Python) could then never be interrupted with SIGINT or ended by SIGHUP. A
handler that does nothing is reset to the default action in a program the
process executes, so :func:`disregard` installs one instead.
"""
from __future__ import annotations

import logging
import os
import signal
from typing import Any, Callable, Protocol

from ..runtime import LOG, Supervisor, green
from .config import HURRY_SIGNAL, SUPERVISOR_CHECK

logger = logging.getLogger(__name__)


class Stoppable(Protocol):
    """What the signals stop: a :class:`~miyaq.worker.runner.Worker`."""

    wid: str
    stopping: bool
    supervisor: Supervisor

    def ask_stop(self) -> None: ...

    def hurry(self) -> None: ...

    def stop(self, grace: float | None = None) -> None: ...


def _disregarded(signum: int, frame: Any) -> None:
    """Nothing: the signal is someone else's to act on."""


def disregard(*signums: int) -> None:
    """Let ``signums`` do nothing in this process, and their default in the
    programs it starts (unlike ``SIG_IGN``). From the main thread."""
    for signum in signums:
        signal.signal(signum, _disregarded)


_forks_hooked = False


def default_in_forked_copies() -> None:
    """Give a process forked from this one -- a handler's ``os.fork()``, a
    ``multiprocessing`` process started by fork -- the signals of a fresh
    Python: SIGTERM, SIGHUP and :data:`HURRY_SIGNAL` their default action,
    SIGINT ``KeyboardInterrupt``. Not the worker's stop nor the pool's
    disregard: before (syncteam, 2026-12-08) a handler's forked helper
    outlived the SIGTERM, SIGINT and SIGHUP its handler sent it, in every
    pool (``multiprocessing.Process.terminate()`` did nothing). Once a
    process; from the main thread."""
    global _forks_hooked
    if not _forks_hooked:
        os.register_at_fork(after_in_child=_fresh_signals)
        _forks_hooked = True


def _fresh_signals() -> None:
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, HURRY_SIGNAL):
            signal.signal(signum, signal.SIG_DFL)
    except (ValueError, OSError):       # not the main thread: the copy keeps what it had
        pass


def stop_on_signals(worker: Stoppable, supervised: bool = False) -> None:
    """SIGTERM, SIGINT and SIGHUP (the terminal closed) stop the worker
    (:meth:`~Stoppable.ask_stop`); a second one ends the wait for running
    handlers. ``supervised`` (a process of ``miyaq worker --processes N``):
    SIGINT and SIGHUP, which a terminal sends the whole process group, are
    disregarded -- the supervisor gets them too and passes the stop on as
    SIGTERM, so one Ctrl-C is not counted twice; SIGTERM stops (a repeat is
    the same request: ``kill -TERM -PGID`` reaches this process and its
    supervisor, which passes it on) and :data:`HURRY_SIGNAL`, which the
    supervisor sends on its second signal, ends the wait; and the process
    stops when its supervisor is gone (:func:`_watch_supervisor`). Before
    2026-12-05 SIGHUP killed the worker outright (its running tasks stayed
    running at the node until its heartbeats were missed) and a second
    signal was ignored (the whole grace was waited). From the main thread,
    before the worker runs."""
    def spawn(fn: Callable[[], None]) -> Callable[[], None]:
        return lambda: worker.supervisor.spawn("stop", fn)
    default_in_forked_copies()
    if supervised:
        disregard(signal.SIGINT, signal.SIGHUP)     # not SIG_IGN: a handler's subprocess would inherit it
        green.on_signal(signal.SIGTERM, spawn(worker.stop))
        green.on_signal(HURRY_SIGNAL, spawn(worker.hurry))
        worker.supervisor.spawn("supervisor watch", _watch_supervisor, worker, os.getppid(), policy=LOG)
        return
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        green.on_signal(sig, spawn(worker.ask_stop))


def _watch_supervisor(worker: Stoppable, supervisor_pid: int) -> None:
    """A process of ``--processes N`` whose supervisor is gone (SIGKILL, a
    crash) stops as on SIGTERM: nobody is left to stop or restart it, and it
    disregards the SIGINT and SIGHUP a terminal sends (before 2026-12-05's
    review it ran on, taking tasks, for good)."""
    while os.getppid() == supervisor_pid:
        green.sleep(SUPERVISOR_CHECK)
    logger.warning("worker %s: its supervisor (pid %d) is gone; stopping", worker.wid, supervisor_pid)
    if not worker.stopping:
        worker.stop()
