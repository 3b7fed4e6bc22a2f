"""A TLS connection's handshake on the gateway's HTTPS port
(:class:`~miyaq.gateway.wsgi.GatewayServer` does it after the accept, with
the socket made with ``do_handshake_on_connect=False``): bounded in time,
and a plain-HTTP request that reached the port answered in clear with how
to reach it (:data:`~miyaq.gateway.raw_answers.PLAIN_HTTP`).
"""
from __future__ import annotations

import os
import socket
from typing import Any

from miyaq.gateway.raw_answers import PLAIN_HTTP
from miyaq.runtime import green

PLAIN_HTTP_DRAIN = 256 * 1024   # bytes of a plain-HTTP request read away before the close


def handshake(sock: Any, seconds: float) -> str:
    """Do the TLS handshake of ``sock`` (an SSL socket not yet handshaken)
    within ``seconds`` (at least 0). Returns "" once done, else why it
    failed or "it took too long"; the caller counts the refusal and closes
    the socket. A plain-HTTP request is answered first
    (:func:`tell_to_use_https`)."""
    timer = green.Timeout(seconds)
    timer.start()
    try:
        sock.do_handshake()
        return ""
    except green.Timeout as exc:
        if exc is not timer:
            raise
        return "it took too long"
    except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
        if getattr(exc, "reason", None) == "HTTP_REQUEST":
            tell_to_use_https(sock)
        return str(exc) or type(exc).__name__
    finally:
        timer.close()


def tell_to_use_https(sock: Any) -> None:
    """Answer a plain-HTTP request that reached the HTTPS port (OpenSSL's
    ``HTTP_REQUEST``: the first bytes were a request line, not a TLS
    record) with :data:`~miyaq.gateway.raw_answers.PLAIN_HTTP`, in clear, as Go's net/http does: before
    2026-12-07 the connection was closed with nothing sent, and ``curl
    http://`` said "Empty reply from server". Best effort, never waiting: a
    write the socket does not take at once is given up; what the client
    already sent is read away (at most :data:`PLAIN_HTTP_DRAIN` bytes) so
    that closing does not reset the connection before the client reads the
    answer. Nothing else is sent in clear."""
    try:
        fd = sock.fileno()
        os.write(fd, PLAIN_HTTP)
        sock.shutdown(socket.SHUT_WR)
        drained = 0
        while drained < PLAIN_HTTP_DRAIN:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            drained += len(chunk)
    except (OSError, ValueError):   # BlockingIOError: nothing more to read now, or a full send buffer
        pass
