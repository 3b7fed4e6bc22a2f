"""Fair shares of the hub: a reader loop kept busy by its socket yields
every ``HUB_SLICE`` (:class:`FairShare`), and a long pass over a snapshot
goes a slice at a time (:func:`slices`). Part of the runtime; take them
from :mod:`miyaq.runtime.green`."""
from __future__ import annotations

from collections.abc import Iterator
from time import monotonic as _real_monotonic
from typing import Any, Callable, TypeVar

import gevent

T = TypeVar("T")


HUB_SLICE = 0.02
"""The longest (seconds) a reader loop kept busy by its socket runs before
it yields to the hub (:class:`FairShare`)."""
WAITED_READ = 0.0002
"""A socket read that took this long (seconds, real time) waited in the hub
for its peer: the other greenlets ran meanwhile (:meth:`FairShare.read`)."""


def slices(items: list[T], *, first: int, fewest: int, most: int,
           pause: Callable[[], None] | None = None) -> Iterator[list[T]]:
    """``items`` a slice at a time, calling ``pause`` (default:
    :func:`let_others_run`) between slices. Each slice is sized so that
    working through it takes about ``HUB_SLICE`` of real time, from how long
    the one before took (measured from the slice's yield to the caller's
    next request): between ``fewest`` and ``most`` items, ``first`` (at most
    ``most``) to begin with. Real time, not CPU: on a host whose cores other
    processes share, the slices are smaller, and the hub is held about as
    long as anywhere else. For a loop over a snapshot of the node's state
    (a handoff pass) that must not hold the hub for long."""
    wait = pause if pause is not None else let_others_run
    share = FairShare()
    size = min(first, most)
    start = 0
    while start < len(items):
        if start:
            wait()
            share.waited()
        chunk = items[start:start + size]
        yield chunk
        start += len(chunk)
        spent = share.spent()
        wanted = most if spent <= 0 else int(len(chunk) * HUB_SLICE / spent)
        size = max(min(fewest, most), min(most, wanted))


def let_others_run() -> None:
    """Yield to the hub for one loop iteration, I/O included (``sleep(0)``
    may resume this greenlet before the loop polls)."""
    gevent.sleep(0.0001)


class FairShare:
    """Keeps one reader loop from holding the hub while its socket never
    runs dry: :meth:`check`, between two bursts, yields for one loop
    iteration once the loop has run ``HUB_SLICE`` seconds (real time) since
    it last waited or yielded; :meth:`due` tells a burst to end early when
    that time is up; :meth:`waited` says it just waited (and so let the
    others run). A loop that waits between bursts never yields more than
    that.

    Without it, a node under a steady flood -- a REPLICATE stream, a
    producer's submits, a worker's results -- read burst after burst on one
    socket and left every other greenlet waiting: the other sockets'
    readers, the timers, and the housekeeping whose silence past ``STALL``
    means a frozen process (docs/architecture.md, "Runtime rules")."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = _real_monotonic()

    def waited(self) -> None:
        self._since = _real_monotonic()

    def due(self) -> bool:
        """The loop has had its slice: end the burst (its next :meth:`check` yields)."""
        return _real_monotonic() - self._since >= HUB_SLICE

    def spent(self) -> float:
        """Seconds (real time) since the loop last waited or yielded."""
        return _real_monotonic() - self._since

    def check(self) -> None:
        if self.due():
            let_others_run()
            self._since = _real_monotonic()

    def read(self, read: Callable[[Any], T], arg: Any) -> T:
        """``read(arg)``, a socket read, after a :meth:`check`. A read that
        took ``WAITED_READ`` or longer waited for its peer in the hub (the
        others ran meanwhile) and counts as a wait: a connection that waits
        for its client between requests then never yields on top of it (a
        yield costs a loop iteration, about a millisecond: 3% of a
        sequential HTTP client's time, before 2026-12-05)."""
        self.check()
        start = _real_monotonic()
        try:
            return read(arg)
        finally:
            now = _real_monotonic()
            if now - start >= WAITED_READ:
                self._since = now
