"""Kept-alive connections to webhook destinations, one delivery on a connection at a time.

Each connection (:func:`miyaq.runtime.http.connection`) is taken by one
delivery for its whole attempt -- request, answer and body -- and given back
only if the answer was read to its end; after anything else (a timeout, a
transport error, an answer that is not HTTP, a body past the limit) it is
closed, so what is left of a broken answer never reaches another delivery.
An idle connection the destination closed meanwhile is dropped when taken,
and a new one opened. While any connection is kept idle, a sweep every
``IDLE_SWEEP`` seconds closes those idle longer than ``IDLE_KEEP`` and
those the destination closed: a burst of deliveries to many destinations
leaves no sockets behind once it is over (before 2026-12-05 they stayed
until their destination was used again or pushed out by 256 newer ones: up
to 256 × ``webhook_pool_size`` descriptors held, most of them already
closed by the other end).

Per destination (scheme, host, port): at most ``size`` connections open at
once (a delivery past that waits, inside its own timeout) and so at most
``size`` kept idle. At most ``WEBHOOK_MAX_DESTINATIONS`` destinations are
kept, the least recently used closed first; a connection out on a delivery
when its destination is closed is closed when given back.

When private addresses are refused (:class:`~miyaq.gateway.destinations.Destinations`),
a destination's connections go to the address the check resolved and
approved (the request's ``Host`` and, for https, the TLS server name stay
the URL's host), and the destination is made again -- resolved and checked
again -- at least every ``RECHECK_EVERY`` seconds. https destinations are
verified against the system's CA certificates.
"""
from __future__ import annotations

import logging
import ssl
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from miyaq.constants import WEBHOOK_MAX_DESTINATIONS
from miyaq.gateway.destinations import Destinations
from miyaq.runtime import green, monotonic
from miyaq.runtime.http import HTTPConnection, client_context, connection, dropped

logger = logging.getLogger(__name__)

#: Seconds a destination lives before its addresses are resolved and checked again.
RECHECK_EVERY = 60.0
#: Seconds a kept-alive connection may stay idle before it is closed
#: (servers close theirs after 5-75 s: one closed by the destination goes at the next sweep).
IDLE_KEEP = 30.0
#: Seconds between two looks at the idle connections, while any is kept.
IDLE_SWEEP = 5.0

Key = tuple[str, str, int]   # scheme, host, port


class Destination:
    """One destination's connections: at most ``size`` out at once, the
    ones given back whole kept for the next delivery."""

    def __init__(self, make: Callable[[float], HTTPConnection], size: int, made: float,
                 kept_idle: Callable[[], None] = lambda: None) -> None:
        self._make = make
        self._slots = green.Semaphore(size)
        self._kept_idle = kept_idle     # told each time a connection is kept idle (must not block)
        self.idle: list[tuple[HTTPConnection, float]] = []     # (connection, monotonic() when given back)
        self.made = made
        self.closed = False

    def take(self, timeout: float) -> HTTPConnection:
        """A connection for one delivery whose waits are each at most
        ``timeout`` seconds (the delivery's own, not the one that opened a
        kept connection); waits while ``size`` are out (a caller's
        ``green.Timeout`` ends the wait)."""
        self._slots.acquire()
        try:
            while self.idle:
                kept = self.idle.pop()[0]
                if not dropped(kept):
                    kept.set_timeout(timeout)
                    return kept
                kept.close()
            return self._make(timeout)
        except BaseException:
            self._slots.release()
            raise

    def give_back(self, conn: HTTPConnection, reusable: bool) -> None:
        """End a delivery's hold on ``conn``: kept if ``reusable`` (its
        answer was read to the end) and the destination is open, else closed."""
        self._slots.release()
        if reusable and not self.closed:
            self.idle.append((conn, monotonic()))
            self._kept_idle()
        else:
            conn.close()

    def sweep(self, now: float) -> int:
        """Close the idle connections given back more than ``IDLE_KEEP``
        seconds before ``now``, and those the destination closed; returns
        how many are still kept. Never blocks."""
        kept = []
        for conn, since in self.idle:
            if now - since > IDLE_KEEP or dropped(conn):
                conn.close()
            else:
                kept.append((conn, since))
        self.idle = kept
        return len(kept)

    def close(self) -> None:
        self.closed = True
        for conn, _ in self.idle:
            conn.close()
        self.idle.clear()


class Connections:
    """The destinations deliveries go to, each made on first use."""

    def __init__(self, size: int, connect_timeout: float, destinations: Destinations) -> None:
        self.size = size
        self.connect_timeout = connect_timeout
        self.destinations = destinations
        self._kept: OrderedDict[Key, Destination] = OrderedDict()
        self._context: ssl.SSLContext | None = None
        self._sweeper: Any = None       # the timer of the next sweep, while a connection is kept idle

    def _tls(self) -> ssl.SSLContext:
        """The TLS context of every https destination, made on first use."""
        if self._context is None:
            self._context = client_context()
        return self._context

    def destination(self, key: Key) -> Destination:
        """The destination of ``key``; a new one is resolved and checked first
        (ForbiddenDestination, or OSError if its host does not resolve)."""
        kept = self._kept.get(key)
        if kept is not None:
            if not self.destinations.guards_private or monotonic() - kept.made < RECHECK_EVERY:
                self._kept.move_to_end(key)
                return kept
            del self._kept[key]
            kept.close()
        scheme, host, port = key
        address = self.destinations.connect_address(host, port)
        context = self._tls() if scheme == "https" else None

        def make(timeout: float) -> HTTPConnection:
            return connection(scheme, host, port, address=address, timeout=timeout,
                              connect_timeout=self.connect_timeout, context=context)

        made = self._kept[key] = Destination(make, self.size, monotonic(), self._sweep_soon)
        while len(self._kept) > WEBHOOK_MAX_DESTINATIONS:
            self._kept.popitem(last=False)[1].close()
        return made

    def _sweep_soon(self) -> None:
        if self._sweeper is None:
            self._sweeper = green.call_later(IDLE_SWEEP, self._sweep)

    def _sweep(self) -> None:
        """A hub callback: must not block or raise."""
        self._sweeper = None
        now = monotonic()
        left = 0
        for destination in list(self._kept.values()):
            try:
                left += destination.sweep(now)
            except Exception:       # a close that failed: the next sweep tries again
                logger.exception("closing idle webhook connections failed")
                left += 1
        if left:
            self._sweep_soon()

    def idle_connections(self) -> int:
        """Connections kept idle now, every destination together."""
        return sum(len(d.idle) for d in self._kept.values())

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.close()
            self._sweeper = None
        for destination in self._kept.values():
            destination.close()
        self._kept.clear()
