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
waits). At most :data:`MAX_VIEWS_WAITING` wait at once
(:data:`MAX_WAITING_PER_ROLE` of one role's callers), and none is made to
wait longer than :data:`MAX_VIEW_WAIT`: past either the request is
refused ``busy`` (reason ``views``; 503 with ``Retry-After`` over HTTP)
and nothing is reserved for it.

The lane bounds how often views run; how long one holds the loop is
bounded by building and encoding its rows a slice at a time
(:mod:`miyaq.core.view_rows`): a view built with ``sliced`` (in a greenlet
that may wait: an HTTP request's, a STATUS's own) lets the loop's other
greenlets run between two slices (:meth:`ViewLane.slices`), and is charged
its slices' time only, not theirs. Views are built one at a time: a turn
taken while one is being built waits for its end and the spacing it sets
(its cost is not known before), within the same bounds on how many wait.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NamedTuple, TypeVar

from miyaq.core.view_rows import at_once, in_slices
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
MAX_WAITING_PER_ROLE = 8
"""Views of one role's callers (``producer``, ``admin``...; ``open`` on a
node without keys or tokens) waiting at once, at most: one role's callers
asking from many connections cannot fill the lane for the others (an
admin's ``miyaq status`` while producers poll)."""
MAX_VIEW_WAIT = 5.0
"""Seconds a view is made to wait for its turn, at most; longer is refused ``busy``."""


class Turn(NamedTuple):
    """A view's turn: ``wait`` seconds from when it was taken; ``number``,
    which turn it is (one more than the turn taken before it); ``role``,
    whose it is; ``behind``, taken while a view was being built in slices:
    it also waits for that view's end and the spacing it sets."""

    wait: float
    number: int
    role: str
    behind: bool = False

    @property
    def now(self) -> bool:
        """Its view may be built at once, without waiting."""
        return self.wait <= 0 and not self.behind


class _Building:
    """A sliced view being built: ``others``, the time the loop's other
    greenlets took between its slices (not the view's)."""

    __slots__ = ("others",)

    def __init__(self) -> None:
        self.others = 0.0


class ViewLane:
    """Turns for the views that list every queue (module docstring), taken
    in order. One per node; every method runs in the node's loop."""

    def __init__(self, clock: Callable[[], float] = monotonic, share: float = VIEW_SHARE,
                 cost_clock: Callable[[], float] = time.thread_time) -> None:
        self._clock = clock
        # A view's cost is the CPU time of the loop's thread it took (less what
        # the others took between its slices), not wall time: on a loaded host
        # a few hundred queues' view took over FREE_VIEW of wall time, and a
        # burst of STATUS was refused.
        self._cost_clock = cost_clock
        self._building: dict[Any, _Building] = {}   # greenlet building a sliced view -> its slices so far
        self._built = green.Event()       # set while no sliced view is being built, nor expected
        self._built.set()
        self._expected = 0                # sliced views granted at once whose greenlet has not begun them
        self._free_at = 0.0               # the spacing of the last sliced view built ends
        self._stretch = 1.0 / share       # a view of t seconds holds the lane t * stretch
        self._cost = 0.0                  # the last view's time: what a turn taken now reserves
        self._next_turn = 0.0             # the earliest start of the next turn taken
        self._turns = 0                   # turns taken
        self._waiting_by: Counter[str] = Counter()
        self.waiting = 0
        self.refused = 0
        self.pauses = 0                   # times a sliced view let the others run, since start

    def turn(self, role: str = "open") -> Turn:
        """Take the next turn for a caller of ``role``. Busy (and no turn
        taken) when :data:`MAX_VIEWS_WAITING` views wait already, or
        :data:`MAX_WAITING_PER_ROLE` of that role's, or the turn is more
        than :data:`MAX_VIEW_WAIT` away."""
        now = self._clock()
        start = max(now, self._next_turn)
        wait = start - now
        behind = self._busy()      # its cost not known yet: the turn waits for its end
        waits = wait > 0 or behind
        if waits and (self.waiting >= MAX_VIEWS_WAITING or self._waiting_by[role] >= MAX_WAITING_PER_ROLE
                      or wait > MAX_VIEW_WAIT):
            self.refused += 1
            raise Busy(f"the node's status is asked too often: its views of every queue take {self._cost:.3f}s "
                       f"each and at most {VIEW_SHARE:.0%} of its time; ask again in {wait:.1f}s",
                       reason="views", retry_after=round(wait, 1))
        self._next_turn = start + self._spacing(self._cost)   # reserved: as long as the last view took
        self._turns += 1
        if waits:      # counted from now: a batch of requests read at once counts every one
            self.waiting += 1
            self._waiting_by[role] += 1
        return Turn(wait, self._turns, role, behind)

    def expect(self) -> Callable[[], None]:
        """A sliced view granted at once (:attr:`Turn.now`) that a greenlet
        of its own is about to build (a STATUS: the reader spawns it):
        until it begins, turns taken are ``behind`` it, as behind a view
        being built -- else a burst read in one pass would all be granted
        at once. Returns the function that ends the expectation (given to
        :meth:`timed`; idempotent: call it in a ``finally`` too, for a
        greenlet killed before it began)."""
        self._expected += 1
        self._note_busy()
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self._expected -= 1
                self._note_busy()
        return end

    def _busy(self) -> bool:
        """A sliced view is being built, or expected (:meth:`expect`)."""
        return bool(self._building) or self._expected > 0

    def _note_busy(self) -> None:
        """``_built`` follows :meth:`_busy` (set when neither): call after each change of either."""
        if self._busy():
            self._built.clear()
        else:
            self._built.set()

    def timed(self, build: Callable[[], T], turn: Turn | None = None, *, sliced: bool = False,
              expected: Callable[[], None] | None = None) -> T:
        """``build()`` in ``turn``, its time measured: the turns after it are
        spaced by it. When ``turn`` is the last taken, the next is spaced by
        this view's own time rather than the one reserved for it (the last
        view's): a cheap view after a costly one does not hold the lane as
        long. Turns taken after it keep their places, and the next turn
        never comes sooner than they (before 2026-12-06's review it could:
        a waiter's view ended, the next turn came back to its own spacing,
        and a new caller was given the place a waiter held -- 40 callers
        asking together got 76% of the loop).

        With ``sliced`` -- only in a greenlet that may wait, never the
        service socket's reader -- :meth:`slices` lets the loop's others run
        between two slices of the view, and their time (what the loop's
        thread spent meanwhile) is not the view's. ``expected``: the end of
        this view's expectation (:meth:`expect`), ended as it begins."""
        builder = green.current() if sliced else None
        if expected is not None:
            expected()
        if builder is not None:
            while self._busy():      # one at a time (see wait); a turn given at once may find one
                self._built.wait()
            self._building[builder] = _Building()
            self._note_busy()
        started, spent = self._clock(), self._cost_clock()
        try:
            return build()
        finally:
            building = self._building.pop(builder, None) if builder is not None else None
            others = building.others if building is not None else 0.0
            self._cost = max(0.0, self._cost_clock() - spent - others)
            spaced = started + self._spacing(self._cost)
            last = turn is not None and turn.number == self._turns
            self._next_turn = spaced if last else max(self._next_turn, spaced)
            if building is not None:
                self._free_at = max(self._free_at, spaced)
                self._note_busy()

    @property
    def building(self) -> int:
        """Sliced views being built now (each between two of its slices, but one)."""
        return len(self._building)

    def slices(self, items: Sequence[T]) -> Iterator[Sequence[T]]:
        """``items`` a slice at a time (:func:`miyaq.core.view_rows.in_slices`)
        when this greenlet builds a view with ``sliced`` (:meth:`timed`),
        letting the loop's others run between two slices; else at once (a
        view built outside the lane, or where nothing may wait)."""
        building = self._building.get(green.current())
        if building is None:
            return at_once(items)
        return in_slices(items, lambda: self._let_others_run(building))

    def _let_others_run(self, building: _Building) -> None:
        """Between two slices of the view this greenlet builds: one loop
        iteration for the others, their time kept out of the view's cost."""
        before = self._cost_clock()
        try:
            green.let_others_run()
        finally:
            building.others += self._cost_clock() - before
            self.pauses += 1

    def _spacing(self, cost: float) -> float:
        """How long after a view of ``cost`` seconds began the next may begin."""
        return cost * self._stretch if cost >= FREE_VIEW else 0.0

    def wait(self, turn: Turn) -> None:
        """Wait for ``turn``, in a greenlet that may wait; every turn given a
        wait must be waited (it is counted in :attr:`waiting` until then).
        Then, as long as a view is being built in slices, for its end and
        the spacing it sets: views are built one at a time. (Before this
        rule -- 2026-12-06's review of the slices -- every request read
        while the first view of a node yielded between its slices found
        the last cost unknown, took a turn at once and built its view
        alongside: 100 ``GET /status`` asked together right after start
        were all built at once, 3.4 s of the loop and 461 MB.)"""
        if turn.now:
            return
        try:
            if turn.wait > 0:
                green.sleep(turn.wait)
            while self._busy() or self._free_at > self._clock():
                if self._busy():
                    self._built.wait()
                else:
                    green.sleep(self._free_at - self._clock())
        finally:
            self.waiting -= 1
            self._waiting_by[turn.role] -= 1
            if not self._waiting_by[turn.role]:
                del self._waiting_by[turn.role]

    def run(self, build: Callable[[], T], role: str = "open") -> T:
        """``build()`` in its turn, waiting for it in this greenlet (an HTTP
        request's), and built in slices (:meth:`slices`). Busy when refused
        a turn (:meth:`turn`)."""
        turn = self.turn(role)
        self.wait(turn)
        return self.timed(build, turn, sliced=True)

    def stats(self) -> dict[str, float | int]:
        return {"last_seconds": self._cost, "waiting": self.waiting, "refused": self.refused}
