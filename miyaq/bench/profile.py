"""``miyaq bench --profile DIR``: a py-spy profile of every process, per phase.

For each phase the bench attaches ``py-spy record`` (a sampling profiler
for running Python processes, ``pip install py-spy``) to the node or relay,
each worker and the producer just before the producer starts, and stops
them (SIGINT: py-spy then writes its file) once the phase's tasks are
done. Files are ``DIR/<system>-<phase>-<process>.<ext>``: a flame graph
(``.svg``), collapsed stacks (``raw``, ``.txt``: one line per stack with its
sample count, for grep and scripts) or a speedscope profile (``.json``).
A process whose recorder wrote no file, or an empty one (a phase too short
for py-spy to attach or to take a sample), is an error of the phase, never
a silent gap.

py-spy samples without stopping the process (``--nonblocking``), but it
takes CPU of its own: on a small machine the profiled run is slower than
an unprofiled one, so take figures from a run without ``--profile``.
Attaching needs ptrace rights over the processes (the same user, and
``kernel.yama.ptrace_scope`` 0 or root).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time

from ..errors import ConfigError

logger = logging.getLogger(__name__)

FORMATS = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}
RATE = 250              # samples per second
STOP_WAIT = 30.0
"""Seconds :meth:`Profilers.stop` waits for its recorders to write and exit,
all of them together; then those still running are killed."""


def find_py_spy() -> str:
    """The py-spy executable, or a ConfigError that says how to get it."""
    path = shutil.which("py-spy") or _beside_python()
    if path is None:
        raise ConfigError("--profile needs py-spy: pip install py-spy")
    return path


def prepare_directory(path: str) -> None:
    """Make ``path`` (and its parents) unless it is a directory already; a
    ConfigError naming ``--profile`` if it cannot be made or written in.
    ``miyaq bench`` calls it before it starts anything."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--profile {path}: not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--profile {path}: cannot make this directory: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--profile {path}: cannot write in this directory")


def _beside_python() -> str | None:
    import sys
    candidate = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return candidate if os.access(candidate, os.X_OK) else None


class Profilers:
    """py-spy recorders attached to a set of processes for one phase."""

    def __init__(self, directory: str, fmt: str, label: str, pids: dict[str, int]) -> None:
        self.directory = directory
        self.fmt = fmt
        self.label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        self.pids = pids
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.outputs: dict[str, str] = {}     # process name -> the file its recorder writes

    def start(self) -> "Profilers":
        exe = find_py_spy()
        os.makedirs(self.directory, exist_ok=True)
        for name, pid in self.pids.items():
            out = os.path.join(self.directory, f"{self.label}-{name}.{FORMATS[self.fmt]}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)      # an earlier run's file must not pass for this one's
            self.outputs[name] = out
            argv = [exe, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking",
                    "--format", self.fmt, "--output", out]
            if self.fmt == "raw":
                argv.append("--full-filenames")
            self.procs.append((name, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.PIPE)))
        return self

    def stop(self) -> list[str]:
        """Stop every recorder; returns the problems, one per process without
        a profile: a recorder that failed, or that wrote no file or an empty
        one (stopped before it attached, or no sample: a phase too short).
        Waits ``STOP_WAIT`` for them all, not each: before 2026-12-07 each
        recorder had ``STOP_WAIT`` of its own, waited in turn, and N that did
        not stop on SIGINT held the end of the phase N times 30 s (a bench
        with 8 workers, its node and producer: 5 minutes). Never raises."""
        problems: list[str] = []
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_WAIT
        for name, proc in self.procs:
            try:
                _, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            out = self.outputs.get(name, "")
            if proc.returncode not in (0, -signal.SIGINT):
                problems.append(f"py-spy on {name}: exit {proc.returncode}: {_error_line(err)}")
            elif not os.path.isfile(out) or os.path.getsize(out) == 0:
                why = ("stopped before it attached" if proc.returncode == -signal.SIGINT
                       else "it took no sample")
                problems.append(f"py-spy on {name} wrote no profile ({why}; a phase this short cannot be "
                                f"profiled: more --tasks)")
        self.procs = []
        return problems


def _error_line(stderr: bytes | None) -> str:
    """What py-spy said went wrong: its ``Error:`` line, else its last line."""
    lines = [line.strip() for line in (stderr or b"").decode("utf-8", "replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or [""])[-1]
