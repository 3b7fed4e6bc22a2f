"""The gateway's HTTP server: gevent's WSGI server, bounded against slow and
malformed clients.

* **Per client**: at most ``per_client`` connections from one address at
  once (``http_max_client_connections``); one more is answered 503 ``busy``
  (plain HTTP) or closed (TLS) at once, before any byte of it is read. The
  node's pool (``http_max_connections``) bounds them all. An IPv6 client
  counts by its /64 (:func:`client_group`): one host is usually given a
  whole /64 and may connect from any address in it.
* **Headers**: a request's line and headers must arrive within
  ``header_timeout`` of the request's start -- for a new connection, of its
  accept: the TLS handshake and the first request's line and headers share
  one ``header_timeout`` (:attr:`GatewayHandler.first_deadline`); else 408
  and the connection closes (a handshake not done in time: closed).
* **Idle**: a keep-alive connection may wait ``idle_timeout`` for its next
  request; then it is closed quietly.
* **Body**: reading a request's body takes at most ``body_timeout``, and
  what the handler left unread is discarded only up to ``max_body`` bytes;
  a connection that closes with part of a body still coming is half-closed
  after the answer and what the client still sends is read away for a
  while (the lingering close): :mod:`miyaq.gateway.request_body`.
* **Malformed**: a request line or headers the server cannot parse get a 400
  in the gateway's JSON error shape, and the connection closes.

Every refusal at this level is reported with a reason from a fixed set
(:data:`REFUSALS`), so the metrics it feeds cannot grow with what clients send.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from miyaq.gateway.conn_io import (SEND_PIECE, HeaderBudget, HeadersTooLarge, SendTimeout,
                                   bound_send_queue, fair_rfile, send_within)
from miyaq.gateway.raw_answers import (HEADER_TIMEOUT, HEADERS_TOO_LARGE, LINE_TOO_LONG, MALFORMED,
                                       too_many_connections)
from miyaq.gateway.request import CLIENT, CONNECTION
from miyaq.gateway.request_body import TimedInput, linger
from miyaq.gateway.tls_accept import handshake
from miyaq.runtime import green, monotonic
from miyaq.runtime.green import WSGIHandler, WSGIServer

logger = logging.getLogger(__name__)

#: Reasons a connection or request is refused before the application sees it
#: (``send_timeout``: the client took no part of an answer in time;
#: ``body_budget``: a body that would pass ``http_body_budget``, answered 503;
#: ``answer_budget``: an answer that would pass ``http_answer_budget``, answered 503 instead;
#: ``answer_share``: one that would pass its client's share of it, the same).
REFUSALS = ("client_limit", "header_timeout", "tls_handshake", "malformed", "headers_too_large", "open_files",
            "send_timeout", "body_budget", "answer_budget", "answer_share")

ACCEPT_PAUSE_MIN = 0.05
"""Seconds the server stops accepting when the process is out of file
descriptors; doubled at every failed accept, up to ``ACCEPT_PAUSE_MAX``."""
ACCEPT_PAUSE_MAX = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds every connection of one gateway keeps (its ``http_*``
    settings; seconds, a count, bytes): see the module's docstring."""

    header_timeout: float
    body_timeout: float
    idle_timeout: float
    per_client: int          # connections from one address at once (0: no cap)
    max_body: int            # bytes of an unread body discarded to keep a connection


