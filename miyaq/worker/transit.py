"""How late a node's message reached this worker: :class:`Transit`, one per
link socket.

A node stamps its DISPATCHes and HEARTBEATs with ``sent``, its monotonic
clock when it sent them (docs/protocol.md, 7.3; added 2026-12-07). The two
clocks differ by an unknown offset, so one message's ``received - sent``
says nothing alone; the smallest of it over the recent messages is that
offset plus the quickest transit, and a message's *lag* is how much later
than that it came. A DISPATCH that lagged past the node's own
``heartbeat × liveness`` after a silence as long was sent before the node
could have taken this worker for lost and leased its tasks again: the
worker gives it back rather than run it (:meth:`NodeLink._handle
<miyaq.worker.link.NodeLink._handle>`).

Constraints:

* The smallest is kept over two windows of :data:`WINDOW` seconds, so the
  clocks' drift (their rates differ by up to a few hundred parts per
  million between hosts) never adds up to a lag, and a node whose clock
  was replaced (it restarted elsewhere; the link resets on WELCOME and on
  a fresh socket) is measured afresh within two windows at most.
* A ``sent`` that is not a finite number (an older node sends none; a
  buggy one anything) lags 0.0 and changes nothing.
* Constant memory and time a message.
"""
from __future__ import annotations

import math
from typing import Any

WINDOW = 60.0
"""Seconds a smallest ``received - sent`` stands for before the next window
takes over (it stands for two)."""


class Transit:
    """The smallest ``received - sent`` of a link socket's recent messages."""

    __slots__ = ("_earlier", "_current", "_since")

    def __init__(self) -> None:
        self._earlier: float | None = None    # the smallest of the window before
        self._current: float | None = None    # the smallest of this window
        self._since = 0.0                     # when this window began (our monotonic clock)

    def reset(self) -> None:
        """A fresh socket, or a node that welcomed this worker again: its
        clock may be another's."""
        self._earlier = self._current = None

    def lag(self, sent: Any, received: float) -> float:
        """Seconds the message the node stamped ``sent`` came later than the
        quickest of the recent ones, read at ``received`` (our monotonic
        clock); 0.0 for one without a usable stamp, or the quickest yet."""
        if type(sent) not in (float, int) or not math.isfinite(sent):
            return 0.0
        offset = received - sent
        if self._current is None or received - self._since > WINDOW:
            self._earlier, self._current, self._since = self._current, offset, received
        elif offset < self._current:
            self._current = offset
        base = self._current if self._earlier is None else min(self._earlier, self._current)
        return max(0.0, offset - base)
