"""Outgoing HTTP/1.1 for the hub: the standard library's ``http.client``
over sockets that wait cooperatively (:mod:`.green`).

``http.client`` bounds what a server can make its client hold: a status or
header line of at most 64 KiB and at most 100 header lines, else
``LineTooLong`` or ``HTTPException``; a body is read by the caller, in
pieces it sizes. (geventhttpclient, used before, kept every header byte a
server sent: a destination streaming headers grew a node by a gigabyte in
seconds.)

A connection goes to ``address`` when one is given -- the address a check
resolved and approved -- while the request's ``Host`` header and, for
https, the TLS server name and the certificate's check stay the URL's
host. It is opened on the first request and again after the server
closed it, never shared by two greenlets at once (the caller's rule).

An answer is read through :class:`_Guarded`: each read checks the
request's deadline (:class:`AnswerTooSlow` past it) and yields to the hub
after ``green.HUB_SLICE`` of reading without a wait. A socket that always
has bytes waiting never makes a cooperative read wait, so a server
streaming endless ``100 Continue`` answers or chunked trailers (which
``http.client`` skips without a bound) held the hub -- the whole node --
for as long as it streamed, and no ``green.Timeout`` could fire meanwhile.
"""
from __future__ import annotations

import http.client
import io
import select
import socket
import ssl
from time import monotonic
from typing import Any

from . import green

#: Everything ``http.client`` raises for an answer that is not HTTP
#: (a broken status line, a line or header count over its bounds, a body
#: cut short); transport failures are ``OSError``.
HTTPException = http.client.HTTPException
HTTPResponse = http.client.HTTPResponse

__all__ = ["AnswerTooSlow", "HTTPConnection", "HTTPException", "HTTPResponse", "client_context", "connection",
           "dropped", "final_response"]


class AnswerTooSlow(TimeoutError):
    """The request's deadline passed while its answer was still being read."""


class _Reader(io.RawIOBase):
    """Reads the socket's own raw file for ``conn``: never past its deadline,
    never holding the hub longer than a slice (module docstring). The
    socket's file, not the socket: it keeps the descriptor open while the
    answer is read after the connection was closed (``Connection: close``:
    ``http.client`` closes the socket before the body is read)."""

    def __init__(self, raw: Any, conn: "HTTPConnection") -> None:
        super().__init__()
        self.raw = raw
        self.conn = conn
        self.share = green.FairShare()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if monotonic() >= self.conn.deadline:
            raise AnswerTooSlow(f"no complete answer within {self.conn.wait:g}s")
        return int(self.share.read(self.raw.readinto, buffer) or 0)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _Guarded:
    """A connected socket whose answers are read through a :class:`_Reader`;
    everything else is the socket's own."""

    def __init__(self, sock: Any, conn: "HTTPConnection") -> None:
        self._sock = sock
        self._conn = conn

    def makefile(self, mode: str) -> Any:
        return io.BufferedReader(_Reader(self._sock.makefile("rb", buffering=0), self._conn))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class HTTPConnection(http.client.HTTPConnection):
    """A plain connection to ``address`` (else the host) for the URL's host."""

    def __init__(self, host: str, port: int, *, address: str | None, timeout: float,
                 connect_timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address or host
        self.connect_timeout = connect_timeout
        self.wait = timeout
        self.deadline = monotonic() + timeout

    def set_timeout(self, timeout: float) -> None:
        """Each wait of the next request at most ``timeout`` seconds (and
        opening the connection at most ``connect_timeout``), the socket
        already open included: a kept-alive connection serves requests of
        other deadlines than the one that opened it."""
        self.timeout = self.wait = timeout
        self.deadline = monotonic() + timeout
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def _open(self) -> socket.socket:
        sock = green.create_connection((self.address, self.port), min(self.connect_timeout, self.wait))
        sock.settimeout(self.wait)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def connect(self) -> None:
        self.sock = _Guarded(self._open(), self)


class _HTTPSConnection(HTTPConnection):
    """TLS over the same: server name and certificate checked for the URL's host."""

    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, *, address: str | None, timeout: float, connect_timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(host, port, address=address, timeout=timeout, connect_timeout=connect_timeout)
        self.context = context

    def connect(self) -> None:
        self.sock = _Guarded(self.context.wrap_socket(self._open(), server_hostname=self.host), self)


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """A TLS client context whose sockets wait cooperatively: certificates
    verified against ``cafile`` if given, else the system's CA certificates,
    and the host name checked."""
    context: ssl.SSLContext = green.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        context.load_verify_locations(cafile=cafile)
    else:
        context.load_default_certs()
    return context


def connection(scheme: str, host: str, port: int, *, timeout: float, connect_timeout: float,
               address: str | None = None, context: ssl.SSLContext | None = None) -> HTTPConnection:
    """A connection for ``scheme://host:port`` (``https`` needs ``context``)."""
    if scheme == "https":
        if context is None:
            raise ValueError("an https connection needs a TLS context")
        return _HTTPSConnection(host, port, address=address, timeout=timeout, connect_timeout=connect_timeout,
                                context=context)
    return HTTPConnection(host, port, address=address, timeout=timeout, connect_timeout=connect_timeout)


def dropped(conn: HTTPConnection) -> bool:
    """True if an idle kept-alive connection can no longer carry a request:
    the server closed it, or sent something nobody asked for. Asks without
    waiting (a readable idle socket is either)."""
    if conn.sock is None:
        return False    # not open: the next request opens it
    poller = select.poll()   # not select(): a descriptor past 1023 is as good as any
    try:
        poller.register(conn.sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class _SameStream:
    """Hands a new :class:`HTTPResponse` the buffered reader an interim
    answer stopped in (what follows it on the wire is the next answer)."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def makefile(self, mode: str) -> Any:
        return self.reader


def final_response(conn: HTTPConnection, method: str, max_interim: int) -> HTTPResponse:
    """The answer to the request just sent on ``conn``, past at most
    ``max_interim`` interim answers (1xx but 100, which ``http.client``
    skips itself, and 101; ``103 Early Hints``): the final answer follows
    them on the same connection. More is :class:`HTTPException`."""
    response = conn.getresponse()
    interim = 0
    while 102 <= response.status < 200:
        interim += 1
        if interim > max_interim:
            raise HTTPException(f"more than {max_interim} interim answers")
        reader = response.fp   # moves to the next answer: the interim one is closed without closing it,
        response.fp = None     # type: ignore[assignment]   # as http.client's own close leaves it
        response = HTTPResponse(_SameStream(reader), method=method)   # type: ignore[arg-type]
        response.begin()
    return response
