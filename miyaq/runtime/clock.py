"""The two clocks miyaq uses, named for what they are for.

``monotonic()`` measures durations and deadlines: it never jumps when an
operator or NTP steps the wall clock. ``wall()`` stamps things that other
processes and nodes read (a task's ``eta``, a lease end sent to a peer, a
log record): it is comparable across machines, within their clock skew.
Code that computes a deadline for its own waiting uses ``monotonic()``.

For tests, :func:`advance` moves both clocks of this process forward at
once, as if that much time had passed (the in-process cluster of
:mod:`miyaq.testing.inprocess` uses it to reach a lease end or a retry
interval without waiting for it); :func:`reset` takes the jump back.
Sleeps and socket timeouts still run on real time: code that waits for a
deadline must re-read the clock when it wakes, as every loop here does.
"""
from __future__ import annotations

import time

_monotonic = time.monotonic
_wall = time.time
_advanced = 0.0


def monotonic() -> float:
    """Seconds on a clock that only moves forward (durations, deadlines)."""
    return _monotonic() + _advanced


def wall() -> float:
    """Seconds since the epoch (stamps other processes read)."""
    return _wall() + _advanced


def advance(seconds: float) -> None:
    """Tests only: move both clocks of this process ``seconds`` (>= 0) forward."""
    global _advanced
    if seconds < 0:
        raise ValueError("the clocks only move forward")
    _advanced += seconds


def advanced() -> float:
    """How far :func:`advance` has moved the clocks since the last :func:`reset`."""
    return _advanced


def reset() -> None:
    """Tests only: take back every :func:`advance` (between tests, never while nodes run)."""
    global _advanced
    _advanced = 0.0


__all__ = ["advance", "advanced", "monotonic", "reset", "wall"]
