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
* **The kernel holds little of an answer** (:func:`bound_send_queue`): at
  most ``SEND_LOWAT`` bytes of it unsent, and no byte longer than the body
  timeout once the client stops taking them. The kernel's own send buffer
  grows to ``net.ipv4.tcp_wmem`` (4 MiB): a client that asked for large
  answers and read none held that much of the machine's memory a
  connection (500 connections, 1.4 MB answers: 608 MB), outside the
  node's RSS -- and kept it after the node closed the connection, for as
  long as the client kept its window shut.
"""
from __future__ import annotations

import errno
import io
import socket
from typing import Any, Callable

from miyaq.runtime import green

#: The most bytes a request's header lines may take together (the request
#: line is bounded apart, by gevent: 8 KiB). Far above what any client of
#: the gateway sends (a token, a cookie, a content type).
MAX_HEADER_BYTES = 64 * 1024
#: An answer is sent in pieces of at most this many bytes, each within the
#: send deadline: a slow client that keeps taking bytes is never cut off.
SEND_PIECE = 256 * 1024
#: Bytes of an answer the kernel may hold not yet sent, a connection
#: (``TCP_NOTSENT_LOWAT``): past them the gateway's write waits for the
#: client. Bytes in flight are not counted, so the kernel's autotuning of
#: the send buffer still fills a long fat path.
SEND_LOWAT = 128 * 1024
_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", None)     # Linux, macOS
_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)       # Linux
_MAX_USER_TIMEOUT_MS = 2 ** 31 - 1


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


def bound_send_queue(sock: Any, seconds: float) -> None:
    """Bound what the kernel holds of the answers written to the accepted TCP
    socket ``sock``: at most ``SEND_LOWAT`` bytes not yet sent
    (``TCP_NOTSENT_LOWAT``), and nothing for longer than ``seconds`` without
    the client taking it (``TCP_USER_TIMEOUT``: bytes unacknowledged, or
    unsent behind a shut window, that long end the connection -- also once
    the gateway has closed it, when the kernel would otherwise keep the
    orphaned socket and its bytes while the client answers its probes). A
    system without an option, or a socket that refuses it, goes without."""
    for option, value in ((_NOTSENT_LOWAT, SEND_LOWAT),
                          (_USER_TIMEOUT, min(_MAX_USER_TIMEOUT_MS, max(1, round(seconds * 1000))))):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
        except OSError:
            pass


class SendTimeout(TimeoutError):
    """The client did not take a piece of an answer within the deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(errno.ETIMEDOUT, f"the client took no part of the answer within {seconds:g}s")


def send_within(sock: Any, sendall: Callable[[bytes | memoryview], None], data: bytes, seconds: float) -> None:
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
            sendall(data if len(view) <= SEND_PIECE else view[start:start + SEND_PIECE])   # a view: no copy
    except TimeoutError:          # gevent's socket.timeout, or ETIMEDOUT: the kernel's (bound_send_queue)
        raise SendTimeout(seconds) from None
    finally:
        sock.settimeout(before)


__all__ = ["MAX_HEADER_BYTES", "SEND_LOWAT", "SEND_PIECE", "HeaderBudget", "HeadersTooLarge", "SendTimeout",
           "bound_send_queue", "fair_rfile", "send_within"]
