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
    from .pending import Pending


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


class Turn:
    """One submit waiting for room: ``fits()`` says whether it fits now;
    ``admitted`` once it is let in (and counted in: :class:`WindowQueue`)."""

    __slots__ = ("wake", "p", "fits", "admitted")

    def __init__(self, wake: Any, p: "Pending", fits: Callable[[], bool]) -> None:
        self.wake = wake          # an event (threads, gevent) or a future (asyncio)
        self.p = p
        self.fits = fits
        self.admitted = False


def let_in(waiting: "deque[Turn]", count: Callable[["Pending"], None], wake: Callable[[Any], None]) -> None:
    """Let in the waiters at the head of ``waiting`` while the first fits,
    in order: each is counted in the window (``count``), leaves the queue,
    is marked admitted and woken (``wake(turn.wake)``) before the next is
    looked at. The threaded/gevent :class:`WindowQueue` and the asyncio
    :class:`~miyaq.aio.window.WindowRoom` both let in so.

    Counted before it leaves the queue: ``count`` takes a lock, where
    Ctrl-C lands in a thread waiting for it; the waiter is then still
    first, uncounted, for the next room made. (Before 2026-12-07, review35,
    it left first: interrupted there, it was lost -- out of the queue,
    never let in, it waited its whole deadline and raised ValueError.)"""
    while waiting:
        turn = waiting[0]
        if not turn.fits():
            return
        count(turn.p)
        waiting.popleft()
        turn.admitted = True
        wake(turn.wake)


def _set(event: Any) -> None:
    event.set()


class WindowQueue:
    """The submits of a threaded or gevent :class:`~miyaq.client.client.Client`
    waiting for room in its window, first come first served.

    Whoever makes room lets the waiters in (:meth:`freed`: the core's
    ``on_resolved``, a waiter that gives up, a waiter's own look): the first
    while it fits, then the next, each counted in (``count``) before the
    next is looked at, and woken already in. A waiter let in has left the
    queue before it runs again, so a submit made meanwhile (the same thread's
    next) finds the queue empty and takes the fast path when there is room:
    one wake-up per waiting submit, none per later one. (Each waiter let in
    by its own look, passing the turn on after it is counted, made every
    submit of 4 threads sharing a full window a switch between threads:
    three times the client's CPU.)

    ``event``, ``lock``: the kit's. ``count(p)`` counts ``p`` in the window;
    ``uncount(p)`` takes it out again (a waiter let in and interrupted
    before it could hand its submit over). The lock guards the queue and the
    letting in; it is taken only while some submit waits (``waiting``,
    looked at without it, is the fast path's test), and never while the
    caller holds ``count``'s own lock."""

    def __init__(self, event: Callable[[], Any], lock: Any, count: Callable[["Pending"], None],
                 uncount: Callable[["Pending"], None]) -> None:
        self.waiting: deque[Turn] = deque()     # in the order they came
        self._event = event
        self._lock = lock
        self._count = count
        self._uncount = uncount

    def freed(self) -> None:
        """Room may have been made: let in the waiters that fit, in order.
        O(1) when nobody waits (each task resolved); from any thread."""
        if self.waiting:
            with self._lock:
                self._let_in()

    def _let_in(self) -> None:
        let_in(self.waiting, self._count, _set)

    def wait_turn(self, p: "Pending", fits: Callable[[], bool], deadline: float) -> bool:
        """Queue ``p`` behind the submits already waiting until it is let in
        -- it is first and ``fits()`` -- (True: it is counted in the window:
        hand it over without counting it again), or until ``deadline``
        (monotonic seconds) passes (False: nothing counted). However the wait
        ends -- its deadline, an exception (a gevent.Timeout, a killed
        greenlet, KeyboardInterrupt) -- it leaves the queue, and those behind
        it are looked at at once: a waiter that gives up never holds them up.
        One let in just as an exception came is counted out again."""
        turn = Turn(self._event(), p, fits)
        try:
            with self._lock:
                self.waiting.append(turn)
                if len(self.waiting) == 1:
                    self._let_in()        # first: room may have been made since the caller looked
            while not turn.admitted:
                left = deadline - monotonic()
                if left <= 0:
                    break
                turn.wake.wait(min(POLL, left))
                if not turn.admitted:
                    self.freed()          # a wake-up lost to a race costs at most POLL
        except BaseException:
            if self._leave(turn):
                self._uncount(p)
                self.freed()
            raise
        return self._leave(turn)

    def _leave(self, turn: Turn) -> bool:
        """``turn`` stops waiting: out of the queue unless it was let in
        meanwhile (True), and those behind it looked at."""
        with self._lock:
            if turn.admitted:
                return True
            if turn in self.waiting:      # not when interrupted before it was queued
                self.waiting.remove(turn)
            self._let_in()
            return False
