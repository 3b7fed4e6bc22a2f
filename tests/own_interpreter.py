"""Run a script in an interpreter of its own, bounded: for what must be
seen from a clean process (what a fresh import loads, what a fork or the
garbage collector does to a client) and may hang on the code before a fix."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

import miyaq

#: The checkout whose miyaq the script imports.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(miyaq.__file__)))


def run_script(script: str, *args: str, timeout: float, hung: str) -> tuple[int, str, str]:
    """``python -c script *args`` with this checkout importable, in a
    session of its own: its return code, stdout and stderr. Every process of
    that session (a child it forked too) is killed when it ends; past
    ``timeout`` seconds the test fails with ``hung``."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(hung)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    return proc.returncode, out, err
