"""Child processes of a chaos run: started so that they die with the run.

Every child is exec'd through :mod:`miyaq.bench.launch`, which sets
``PR_SET_PDEATHSIG`` (Linux): if the run itself is killed with SIGKILL (a
test's hard timeout, the OOM killer) its nodes and workers still get
SIGTERM; :func:`java_wrapper` gives ZooKeeper the same fate.
``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends,
not the process: every child is therefore forked by one long-lived
spawner thread (:func:`spawn`), never by a short-lived fault thread. A
child may run inside a network namespace (``ip netns exec NS`` goes
first; it execs too, so the pid is the child's own).

:meth:`Child.stop` never raises and is safe on any exit path: SIGCONT (a
paused child cannot act on SIGTERM), SIGTERM, a bounded wait, SIGKILL.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..bench import launch

T = TypeVar("T")
_spawner = ThreadPoolExecutor(1, thread_name_prefix="chaos-spawner")


def spawn(fn: Callable[[], T]) -> T:
    """Run ``fn`` (which forks) on the one spawner thread; it stays alive
    for the life of the process, so PDEATHSIG means "the run died"."""
    return _spawner.submit(fn).result()

logger = logging.getLogger(__name__)


def launcher(argv: list[str], netns: str | None = None) -> list[str]:
    """The full command line that runs ``argv`` dying with this process."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return prefix + [sys.executable, launch.__file__, str(os.getpid())] + argv


def miyaq_argv(*args: str) -> list[str]:
    """``python -m miyaq.cli.main ARGS``."""
    return [sys.executable, "-m", "miyaq.cli.main", *args]


class Child:
    """One child process with its output in ``log_path`` (appended to, so a
    restarted node keeps one log)."""

    def __init__(self, name: str, argv: list[str], log_path: str, env: dict[str, str] | None = None,
                 netns: str | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> Child:
        def popen() -> subprocess.Popen[bytes]:
            with open(self.log_path, "ab") as log:
                return subprocess.Popen(launcher(self.argv, self.netns), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)

        self.proc = spawn(popen)
        self.paused = False
        logger.debug("started %s (pid %d)", self.name, self.proc.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the child runs; True if it was sent."""
        if not self.alive():
            return False
        assert self.proc is not None
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            return False
        if sig == signal.SIGSTOP:
            self.paused = True
        elif sig == signal.SIGCONT:
            self.paused = False
        return True

    def kill(self) -> None:
        """SIGKILL and reap: the fault of a crashed process."""
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            logger.error("%s (pid %d) survived SIGKILL for 10s", self.name, self.proc.pid)
        self.paused = False

    def stop(self, grace: float = 10.0, told: bool = False) -> int | None:
        """SIGCONT, SIGTERM (unless ``told``: sent already), wait up to
        ``grace``, SIGKILL. Never raises."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                if not told:
                    self.signal(signal.SIGCONT)
                    self.signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    logger.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", self.name, proc.pid, grace)
                    self.kill()
        except Exception:   # cleanup must go on with the next child
            logger.exception("stopping %s failed", self.name)
        self.paused = False
        return proc.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(self.log_path) - 32768))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all(children: list[Child], grace: float = 10.0) -> None:
    """SIGTERM every child at once, then wait for each (bounded); never
    raises. One SIGTERM each: a node or a worker takes a second one for
    "stop waiting for running tasks" (before 2026-12-07 each was sent two,
    and the end of every run skipped the graceful stop it meant to make)."""
    for child in children:
        if child.alive():
            child.signal(signal.SIGCONT)
            child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        child.stop(max(0.5, deadline - time.monotonic()), told=True)


def java_wrapper(directory: str, netns: str | None = None) -> str | None:
    """A ``java`` that dies with this process (and runs in ``netns``, if
    given): a script exec'ing the launch shim, given to ZooKeeperServer.
    None when java is not installed (then ZooKeeperServer says how to
    install it)."""
    java = shutil.which("java")
    if java is None:
        return None
    path = os.path.join(directory, f"java-in-{netns}" if netns else "java-with-parent")
    command = " ".join(f'"{part}"' for part in launcher([java], netns))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f'#!/bin/sh\nexec {command} "$@"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path
