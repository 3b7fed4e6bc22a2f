"""Coroutines waiting for room in the asyncio client's submit window, first
come first served (:mod:`miyaq.client.window`: once one waits, every later
submit queues behind it, even one that would fit).

As the threaded client's :class:`~miyaq.client.window.WindowQueue`: whoever
makes room -- a submit resolved (acknowledged or failed), a waiter that
gives up -- lets the waiters in while the first fits, each counted in the
window before the next is looked at, and wakes each one let in. So a full
window with many waiting submits costs one wake-up per waiting submit, not
one per waiter per slot (an event waking them all made a burst of N
waiting submits cost N² wake-ups: window 50, 4,000 concurrent submits took
3.6 s). A waiter leaves the queue however its wait ends -- its deadline,
cancelled, the client closed; one let in just as it was cancelled is
counted out again. Closing wakes them all (each then finds the client
closed). One event loop's: never touched from another thread.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Callable

from ..client.window import POLL, Turn, let_in
from ..runtime.clock import monotonic

if TYPE_CHECKING:
    from ..client.pending import Pending


def _wake(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class WindowRoom:
    """FIFO of waiters; :meth:`freed` is the client core's ``on_resolved``.
    ``count(p)`` counts ``p`` in the window, ``uncount(p)`` takes it out."""

    def __init__(self, count: Callable[["Pending"], None], uncount: Callable[["Pending"], None]) -> None:
        self.waiting: deque[Turn] = deque()
        self._count = count
        self._uncount = uncount

    def freed(self) -> None:
        """Room may have been made: let in the waiters that fit, in order."""
        let_in(self.waiting, self._count, _wake)

    def wake_all(self) -> None:
        for turn in self.waiting:
            _wake(turn.wake)

    async def wait_turn(self, p: "Pending", fits: Callable[[], bool], deadline: float,
                        check: Callable[[], None]) -> bool:
        """Queue ``p`` behind the coroutines already waiting until it is let
        in -- first, and ``fits()`` -- (True: it is counted in the window:
        hand it over without counting it again), or until ``deadline``
        (monotonic seconds) passes (False). ``check()`` after each wake-up
        raises if the client was closed meanwhile."""
        loop = asyncio.get_running_loop()
        turn = Turn(loop.create_future(), p, fits)
        self.waiting.append(turn)
        if len(self.waiting) == 1:
            self.freed()              # first: room may have been made since the caller looked
        try:
            while not turn.admitted:
                left = deadline - monotonic()
                if left <= 0:
                    break
                # Not asyncio.wait_for: Python 3.11's returns the result of a future
                # done as its task is cancelled, swallowing the cancellation (the
                # cancelled submit then went in all the same).
                timer = loop.call_later(min(POLL, left), _wake, turn.wake)
                try:
                    await turn.wake
                finally:
                    timer.cancel()
                if turn.admitted:
                    break
                turn.wake = loop.create_future()
                check()
                self.freed()          # a look of its own each POLL (a lost wake-up, if any)
            if turn.admitted:
                check()               # closed as it was let in: it goes nowhere either
        except BaseException:
            if turn.admitted:
                self._uncount(p)      # let in as it was cancelled (or closed): it goes nowhere
                self.freed()
            else:
                self._leave(turn)
            raise
        if turn.admitted:
            return True
        self._leave(turn)
        return False

    def _leave(self, turn: Turn) -> None:
        self.waiting.remove(turn)
        self.freed()              # those behind it may fit
