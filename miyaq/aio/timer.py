"""The one timer of the asyncio driver (:class:`~miyaq.aio.driver.AsyncDriver`).

It runs the driver's ``_on_timer`` no later than asked, on the driver's
event loop: its handle, the loop time it is due at, whether it holds the
driver, and how many passes of the loop a timer that fired late has been
put off. Its owner is held weakly; the loop's handle holds it only while the
owner says so (submits unresolved: see :meth:`AsyncDriver._arm`). Used from
the loop's thread only.
"""
from __future__ import annotations

import asyncio
import weakref
from typing import Protocol

#: Seconds late a timer fires, past which the loop is taken for held (a
#: handler that blocked it): the readers get two passes first (see
#: :meth:`LoopTimer.catching_up`).
LATE = 0.1
CATCH_UP_PASSES = 2


class Timed(Protocol):
    """What the timer runs: its owner's pass."""
    def _on_timer(self) -> None: ...


class LoopTimer:
    """One ``call_at`` at a time on ``loop``, running ``owner._on_timer``;
    made once the loop runs, used from its thread only."""
    def __init__(self, loop: asyncio.AbstractEventLoop, owner: Timed) -> None:
        self._loop = loop
        self._owner = weakref.ref(owner)
        self._handle: asyncio.Handle | None = None     # a TimerHandle, or a Handle under uvloop (see schedule)
        self._holds = False     # the handle holds the owner (see schedule)
        self._at = 0.0          # the loop time it is due at
        self._catch_up = 0      # passes it was put off, fired late (see catching_up)

    def went_off(self) -> float:
        """The timer fired: forget its handle; the seconds it fired late.
        The owner's pass calls this first."""
        late = self._loop.time() - self._at
        self._handle = None
        return late

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def catching_up(self, late: float, holds: bool) -> bool:
        """True: the timer fired ``late`` seconds late (at least
        :data:`LATE`: the loop was held -- a handler that blocked it) and
        runs again after a pass of the loop, twice, before it fails any
        deadline: the answers that came meanwhile wait in the sockets, and
        the readers take them in those passes (pyzmq resolves a reader's
        receive in the pass the timer fires in; the reader runs in the
        next). Before 2026-12-07 the timer ran first: every call the loop
        was held past the deadline of failed with ``Timeout`` -- "the node
        did not answer in time", "task ... not acknowledged before its
        deadline" for a task the node had stored -- its answer unread.
        ``holds``: as for :meth:`schedule`."""
        if self._catch_up == 0 and late < LATE:
            return False
        if self._catch_up >= CATCH_UP_PASSES:
            self._catch_up = 0
            return False
        self._catch_up += 1
        self.schedule(self._loop.time(), holds)
        return True

    def schedule(self, when: float, holds: bool) -> None:
        """Run the timer at loop time ``when`` (or earlier, as it was already).
        ``holds``: its handle holds the owner (else only weakly). Its time
        is kept here, not asked of the handle: uvloop's ``call_at`` for a
        time less than a millisecond ahead is a ``call_soon``, whose handle
        has no ``when()`` (before 2026-12-07 the next call crashed the
        client with AttributeError: under ``uvicorn[standard]``, a burst of
        submits that filled the window)."""
        if self._handle is not None:
            if self._at <= when and (self._holds or not holds):
                return
            self._handle.cancel()
        if holds:
            owner = self._owner()
            assert owner is not None     # it is the one asking
            self._handle = self._loop.call_at(when, owner._on_timer)
        else:
            self._handle = self._loop.call_at(when, _fired, self._owner)
        self._holds = holds
        self._at = when


def _fired(owner: "weakref.ref[Timed]") -> None:
    alive = owner()
    if alive is not None:
        alive._on_timer()
