"""Coroutines waiting for room in the asyncio client's submit window, first
come first served (:mod:`miyaq.client.window`: once one waits, every later
submit queues behind it, even one that would fit).

Only the first waiter looks at the window. Each submit resolved
(acknowledged or failed) wakes it, and so does each one counted in (the one
let in before it: the next may fit too), so a full window with many waiting
submits costs a wake-up per slot, not one per waiter per slot (an event
waking them all made a burst of N waiting submits cost N² wake-ups: window
50, 4,000 concurrent submits took 3.6 s). A waiter leaves the queue however
its wait ends -- let in, its deadline, cancelled, the client closed -- and
one that was not let in wakes the next at once. Closing wakes them all
(each then finds the client closed).
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

from ..client.window import POLL
from ..runtime.clock import monotonic


def _wake(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class _Turn:
    """One waiting coroutine: the future it awaits now (a new one each look)."""

    __slots__ = ("future",)

    def __init__(self, future: "asyncio.Future[None]") -> None:
        self.future = future


class WindowRoom:
    """FIFO of waiters; :meth:`freed` is the client core's ``on_resolved``.
    One event loop's: never touched from another thread."""

    def __init__(self) -> None:
        self.waiting: deque[_Turn] = deque()

    def freed(self) -> None:
        """Room may have been made: wake the first waiter to look again."""
        if self.waiting:
            _wake(self.waiting[0].future)

    def wake_all(self) -> None:
        for turn in self.waiting:
            _wake(turn.future)

    async def wait_turn(self, fits: Callable[[], bool], deadline: float, check: Callable[[], None]) -> bool:
        """Queue behind the coroutines already waiting until this one is the
        first and ``fits()`` (True: it has left the queue; counting it in
        wakes the next, :meth:`freed`), or until ``deadline`` (monotonic
        seconds) passes (False). ``check()`` after each wake-up raises if
        the client was closed meanwhile."""
        loop = asyncio.get_running_loop()
        me = _Turn(loop.create_future())
        waiting = self.waiting
        waiting.append(me)
        admitted = False
        try:
            while True:
                if waiting[0] is me and fits():
                    admitted = True
                    return True
                left = deadline - monotonic()
                if left <= 0:
                    return False
                # Not asyncio.wait_for: Python 3.11's returns the result of a future
                # done as its task is cancelled, swallowing the cancellation (the
                # cancelled submit then went in all the same).
                timer = loop.call_later(min(POLL, left), _wake, me.future)
                try:
                    await me.future
                finally:
                    timer.cancel()
                me.future = loop.create_future()    # before the look: a freed() after it wakes the next wait
                check()
        finally:
            waiting.remove(me)
            if not admitted:
                self.freed()
