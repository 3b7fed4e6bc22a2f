"""Coroutines waiting for room in the asyncio client's submit window.

Each submit resolved (acknowledged or failed) frees one slot and wakes one
waiter, the one waiting longest: a full window with many waiting submits
costs a wake-up per slot, not one per waiter per slot (an event waking them
all made a burst of N waiting submits cost N² wake-ups: window 50, 4,000
concurrent submits took 3.6 s). A waiter woken after another coroutine took
the slot waits again at the front. Closing wakes them all (each then finds
the client closed).
"""
from __future__ import annotations

import asyncio
from collections import deque

#: Futures of waiters that gave up (their timeout) are dropped once they are
#: this many and more than half of the queue.
PRUNE_AT = 64


class WindowRoom:
    """FIFO of waiters; :meth:`freed` is the client core's ``on_resolved``."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._live = 0        # coroutines in wait() now

    def freed(self) -> None:
        """One slot is free: wake the longest waiting coroutine still waiting."""
        waiting = self._waiting
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_result(None)
                return

    def wake_all(self) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)

    async def wait(self, timeout: float, first: bool = False) -> bool:
        """Wait until a slot is freed for this coroutine (True) or ``timeout``
        seconds pass (False). ``first``: ahead of the others (woken once
        already, and the slot taken meanwhile)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if first:
            self._waiting.appendleft(future)
        else:
            self._waiting.append(future)
        self._live += 1
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._live -= 1
            if len(self._waiting) > PRUNE_AT and len(self._waiting) > 2 * self._live:
                self._waiting = deque(f for f in self._waiting if not f.done())
