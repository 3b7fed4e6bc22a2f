"""A request's body on a gateway connection (:mod:`miyaq.gateway.wsgi`):
read within a deadline, and what the handler left of it discarded -- or,
when the connection closes with part of it still coming, read away after
the answer.

* **Body**: reading a request's body (by the handler, or discarding what it
  did not read) takes at most ``body_timeout``; then 408 and the connection
  closes. A body the handler left unread is discarded only up to
  ``max_body`` bytes; beyond that the connection closes instead
  (:class:`TimedInput`).
* **Lingering close**: a connection that closes with part of a request's
  body still coming (a body refused as too large, one not skipped) is
  half-closed after the answer and what the client still sends is read and
  thrown away -- for at most ``LINGER_SECONDS`` and ``LINGER_BODIES`` times
  ``max_body`` bytes -- until the client closes (:func:`linger`).
  Closed at once with those bytes unread, the kernel answered the client's
  next segment with a reset that destroyed the answer already sent: a client
  that sends its whole body before reading (Python's ``http.client``) saw
  ``ConnectionResetError`` instead of its 413.
"""
from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from miyaq.gateway.errors import RequestTimeout
from miyaq.runtime import green, monotonic
from miyaq.runtime.green import WSGIInput

if TYPE_CHECKING:
    from miyaq.gateway.wsgi import ConnectionLimits, GatewayHandler

LINGER_SECONDS = 5.0
"""Seconds at most a connection closing with a body still coming reads and
throws away what its client sends after the answer (the lingering close;
nginx's default is 30 s, Apache's 2 s): time for a client on a slow link to
finish sending a body of a few MiB and read its answer, and the most a
client trickling a refused body adds to its connection's time."""
LINGER_BODIES = 2
"""A lingering close reads and throws away at most this many times
``max_body`` bytes (8 MiB with the default 4 MiB ``http_max_body``); a
client still sending after that is cut off (and likely sees a reset)."""


class TimedInput(WSGIInput):
    """A request body whose reads share one deadline (``body_timeout`` from
    the first read); discarding what the application left unread is bounded
    in time and bytes, else the connection closes."""

    __slots__ = ("_deadline", "_handler", "_seconds", "_max_discard")

    def __init__(self, original: Any, handler: GatewayHandler, limits: ConnectionLimits) -> None:
        super().__init__(original.rfile, original.content_length, socket=original.socket,
                         chunked_input=original.chunked_input)
        self._handler = handler
        self._seconds = limits.body_timeout
        self._max_discard = limits.max_body
        self._deadline: float | None = None

    def _timed(self, read: Callable[[Any], bytes], arg: Any) -> bytes:
        if self._deadline is None:
            self._deadline = monotonic() + self._seconds
        timer = green.Timeout(max(0.0, self._deadline - monotonic()))
        timer.start()
        try:
            return read(arg)
        except green.Timeout as exc:
            if exc is not timer:
                raise
            self._chunked_input_error = True  # type: ignore[misc]  # mid-body: never read it again
            self._handler.close_connection = True
            raise RequestTimeout(f"the request body did not arrive within {self._seconds:g}s") from None
        finally:
            timer.close()

    def read(self, length: int | None = None) -> bytes:
        return self._timed(super().read, length)

    def readline(self, size: int | None = None) -> bytes:
        return self._timed(super().readline, size)

    def body_unfinished(self) -> bool:
        """Is part of the body still to come from the client? False once it
        was read to its end, and after a read that failed (a body timeout, a
        malformed chunk, the client gone): nothing more is worth waiting for."""
        if self._chunked_input_error:
            return False
        if self.chunked_input:
            return bool(self.chunk_length != 0)
        return self.position < (self.content_length or 0)

    def _discard(self) -> None:
        handler = self._handler
        if self._chunked_input_error:
            return   # the connection closes: nothing to skip to the next request
        if handler.close_connection:
            handler.linger_wanted = self.body_unfinished()
            return   # the connection closes: nothing to skip to the next request
        if self.socket is not None and self.position == 0:
            # "Expect: 100-continue" never answered: the client may never send
            # the body. Reading it would send a stray "100 Continue" after the
            # final answer (taken for the next request's go-ahead) and wait.
            handler.close_connection = handler.linger_wanted = True
            return
        left = (self.content_length or 0) - self.position
        if not self.chunked_input and left <= 0:
            return
        if left > self._max_discard:
            handler.close_connection = handler.linger_wanted = True
            return
        skipped = 0
        try:
            while skipped <= self._max_discard:
                data = self.read(16384)
                if not data:
                    return
                skipped += len(data)
            handler.linger_wanted = True     # over max_discard: still coming
        except (RequestTimeout, OSError, ValueError):
            pass
        handler.close_connection = True


def linger(sock: Any, rfile: Any, max_body: int) -> None:
    """The lingering close (as nginx's and Apache's), run in the
    connection's own greenlet before pywsgi closes the socket: half-close
    it (the client sees the answer end), then read and throw away what
    the client still sends until it closes, for at most
    ``LINGER_SECONDS`` and ``LINGER_BODIES`` x ``max_body`` bytes. A
    socket closed with bytes unread is answered with a reset, which
    destroys the answer the client has not read yet. ``sock`` and ``rfile``
    are the connection's socket (None: closed already) and its read file;
    ``max_body`` is the connection's ``ConnectionLimits.max_body``."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return   # gone already
    budget = LINGER_BODIES * max_body
    timer = green.Timeout(LINGER_SECONDS)
    timer.start()
    try:
        while budget > 0:
            data = rfile.read1(min(65536, budget))
            if not data:
                return   # the client closed: nothing will be reset
            budget -= len(data)
    except green.Timeout as exc:
        if exc is not timer:
            raise
    except (OSError, ValueError):   # reset, or the file closed
        pass
    finally:
        timer.close()