class GatewayHandler(WSGIHandler):
    """One connection: header and idle deadlines, a timed body, JSON 400s,
    and a response's head and body sent in one write."""

    server: GatewayServer
    _coalesce: list[bytes] | None = None
    _header_timer: Any = None
    _served = 0
    linger_wanted = False
    """Set when the connection is to close with part of a request's body
    still coming: :func:`~miyaq.gateway.request_body.linger` reads it away
    after the answer."""
    _answer_failed = False
    client = ""
    """The client's key (:func:`client_group`), set by :meth:`GatewayServer.handle`."""
    first_deadline: float | None = None
    """``monotonic()`` by which the first request's line and headers must be in:
    ``header_timeout`` after the accept, set by :meth:`GatewayServer.handle`
    (before 2026-12-05 the first request got a whole ``header_timeout`` of its
    own after a TLS handshake that had taken up to one already). None: a
    whole ``header_timeout`` from the first read."""
    ignored_socket_errors = (*WSGIHandler.ignored_socket_errors, errno.ETIMEDOUT)   # SendTimeout: close quietly

    def __init__(self, sock: Any, address: Any, server: GatewayServer, rfile: Any = None) -> None:
        super().__init__(sock, address, server, rfile=fair_rfile(sock) if rfile is None else rfile)

    def log_request(self) -> None:
        """No access log (the server's ``log`` is None: requests are counted in
        the metrics instead). pywsgi formatted a line for every request only to
        throw it away: a ``datetime`` and a string, 3.5% of a busy node's CPU."""

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 - pywsgi's name
        return super().MessageClass(HeaderBudget(fp), *args)

    # -- deadlines ------------------------------------------------------------------
    def read_requestline(self) -> str:
        limits = self.server.limits
        if self._served and not self._wait_for_request(limits.idle_timeout):
            return ""   # idle too long or gone: close quietly
        self._header_timer = green.Timeout(self.header_seconds())
        self._served += 1
        self._header_timer.start()
        return str(super().read_requestline())

    def header_seconds(self) -> float:
        """Seconds the next request's line and headers may take: what is left
        of ``first_deadline`` for the first request (0 if it passed), a whole
        ``header_timeout`` for the next ones on a keep-alive connection."""
        if not self._served and self.first_deadline is not None:
            return max(0.0, self.first_deadline - monotonic())
        return float(self.server.limits.header_timeout)

    def _wait_for_request(self, seconds: float) -> bool:
        timer = green.Timeout(seconds)
        timer.start()
        try:
            return bool(self.rfile.peek(1))
        except green.Timeout as exc:
            if exc is not timer:
                raise
            return False
        except OSError as exc:
            if exc.errno == errno.ETIMEDOUT:    # the kernel ended it: the last answer was not taken (conn_io)
                self.server.refused("send_timeout")
            return False
        finally:
            timer.close()

    def read_request(self, raw_requestline: str) -> bool:
        try:
            return bool(super().read_request(raw_requestline))
        finally:
            if self._header_timer is not None:   # kept until handle_one_request has seen what fired
                self._header_timer.close()

    def handle_one_request(self) -> Any:
        try:
            result = super().handle_one_request()
        except green.Timeout as exc:
            if exc is not self._header_timer:
                raise
            self.server.refused("header_timeout")
            return ("408", HEADER_TIMEOUT)
        finally:
            if self._header_timer is not None:
                self._header_timer.close()
                self._header_timer = None
        if isinstance(result, tuple) and result[0] == "414":
            self.server.refused("malformed")
            return ("414", LINE_TOO_LONG)
        if result is None and self.linger_wanted and not self._answer_failed:
            self.linger_wanted = False
            linger(self.socket, self.rfile, self.server.limits.max_body)
        return result

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        # always the bounded stream, also for a request asking to upgrade (where
        # pywsgi would hand over the raw socket file)
        original: Any = getattr(self, "wsgi_input")   # set by pywsgi (untyped there)
        self.wsgi_input = env["wsgi.input"] = TimedInput(original, self, self.server.limits)
        env[CONNECTION] = self.socket     # a long-poll watches it for its client hanging up
        env[CLIENT] = self.client         # its large answers count in its share of the answer budget
        return env

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """A request line or headers pywsgi cannot parse: 400 in the JSON
        shape; headers over their budget: 431."""
        if isinstance(ex, HeadersTooLarge):
            self.server.refused("headers_too_large")
            return ("431", HEADERS_TOO_LARGE)
        logger.debug("malformed HTTP request from %s: %s", self.client_address, ex)
        self.server.refused("malformed")
        return ("400", MALFORMED)

    # -- one write per answer ---------------------------------------------------------
    def _write_with_headers(self, data: bytes) -> None:
        """pywsgi writes a head and its body separately: two system calls and,
        with TCP_NODELAY, two packets per answer. Relies on pywsgi's
        ``_write_with_headers`` sending through ``_sendall`` (true of every
        gevent release since 1.x). An answer larger than a piece
        (``SEND_PIECE``) goes as it is, its head first: joined, the body
        would be copied once more, and the copy held while a slow client
        takes it."""
        self._coalesce = []
        try:
            super()._write_with_headers(data)
        finally:
            pending, self._coalesce = self._coalesce, None
            if pending and sum(map(len, pending)) <= SEND_PIECE:
                self._sendall(b"".join(pending))
            else:
                for part in pending or ():
                    self._sendall(part)

    def _sendall(self, data: bytes) -> None:
        """Each piece of an answer within ``body_timeout`` (conn_io.send_within)."""
        if self._coalesce is not None:
            self._coalesce.append(bytes(data))     # the head: a bytearray; a body: bytes, not copied
            return
        try:
            send_within(self.socket, super()._sendall, data, self.server.limits.body_timeout)
        except SendTimeout:
            self._answer_failed = True     # no lingering for a client that does not read
            self.server.refused("send_timeout")
            raise


