"""Kept-alive connections to webhook destinations, one delivery on a connection at a time.

Each connection (:func:`miyaq.runtime.http.connection`) is taken by one
delivery for its whole attempt -- request, answer and body -- and given back
only if the answer was read to its end; after anything else (a timeout, a
transport error, an answer that is not HTTP, a body past the limit) it is
closed, so what is left of a broken answer never reaches another delivery.
An idle connection the destination closed meanwhile is dropped when taken,
and a new one opened.

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

import ssl
from collections import OrderedDict
from collections.abc import Callable

from miyaq.constants import WEBHOOK_MAX_DESTINATIONS
from miyaq.gateway.destinations import Destinations
from miyaq.runtime import green, monotonic
from miyaq.runtime.http import HTTPConnection, client_context, connection, dropped

#: Seconds a destination lives before its addresses are resolved and checked again.
RECHECK_EVERY = 60.0

Key = tuple[str, str, int]   # scheme, host, port


class Destination:
    """One destination's connections: at most ``size`` out at once, the
    ones given back whole kept for the next delivery."""

    def __init__(self, make: Callable[[float], HTTPConnection], size: int, made: float) -> None:
        self._make = make
        self._slots = green.Semaphore(size)
        self.idle: list[HTTPConnection] = []
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
                kept = self.idle.pop()
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
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
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

        made = self._kept[key] = Destination(make, self.size, monotonic())
        while len(self._kept) > WEBHOOK_MAX_DESTINATIONS:
            self._kept.popitem(last=False)[1].close()
        return made

    def close(self) -> None:
        for destination in self._kept.values():
            destination.close()
        self._kept.clear()
