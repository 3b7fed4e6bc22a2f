"""The parent's handle on one child of the processes pool
(:class:`ChildProcess`): the command that starts it (:func:`child_command`,
its first lines :data:`CHILD_BOOT`) and how it is killed, with the
programs its handler started (:func:`kill_group`). Moved out of
:mod:`~miyaq.worker.pools.processes` (past 400 lines).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from ...runtime import monotonic
from ..interpreter import interpreter_flags
from ..jobs import Job
from ..execute import Outcome


#: A child's first lines: the signals its pool acts on (a Ctrl-C reaches the
#: whole process group) do nothing from here on, then the child's module
#: runs (:func:`miyaq.worker.signals.disregard`, without importing miyaq for
#: it). Started with ``-m``, a child took them only in its ``main()``, after
#: importing the package: a Ctrl-C as it started (the worker's start, or a
#: child replacing one) printed a KeyboardInterrupt traceback from a child
#: that died (before 2026-12-07).
CHILD_BOOT = ("import os, runpy, signal, sys\n"
              # sys.path[0] as -m makes it: -c puts '' first (the directory of the moment),
              # -P/PYTHONSAFEPATH nothing (the first is PYTHONPATH's, kept), a deleted one nothing
              "if not sys.flags.safe_path and sys.path and sys.path[0] == '':\n"
              "    try: sys.path[0] = os.getcwd()\n"
              "    except OSError: del sys.path[0]\n"
              "def _disregarded(signum, frame): pass\n"
              "for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP): signal.signal(_signum, _disregarded)\n"
              "runpy.run_module('miyaq.worker.pools.child', run_name='__main__', alter_sys=True)\n")


def child_command(endpoint: str, identity: bytes, app_spec: str, parent: int, log_level: str) -> list[str]:
    """The command line of a child (:mod:`~miyaq.worker.pools.child`): this
    interpreter, with its options (:func:`~miyaq.worker.interpreter.interpreter_flags`)."""
    return [sys.executable, *interpreter_flags(), "-c", CHILD_BOOT, endpoint, identity.decode(), app_spec,
            str(parent), log_level]


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    """Send process group ``pgid`` ``signum`` (SIGKILL); never raises (gone
    already: nothing to do)."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class ChildProcess:
    """The parent's handle on one child: its process, whether it said hello,
    the job it runs and where that job's outcome goes."""

    def __init__(self, identity: bytes, proc: subprocess.Popen[bytes]) -> None:
        self.identity = identity
        self.proc = proc
        self.started = monotonic()
        self.ready = False
        self.job: Job | None = None
        self.outcome: Any = None       # AsyncResult while a job runs
        self.tasks = 0
        self.retiring_since: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the child and its process group (it leads one of its
        own): the programs its handler started die with it. The group only
        while the child is not reaped: till then its pid, and so its
        group's id, cannot name another process's group. A program that made
        a group or a session of its own is not reached, nor are those of a
        child that died by itself."""
        if self.proc.poll() is None:
            kill_group(self.proc.pid)
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    def finish(self, outcome: Outcome) -> None:
        """Deliver the running job's outcome (once)."""
        if self.outcome is not None and not self.outcome.ready():
            self.outcome.set(outcome)
