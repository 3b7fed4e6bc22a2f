"""Keep-alive connections to webhook destinations, one delivery on a connection at a time.

Each connection is a geventhttpclient ``HTTPClient`` of a single socket. A
delivery takes one for its whole attempt -- request, answer and body -- and
gives it back only if the answer was read to its end; after anything else
(a timeout, a transport error, an answer that is not HTTP, a body past the
limit) the connection is closed. geventhttpclient's own pool, one client of
``pool_size`` sockets shared by every delivery, cannot be used so: its
parser hands a socket back to the pool when a message completes, while the
request that is reading it may read on (an answer whose status is below 200,
``099``, is taken for an interim one), and a second delivery was then handed
the same socket (gevent's ``ConcurrentObjectUseError``). A connection that
one delivery holds from start to end is never shared.

Per destination (scheme, host, port): at most ``size`` connections open at
once (a delivery past that waits, inside its own timeout) and so at most
``size`` kept idle. At most ``WEBHOOK_MAX_DESTINATIONS`` destinations are
kept, the least recently used closed first; a connection out on a delivery
when its destination is closed is closed when given back.

When private addresses are refused (:class:`~miyaq.gateway.destinations.Destinations`),
a destination's connections go to the address the check resolved and
approved (the request's ``Host`` and, for https, the TLS server name stay
the URL's host), and the destination is made again -- resolved and checked
again -- at least every ``RECHECK_EVERY`` seconds.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from miyaq.constants import WEBHOOK_MAX_DESTINATIONS
from miyaq.gateway.destinations import Destinations
from miyaq.runtime import green, monotonic
from miyaq.runtime.http import HTTPClient

#: Seconds a destination lives before its addresses are resolved and checked again.
RECHECK_EVERY = 60.0

Key = tuple[str, str, int]   # scheme, host, port


class Destination:
    """One destination's connections: at most ``size`` out at once, the
    ones given back whole kept for the next delivery."""

    def __init__(self, make: Callable[[], HTTPClient], size: int, made: float) -> None:
        self._make = make
        self._slots = green.Semaphore(size)
        self.idle: list[HTTPClient] = []
        self.made = made
        self.closed = False

    def take(self) -> HTTPClient:
        """A connection for one delivery; waits while ``size`` are out (a
        caller's ``green.Timeout`` ends the wait)."""
        self._slots.acquire()
        try:
            return self.idle.pop() if self.idle else self._make()
        except BaseException:
            self._slots.release()
            raise

    def give_back(self, client: HTTPClient, reusable: bool) -> None:
        """End a delivery's hold on ``client``: kept if ``reusable`` (its
        answer was read to the end) and the destination is open, else closed."""
        self._slots.release()
        if reusable and not self.closed:
            self.idle.append(client)
        else:
            client.close()

    def close(self) -> None:
        self.closed = True
        for client in self.idle:
            client.close()
        self.idle.clear()


class Connections:
    """The destinations deliveries go to, each made on first use."""

    def __init__(self, size: int, connect_timeout: float, destinations: Destinations) -> None:
        self.size = size
        self.connect_timeout = connect_timeout
        self.destinations = destinations
        self._kept: OrderedDict[Key, Destination] = OrderedDict()

    def destination(self, key: Key, timeout: float) -> Destination:
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
        options: dict[str, Any] = {}
        if address is not None:   # connect to the checked address; the URL's host in Host and SNI
            default_port = 443 if scheme == "https" else 80
            bracketed = f"[{host}]" if ":" in host else host
            options["headers"] = {"Host": bracketed if port == default_port else f"{bracketed}:{port}"}
            if scheme == "https":
                options["ssl_options"] = {"server_hostname": host}

        def connection() -> HTTPClient:
            return HTTPClient(address or host, port, ssl=scheme == "https", concurrency=1,
                              connection_timeout=min(self.connect_timeout, timeout), network_timeout=timeout,
                              **options)

        made = self._kept[key] = Destination(connection, self.size, monotonic())
        while len(self._kept) > WEBHOOK_MAX_DESTINATIONS:
            self._kept.popitem(last=False)[1].close()
        return made

    def close(self) -> None:
        for destination in self._kept.values():
            destination.close()
        self._kept.clear()