class GatewayServer(WSGIServer):
    """Keep-alive HTTP/1.1 on TCP_NODELAY sockets (without it a response
    written in two parts waits for the client's delayed ACK, ~40 ms), with
    the per-client cap and, given an SSL context, TLS whose handshake is
    bounded by the header deadline."""

    handler_class = GatewayHandler

    def __init__(self, address: tuple[str, int], app: Callable[..., Any], *, spawn: Any,
                 limits: ConnectionLimits, refused: Callable[[str], None], ssl_context: Any = None) -> None:
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            tls = {"ssl_context": ssl_context, "do_handshake_on_connect": False}
        super().__init__(address, app, spawn=spawn, log=None, error_log=logging.getLogger(__name__ + ".errors"),
                         **tls)
        self.limits = limits
        self.refused = refused
        self.clients: dict[str, int] = {}     # address -> connections open (only addresses with some)
        self._accept_pause = ACCEPT_PAUSE_MIN
        self._resume: Any = None              # the timer that starts accepting again

    def use_tls_context(self, context: Any) -> None:
        """Serve connections accepted from now on with ``context`` (a renewed
        certificate); connections already open keep theirs."""
        self.wrap_socket = context.wrap_socket

    def do_read(self) -> Any:
        """Accept one connection. With no file descriptor left (EMFILE,
        ENFILE) the connection waits in the kernel's backlog: the server
        stops accepting for a pause (doubling up to ``ACCEPT_PAUSE_MAX``),
        counts the refusal (``open_files``) and logs nothing -- the node's
        open files watch says what is wrong, once a minute
        (:mod:`miyaq.node.open_files`); gevent would print a traceback at
        every attempt."""
        try:
            accepted = super().do_read()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self.refused("open_files")
            self.stop_accepting()
            pause, self._accept_pause = self._accept_pause, min(ACCEPT_PAUSE_MAX, 2 * self._accept_pause)
            self._resume = green.call_later(pause, self._accept_again)
            return None
        self._accept_pause = ACCEPT_PAUSE_MIN
        return accepted

    def _accept_again(self) -> None:
        self._resume = None
        if self.started and not self.closed:
            self.start_accepting()

    def stop(self, timeout: float | None = None) -> None:
        if self._resume is not None:
            self._resume.close()
            self._resume = None
        super().stop(timeout)

    def handle(self, sock: Any, address: Any) -> None:
        """One accepted connection: the per-client cap, the TLS handshake, then
        its requests -- the handshake and the first request's line and headers
        within one ``header_timeout`` of now (the accept). Does what pywsgi's
        ``WSGIServer.handle`` does (make a handler, run it) with the deadline
        handed to the handler."""
        deadline = monotonic() + self.limits.header_timeout
        host = client_group(str(address[0])) if isinstance(address, tuple) and address else ""
        cap = self.limits.per_client
        if cap and self.clients.get(host, 0) >= cap:
            self.refused("client_limit")
            self._refuse(sock, host)
            return
        self.clients[host] = self.clients.get(host, 0) + 1
        try:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass   # not TCP (or already closed): nothing to tune
            bound_send_queue(sock, self.limits.body_timeout)
            if self.ssl_enabled and not self._handshake(sock, host, deadline):
                _close(sock)
                return
            handler = self.handler_class(sock, address, self)
            handler.first_deadline = deadline
            handler.client = host
            handler.handle()
        finally:
            left = self.clients.pop(host, 1) - 1
            if left > 0:
                self.clients[host] = left

    def _refuse(self, sock: Any, host: str) -> None:
        """Answer 503 at once (never waiting on the client) and close."""
        if not self.ssl_enabled:   # a TLS client would need a handshake first: just close
            try:
                sock.setblocking(False)
                sock.send(too_many_connections(host, self.limits.per_client))
            except OSError:
                pass
        _close(sock)

    def _handshake(self, sock: Any, host: str, deadline: float) -> bool:
        """The TLS handshake, done by ``deadline`` (``monotonic()``); False:
        failed or late (:func:`~miyaq.gateway.tls_accept.handshake`)."""
        reason = handshake(sock, max(0.0, deadline - monotonic()))
        if not reason:
            return True
        self.refused("tls_handshake")
        logger.debug("TLS handshake with %s failed: %s", host, reason)
        return False


def client_group(address: str) -> str:
    """The key a client's connections are counted under: an IPv4 address as
    it is (an IPv4-mapped IPv6 one, from a gateway bound to ``::``, as the
    IPv4 address it carries), an IPv6 address as its /64 network
    (``2001:db8:1:2::/64``), loopback ``::1`` as it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv4Address) or ip.is_loopback:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def _close(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass
