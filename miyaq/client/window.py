"""The submit window's two bounds -- ``window`` submits, ``window_bytes``
bytes -- as the clients' ``submit()`` applies them (the threaded and gevent
:class:`~miyaq.client.client.Client`, ``miyaq.aio.Client``), and the
Timeout of a submit they kept out.

What is in flight is the core's to count (:class:`~.core.ClientCore`:
``in_flight``, ``bytes_in_flight``); each submit counts for its
:attr:`Pending.size <miyaq.client.pending.Pending>`. One submit is always
let in when none is in flight, however large: a task over ``window_bytes``
would wait for ever otherwise. So a client holds at most ``window``
submits, and at most ``window_bytes`` or one task. Before 2026-12-07 the
count was the only bound: 10,000 tasks of 1 MiB, 10 GB, were held before
``submit()`` blocked.

Admission is first come, first served (:class:`WindowQueue` here, and
:class:`miyaq.aio.window.WindowRoom`): once a submit waits for room, every
later one queues behind it, even one that would fit. Before 2026-12-07 a
later, smaller submit from another thread went in ahead of a waiting large
one; under a steady stream of small tasks the large one never found room
and failed with Timeout at its ``submit_timeout``. A submit when nobody
waits and it fits costs what it did: one more truth test of the queue.
"""
from __future__ import annotations

from collections import deque
from time import monotonic   # miyaq.runtime.monotonic, without importing the runtime (gevent) here
from typing import TYPE_CHECKING, Any, Callable

from ..errors import Timeout

if TYPE_CHECKING:
    from .core import ClientCore


def blocked_by(core: "ClientCore", window: int, window_bytes: int, size: int) -> str | None:
    """Which bound keeps out a submit of ``size`` bytes: ``"count"``
    (``window`` submits are in flight) or ``"bytes"`` (it would take what
    they hold past ``window_bytes``); None: it goes in. O(1), from any
    thread: a stale read lets a racing caller in, as with the count alone."""
    in_flight = core.submitted - core.submits.resolved
    if in_flight >= window:
        return "count"
    if in_flight and core.submitted_bytes - core.submits.resolved_bytes + size > window_bytes:
        return "bytes"
    return None


def stayed_full(bound: str | None, core: "ClientCore", window: int, window_bytes: int, size: int,
                waited: float) -> Timeout:
    """The error of a submit of ``size`` bytes kept out for ``waited``
    seconds, naming the ``bound`` (:func:`blocked_by`) and what it held;
    None: it would have fitted, but earlier submits still waited for room
    (each goes in before it: :class:`WindowQueue`)."""
    if bound is None:
        return Timeout(f"submit window stayed full for {waited:g}s: earlier submits still waited for room "
                       f"ahead of this one ({core.in_flight:,} submits unacknowledged, window={window})")
    if bound == "count":
        return Timeout(f"submit window stayed full for {waited:g}s: {window:,} submits unacknowledged "
                       f"(window={window})")
    return Timeout(f"submit window stayed full for {waited:g}s: {core.bytes_in_flight:,} bytes unacknowledged, "
                   f"and this task's {size:,} would pass window_bytes={window_bytes}")


POLL = 1.0
"""Longest a waiting submit sleeps before it looks at the window again (a
wake-up lost to a race with the I/O context costs at most this)."""


class WindowQueue:
    """The submits of a threaded or gevent :class:`~miyaq.client.client.Client`
    waiting for room in its window, first come first served: only the first
    looks at the window, and it is woken when room may have been made (a
    submit resolved: :meth:`freed` is the core's ``on_resolved``; or the one
    before it was counted in). ``event`` makes the kit's events. No lock:
    the deque's append, remove and ``[0]`` are atomic under the GIL, and
    each waiter touches only its own event's ``clear``/``wait``."""

    def __init__(self, event: Callable[[], Any]) -> None:
        self.waiting: deque[Any] = deque()     # one event per waiting submit, in the order they came
        self._event = event

    def freed(self) -> None:
        """Room may have been made: the first waiter looks again. O(1), from
        any thread (the I/O context, a caller counting its submit in)."""
        waiting = self.waiting
        if not waiting:
            return              # the common case, each task resolved: no exception raised and caught
        try:
            first = waiting[0]
        except IndexError:      # the last waiter left meanwhile (another thread)
            return
        if not first.is_set():
            first.set()

    def wait_turn(self, fits: Callable[[], bool], deadline: float) -> bool:
        """Queue behind the submits already waiting until this one is the
        first and ``fits()`` (True: it has left the queue; whoever counts it
        in wakes the next, :meth:`freed`), or until ``deadline`` (monotonic
        seconds) passes (False). However the wait ends -- its deadline, an
        exception (a gevent.Timeout, a killed greenlet, KeyboardInterrupt)
        -- it leaves the queue, and unless it was let in the next waiter
        looks at once: a waiter that gives up never holds up those behind."""
        me = self._event()
        waiting = self.waiting
        waiting.append(me)
        admitted = False
        try:
            while True:
                me.clear()         # before the look: a freed() after it wakes the wait below
                if waiting[0] is me and fits():
                    admitted = True
                    return True
                left = deadline - monotonic()
                if left <= 0:
                    return False
                me.wait(min(POLL, left))
        finally:
            waiting.remove(me)
            if not admitted:
                self.freed()
