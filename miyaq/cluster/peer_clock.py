"""A peer's times onto this node's clock: each peer message carries its
sender's wall clock (``clock``), and the times a copy's record carries --
its ``created``, ``eta``, ``expires``, a lease's end -- are moved by the
difference (:func:`clock_shift`, :func:`moved`), so a task is due, expires
and is taken over when its accepting node meant, on every holder, whatever
the holders' clocks say (docs/cluster.md). No I/O, no state.
"""
from __future__ import annotations

from typing import Any

from miyaq.protocol.recordspec import MAX_TIME

__all__ = ["CLOCK_SLACK", "EXPIRED_AT_ONCE", "clock_shift", "moved"]

#: Clock differences smaller than this (seconds) are taken as none: a
#: message's time on the way and NTP's error, not a skew worth moving a
#: copy's times for (nodes whose clocks agree keep them exactly as sent).
CLOCK_SLACK = 0.5

#: Where a copy's ``expires`` or lease end shifted to or before the epoch
#: goes: still a deadline, long past (0.0 would mean "never expires", or
#: "not leased").
EXPIRED_AT_ONCE = 1.0


def clock_shift(sender_clock: Any, now: float) -> float:
    """How far this node's wall clock (``now``) is ahead of a peer's, from the
    ``clock`` its message carried: ``now - sender_clock``, negative when the
    peer's clock is ahead. It also counts the message's time on the way, so
    a deadline moved by it ends that much later, never earlier. 0.0 when it
    is within :data:`CLOCK_SLACK` of none, or when the message has no usable
    ``clock`` (a node older than 2026-12-05, or a value that is not a time
    in unix seconds, 0 to ``MAX_TIME`` -- a clock sent in milliseconds, say):
    the times it carries are then taken as they are. A time moved by it is
    kept in the range every stored time has (:func:`moved`)."""
    if type(sender_clock) is not float and type(sender_clock) is not int:
        return 0.0
    if not 0.0 <= sender_clock <= MAX_TIME:     # False for NaN
        return 0.0
    shift = now - sender_clock
    return shift if abs(shift) >= CLOCK_SLACK else 0.0


def moved(when: float, shift: float, earliest: float = 0.0) -> float:
    """``when``, a time a peer sent, moved onto this node's clock by
    ``shift`` (:func:`clock_shift`) and kept between ``earliest`` and
    ``MAX_TIME``: a copy whose times left that range was accepted, then
    refused by this node's own log replay (lost at the next start), and
    broke every reader that prints a time (before 2026-12-05: a peer's
    ``clock`` of 1e17 made ``miyaq tasks`` fail and the console's task page
    a 500)."""
    return min(max(when + shift, earliest), MAX_TIME)
