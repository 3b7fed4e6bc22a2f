"""What one gateway connection reads and writes, bounded so that no client
holds the hub, the memory or a connection slot for longer than it may.

* **Reads share the hub** (:func:`fair_rfile`): a connection's bytes are read
  through a :class:`~miyaq.runtime.green.FairShare`, which yields once the
  connection has had its slice of the hub. gevent parses a request --
  chunk sizes, chunk extensions, trailers, pipelined requests -- out of a
  buffer that a fast client never lets run dry, so without it nothing ever
  yielded: one client sending endless trailers froze the whole node (its
  ZeroMQ port included) for as long as it sent, and no deadline could fire,
  since a gevent timer needs a yield to be delivered.
* **Headers have a budget** (:class:`HeaderBudget`): at most
  ``MAX_HEADER_BYTES`` for a request's header lines together (each line
  was bounded, 64 KiB, and their number, 100; together 6.4 MB a request,
  held as long as the request -- a long-poll's for an hour).
* **Answers are taken in time** (:func:`send_within`): each piece of an
  answer must be taken by the client within the body timeout; a client
  that stops reading held its connection, and its slot of the node's
  ``http_max_connections``, for ever.
"""
from __future__ import annotations

import errno
import io
from typing import Any, Callable

from miyaq.runtime import green

#: The most bytes a request's header lines may take together (the request
#: line is bounded apart, by gevent: 8 KiB). Far above what any client of
#: the gateway sends (a token, a cookie, a content type).
MAX_HEADER_BYTES = 64 * 1024
#: An answer is sent in pieces of at most this many bytes, each within the
#: send deadline: a slow client that keeps taking bytes is never cut off.
SEND_PIECE = 256 * 1024


class _FairRaw(io.RawIOBase):
    """A socket's raw file, read through a fair share of the hub."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self.raw = raw
        self.share = green.FairShare()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return int(self.share.read(self.raw.readinto, buffer) or 0)

    def close(self) -> None:
        self.raw.close()
        super().close()


def fair_rfile(sock: Any) -> io.BufferedReader:
    """The buffered file a connection's requests are read from (as gevent's
    own ``sock.makefile('rb')``), yielding to the hub at every slice."""
    return io.BufferedReader(_FairRaw(sock.makefile("rb", buffering=0)))


class HeadersTooLarge(ValueError):
    """A request's header lines exceed ``MAX_HEADER_BYTES`` (answered 431)."""


class HeaderBudget:
    """The file a request's header lines are parsed from (``http.client``
    reads them with ``readline`` alone), failing once they exceed
    ``budget`` bytes together."""

    def __init__(self, fp: Any, budget: int = MAX_HEADER_BYTES) -> None:
        self.fp = fp
        self.left = budget

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self.fp.readline(limit)
        self.left -= len(line)
        if self.left < 0:
            raise HeadersTooLarge(f"the request's headers are over {MAX_HEADER_BYTES // 1024} KiB")
        return line


class SendTimeout(TimeoutError):
    """The client did not take a piece of an answer within the deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(errno.ETIMEDOUT, f"the client took no part of the answer within {seconds:g}s")


def send_within(sock: Any, sendall: Callable[[bytes], None], data: bytes, seconds: float) -> None:
    """``sendall`` ``data`` (through ``sock``) in pieces of at most
    ``SEND_PIECE`` bytes, each within ``seconds``; :class:`SendTimeout` (an
    ``OSError`` with ``ETIMEDOUT``) when one is not taken in time. The
    socket's own timeout bounds each piece (gevent's sendall applies it to
    the whole call), set for the send only: reads keep their own deadlines."""
    view = memoryview(data)
    before = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        for start in range(0, max(len(view), 1), SEND_PIECE):
            sendall(data if len(view) <= SEND_PIECE else bytes(view[start:start + SEND_PIECE]))
    except TimeoutError:          # gevent's socket.timeout
        raise SendTimeout(seconds) from None
    finally:
        sock.settimeout(before)


__all__ = ["MAX_HEADER_BYTES", "SEND_PIECE", "HeaderBudget", "HeadersTooLarge", "SendTimeout", "fair_rfile",
           "send_within"]
