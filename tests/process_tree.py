"""Processes by parent, read from Linux's /proc: for tests that check what a
command started and that it left nothing running; and the bounded wait for
a child a test forked."""
from __future__ import annotations

import os
import signal
import time

import pytest


def parents() -> dict[int, int]:
    """Every live process: pid -> its parent's pid."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; the parent follows the state.
        found[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid``."""
    return [child for child, parent in parents().items() if parent == pid]


def descendants_of(root: int) -> list[int]:
    """Every live process under ``root``: children, grandchildren, ..."""
    by_parent = parents()
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in by_parent.items():
            if ppid == parent and pid not in found:
                found.append(pid)
                frontier.append(pid)
    return found


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def forked_exit_code(pid: int, timeout: float, what: str) -> int:
    """The exit code of child ``pid`` (forked by the test), waited for at
    most ``timeout`` seconds; a child still running then is killed and the
    test fails with ``what`` ("the forked child hung in close()")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done_pid, status = os.waitpid(pid, os.WNOHANG)
        if done_pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(what)
