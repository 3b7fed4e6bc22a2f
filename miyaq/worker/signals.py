"""Signals a worker process takes from someone else: disregarded, not ignored.

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

import signal
from typing import Any


def _disregarded(signum: int, frame: Any) -> None:
    """Nothing: the signal is someone else's to act on."""


def disregard(*signums: int) -> None:
    """Let ``signums`` do nothing in this process, and their default in the
    programs it starts (unlike ``SIG_IGN``). From the main thread."""
    for signum in signums:
        signal.signal(signum, _disregarded)
