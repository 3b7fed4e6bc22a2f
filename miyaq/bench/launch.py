"""Exec a command that dies with its parent: ``python launch.py PPID CMD...``.

The bench starts its node and workers through this shim. On Linux it sets
``PR_SET_PDEATHSIG`` (SIGTERM) and then ``execvp``s the real command (a bare
name is looked up on ``PATH``), so the
child keeps this pid and is told to stop even when the bench itself is
killed with SIGKILL (a test timeout, the OOM killer) and never reaches its
own cleanup. A shim instead of ``preexec_fn`` because the bench already runs
threads (the client's I/O thread) when it starts workers, and running Python
code between fork and exec in a threaded process is unsafe.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies; exit now if it already has."""
    libc_name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != expected_parent:   # the parent died before prctl took effect
        sys.exit(143)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: launch.py PARENT_PID COMMAND [ARG...]")
    die_with_parent(int(argv[0]))
    os.execvp(argv[1], argv[1:])     # a bare name (``faketime``) is looked up on PATH


if __name__ == "__main__":
    main(sys.argv[1:])
