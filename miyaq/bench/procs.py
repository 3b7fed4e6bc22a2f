"""The subprocesses a bench run owns: start, watch, and always stop them.

Every child runs in its own session (a Ctrl-C at the terminal reaches only
the bench, which then stops the children in order) and through
:mod:`miyaq.bench.launch` (it dies with the bench even when the bench is
SIGKILLed). :meth:`ProcessGroup.close` sends SIGTERM, waits a bounded
grace, then SIGKILLs; it never raises, so it is safe on every exit path
(but for a second interrupt during it: then it SIGKILLs at once).

A child's output goes to a log file in the run's temporary directory,
removed when the run ends -- before an error message about it is printed.
So messages quote a log's last lines (:meth:`Child.log_tail`) and name the
child, never the file.
:func:`sigterm_as_exit` turns SIGTERM into ``SystemExit(143)`` around a run,
so a run stopped by SIGTERM cleans up as one stopped by Ctrl-C does.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO

from ..errors import ConfigError
from . import launch

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
#: What an interpreter given to the bench (--python, --compare-python) must import: the
#: producer's Client and the modules the node and worker commands start from.
INTERPRETER_PROBE = "import zmq, msgpack, gevent; from miyaq import Client; import miyaq.cli.main"
PROBE_TIMEOUT = 60.0


class Child:
    """One started subprocess and its log file."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: str, log: IO[bytes]) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self._log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the child's output, for error messages."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(self.log_path) - 16384))
                text = fh.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"({self.name}'s output unreadable: {exc.strerror})"
        return "\n".join(text.splitlines()[-lines:])

    def describe_exit(self) -> str:
        return (f"{self.name} (pid {self.pid}) exited with status {self.proc.returncode}; "
                f"last lines of its output:\n{self.log_tail() or '(none)'}")

    def kill(self) -> None:
        """SIGKILL the child (stopped or not) and reap it. Never raises."""
        _signal(self, signal.SIGKILL)
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            logger.error("%s (pid %d) survived SIGKILL", self.name, self.pid)

    def close_log(self) -> None:
        if not self._log.closed:
            self._log.close()


class ProcessGroup:
    """Children started by this bench run, stopped together."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              pipes: bool = False) -> Child:
        """Start ``argv``; its output goes to ``<log_dir>/<name>.log`` -- only
        its stderr with ``pipes``, where stdin and stdout are pipes the
        caller talks through (the producer agent)."""
        log_path = os.path.join(self.log_dir, f"{name}.log")
        log = open(log_path, "wb")   # noqa: SIM115 - the child writes it; closed in close_log()
        # The run's own directory as the working directory: ``python -m`` puts the
        # working directory first on sys.path, so a bench started inside a checkout
        # would run that checkout's miyaq with another build's interpreter
        # (--python, --compare-python) instead of the build installed there.
        proc = subprocess.Popen(launcher() + argv, stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                                stdout=subprocess.PIPE if pipes else log,
                                stderr=log if pipes else subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=self.log_dir)
        child = Child(name, proc, log_path, log)
        self.children.append(child)
        logger.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def stop(self, children: list[Child], grace: float) -> None:
        """SIGTERM ``children``, wait up to ``grace`` seconds, SIGKILL the rest.
        Never raises."""
        for child in children:
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored SIGTERM for %.1fs; killing it", child.name, child.pid, grace)
                _signal(child, signal.SIGKILL)
                try:
                    child.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    logger.error("%s (pid %d) survived SIGKILL", child.name, child.pid)
            child.close_log()

    def close(self, grace: float = 5.0) -> None:
        """Stop every child still running: the producer and the workers first
        (they drain and say BYE), then the rest (the nodes, the relay).
        Interrupted itself (a second Ctrl-C, a SIGTERM: KeyboardInterrupt or
        SystemExit), it SIGKILLs what still runs and lets that propagate:
        whoever asked twice gets no more grace."""
        first = [c for c in self.children if c.name.startswith(("worker", "producer"))]
        others = [c for c in self.children if c not in first]
        try:
            self.stop(first, grace)
            self.stop(others, grace)
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL every child still running and reap it. Never raises."""
        for child in self.children:
            _signal(child, signal.SIGKILL)
        for child in self.children:
            try:
                child.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                logger.error("%s (pid %d) survived SIGKILL", child.name, child.pid)
            child.close_log()


def check_interpreter(path: str, option: str) -> None:
    """Run :data:`INTERPRETER_PROBE` with ``path``, from an empty directory as
    the children run (see :meth:`ProcessGroup.start`); a ConfigError naming
    ``option`` if it is no executable file or cannot import what they need.
    Meant for before a run starts anything: it takes an interpreter's start."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ConfigError(f"{option} {path}: not an executable file")
    with tempfile.TemporaryDirectory(prefix="miyaq-bench-probe-") as cwd:
        try:
            proc = subprocess.run([path, "-c", INTERPRETER_PROBE], cwd=cwd, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=PROBE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{option} {path}: did not import miyaq within {PROBE_TIMEOUT:g}s") from None
        except OSError as exc:
            raise ConfigError(f"{option} {path}: cannot run it: {exc.strerror}") from None
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ConfigError(f"{option} {path}: cannot run the bench's processes ({INTERPRETER_PROBE!r}: {why})")


def launcher() -> list[str]:
    """The command prefix that makes a child die with this process
    (:mod:`miyaq.bench.launch`); every child of a run starts through it."""
    # Run the shim by path: it needs only the standard library, and
    # ``-m miyaq.bench.launch`` would import the whole package first.
    return [sys.executable, launch.__file__, str(os.getpid())]


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` so cleanup runs (main thread only;
    elsewhere a no-op). The previous handler comes back on the way out."""
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


def _signal(child: Child, sig: int) -> None:
    if child.proc.poll() is None:
        try:
            child.proc.send_signal(sig)
        except ProcessLookupError:
            pass
