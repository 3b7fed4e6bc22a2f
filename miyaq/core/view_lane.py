"""Views that list every queue take a bounded share of the node's loop.

STATUS, ``GET /status``, ``GET /queues`` and the console's pages build a
row for every queue, in the node's one loop: about 40 ms at 10,000 queues
(and the JSON of it), every other client held meanwhile. A caller asking
back to back -- a producer's key or token may -- held the node most of
the time: at 20 ``GET /status`` a second the task path's p99 went from 7
to 82 ms (2026-12-06's overload audit).

:class:`ViewLane` spaces such views so that, whoever asks and however
often, they take at most :data:`VIEW_SHARE` of the loop's time: after a
view that took ``t`` seconds the next one starts ``t / VIEW_SHARE`` after
this one started, no sooner -- unless ``t`` is under :data:`FREE_VIEW`,
so a node with few queues (a view of well under a millisecond) answers
every STATUS at once, as before, however many come together. One asked
before its turn waits for it -- an HTTP request in its own greenlet, a
STATUS in a greenlet of its own (the service socket's reader never
waits). At most :data:`MAX_VIEWS_WAITING` wait at once, and
none is made to wait longer than :data:`MAX_VIEW_WAIT`: past either the
request is refused ``busy`` (reason ``views``; 503 with ``Retry-After``
over HTTP) and nothing is reserved for it.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from miyaq.errors import Busy
from miyaq.runtime import green, monotonic

T = TypeVar("T")

VIEW_SHARE = 0.1
"""The most of the loop's time views listing every queue take together."""
FREE_VIEW = 0.002
"""A view that took less (seconds) spaces no other: a node with few queues
answers every STATUS at once, however many come together."""
MAX_VIEWS_WAITING = 32
"""Views waiting for their turn at once, at most; another is refused ``busy``."""
MAX_VIEW_WAIT = 5.0
"""Seconds a view is made to wait for its turn, at most; longer is refused ``busy``."""


class ViewLane:
    """Turns for the views that list every queue (module docstring). One per
    node; every method runs in the node's loop."""

    def __init__(self, clock: Callable[[], float] = monotonic, share: float = VIEW_SHARE) -> None:
        self._clock = clock
        self._stretch = 1.0 / share       # a view of t seconds holds the lane t * stretch
        self._cost = 0.0                  # the last view's time: what a turn taken now reserves
        self._next_turn = 0.0
        self._reserved = -1.0             # the next turn as the last turn taken reserved it
        self.waiting = 0
        self.refused = 0

    def turn(self) -> float:
        """Take the next turn: seconds to wait for it (0.0: now). Busy (and no
        turn taken) when :data:`MAX_VIEWS_WAITING` wait already or the turn
        is more than :data:`MAX_VIEW_WAIT` away."""
        now = self._clock()
        start = max(now, self._next_turn)
        wait = start - now
        if wait > 0 and (self.waiting >= MAX_VIEWS_WAITING or wait > MAX_VIEW_WAIT):
            self.refused += 1
            raise Busy(f"the node's status is asked too often: its views of every queue take {self._cost:.3f}s "
                       f"each and at most {VIEW_SHARE:.0%} of its time; ask again in {wait:.1f}s",
                       reason="views", retry_after=round(wait, 1))
        self._next_turn = self._reserved = start + self._spacing(self._cost)   # as long as the last view took
        if wait > 0:
            self.waiting += 1     # from now: a batch of requests read at once counts every one
        return wait

    def timed(self, build: Callable[[], T]) -> T:
        """``build()``, its time measured: the turns after it are spaced by
        it. When no turn was taken since this view's, the next turn is
        spaced by this view's own time, not the one reserved for it (the
        last view's): a cheap view after a costly one does not hold the
        lane as long."""
        started = self._clock()
        try:
            return build()
        finally:
            self._cost = max(0.0, self._clock() - started)
            spaced = started + self._spacing(self._cost)
            self._next_turn = spaced if self._next_turn == self._reserved else max(self._next_turn, spaced)

    def _spacing(self, cost: float) -> float:
        """How long after a view of ``cost`` seconds began the next may begin."""
        return cost * self._stretch if cost >= FREE_VIEW else 0.0

    def wait(self, seconds: float) -> None:
        """Wait the ``seconds`` :meth:`turn` gave, in a greenlet that may wait;
        every turn given a wait must be waited (it is counted in :attr:`waiting`
        until then)."""
        if seconds <= 0:
            return
        try:
            green.sleep(seconds)
        finally:
            self.waiting -= 1

    def run(self, build: Callable[[], T]) -> T:
        """``build()`` in its turn, waiting for it in this greenlet (an HTTP
        request's). Busy when refused a turn (:meth:`turn`)."""
        self.wait(self.turn())
        return self.timed(build)

    def stats(self) -> dict[str, float | int]:
        return {"last_seconds": self._cost, "waiting": self.waiting, "refused": self.refused}
