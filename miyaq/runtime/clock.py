"""The two clocks miyaq uses, named for what they are for.

``monotonic()`` measures durations and deadlines: it never jumps when an
operator or NTP steps the wall clock. ``wall()`` stamps things that other
processes and nodes read (a task's ``eta``, a lease end sent to a peer, a
log record): it is comparable across machines, within their clock skew.
Code that computes a deadline for its own waiting uses ``monotonic()``.
"""
from __future__ import annotations

import time

monotonic = time.monotonic
wall = time.time

__all__ = ["monotonic", "wall"]
