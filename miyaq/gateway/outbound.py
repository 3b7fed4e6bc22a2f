"""One webhook attempt over a kept-alive connection.

Connections come from :class:`~miyaq.gateway.connections.Connections`: one
delivery holds one for its whole attempt, and gives it back for the next
only if the answer was read to its end (after a timeout, a transport error,
an answer that is not HTTP or a body past ``WEBHOOK_RESPONSE_LIMIT`` it is
closed, so a half-read answer never reaches another delivery). An answer
whose body ends before its ``Content-Length`` (the connection closed
mid-answer) is not HTTP: ``http.client``'s ``read(amt)`` returns ``b""``
there without ``IncompleteRead``, so the remaining length is checked here.
A task's headers are checked again before each attempt (no CR, LF or other
control character, nothing outside Latin-1: ``send_problem``; one failing is
dead-lettered, nothing sent); a task's own header named like
one the node sets (``X-Task-*``, ``User-Agent``; any case) is not sent, and
its own ``Content-Type`` (any case) replaces none: the node adds one only
at enqueue, when the task has none. With a :class:`~miyaq.gateway.signing.WebhookSigner`
the attempt is signed (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) once its connection is open, just before the
request goes out: the timestamp is the send time, and a task's own
headers of these names (any case) are not sent.

A URL the HTTP client cannot send (a space or another control character:
``http.client.InvalidURL``) fails the task at once, never retried.

Outcome rules (docs/http.md, "Webhook delivery"): only 2xx is success; 429,
5xx, timeouts and connection errors are retried (a ``Retry-After`` header,
seconds or an HTTP date, sets the delay); every other status is final and
the task goes to the dead-letter queue. :meth:`Outbound.send` never raises
for a delivery failure; it returns an :class:`Outcome`.

A shortage of the node's own is no failure of the destination: with no
file descriptor left in the process or the system (EMFILE, ENFILE) --
where the connection is opened (its address resolved, its socket made
and connected) or later -- or no socket buffers or kernel memory while the
connection is opened (ENOBUFS, ENOMEM), :meth:`Outbound.send` raises
:class:`LocalShortage`: nothing reached the destination, and the caller
gives the task back without spending an attempt (before 2026-12-06 each
such attempt failed as a ``ConnectionError``, and a node out of
descriptors dead-lettered every webhook task in a second, its destination
never asked).
"""
from __future__ import annotations

import email.utils
import errno
import logging
import re
import socket
import ssl
from http.client import IncompleteRead, InvalidURL
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import msgpack

from miyaq import __version__
from miyaq.constants import (
    WEBHOOK_ERROR_LIMIT, WEBHOOK_MAX_RETRY_AFTER, WEBHOOK_RESPONSE_LIMIT, WEBHOOK_RESULT_LIMIT,
)
from miyaq.gateway.connections import Connections, Destination
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.errors import ForbiddenDestination
from miyaq.gateway.signing import SIGNING_HEADERS, WebhookSigner
from miyaq.protocol.headers import NODE_SET, send_problem
from miyaq.protocol.urls import url_for_logs
from miyaq.runtime import green, wall
from miyaq.runtime.http import AnswerTooSlow, HTTPConnection, HTTPException, final_response
from miyaq.store.task import Task

logger = logging.getLogger(__name__)

USER_AGENT = f"miyaq/{__version__}"
#: What a path and query keep as they are when the rest is percent-encoded
#: (RFC 3986's reserved and unreserved characters, and ``%`` itself).
URI_SAFE = "!#$%&'()*+,/:;=?@[]~-._"
#: Interim answers (1xx but 100, which http.client skips itself) read past before the final one.
MAX_INTERIM_ANSWERS = 8
# Framing and connection headers are the HTTP client's business: a task's own
# Content-Length or Transfer-Encoding would desynchronise the kept-alive connection.
# Host is the URL's: a task's own would reach another site behind the same
# address (a load balancer's virtual hosts) than the one the allow-list let through.
RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
                              "te", "trailer", "expect", "proxy-connection", "host"})
#: The headers the node sets on every delivery (compared in lower case): a
#: task's own of these names is never sent (the X-Task-* ones are refused at an
#: HTTP submit; one in a task stored anyway is dropped) -- a worker reading
#: the first of two ``X-Task-Id`` would take the submitter's for the task's.
NODE_HEADERS = NODE_SET | {"user-agent"}
_NOT_SENT = RESERVED_HEADERS | NODE_HEADERS
#: What ``http.client`` refuses in a request target (and ``urlsplit`` would
#: silently drop some of: tab, CR, LF).
_UNSENDABLE_URL = re.compile(r"[\x00-\x20\x7f]")
#: What an https:// destination's certificate the node does not trust adds to
#: its error (before 2026-12-07 the TLS library's words alone).
UNTRUSTED_CERTIFICATE = (" -- the node verifies an https:// destination's certificate against the system's CA "
                         "certificates, and it must name the URL's host: for a private CA, add it to them, or start "
                         "the node with SSL_CERT_FILE naming a PEM bundle that holds it with the public CAs it also "
                         "needs (docs/http.md, \"Webhook delivery\")")
#: Characters of a redirect's Location named in its error (a task URL's bound).
LOCATION_SHOWN = 2048
#: Errors that say the node itself has no file descriptor left, whenever they come.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
#: Errors that say the node itself is short of something while it opens a
#: connection: descriptors, socket buffers, kernel memory.
SHORT_WHILE_OPENING = OUT_OF_DESCRIPTORS | {errno.ENOBUFS, errno.ENOMEM}


class LocalShortage(Exception):
    """The node itself could not make the attempt (``cause``: the OSError
    that said so): nothing reached the destination, so nothing is charged
    to it."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(f"{cause.__class__.__name__}: {cause}")
        self.cause = cause


def local_shortage(exc: OSError, opening: bool) -> bool:
    """Whether ``exc`` says the node itself is short of descriptors (or,
    while ``opening`` a connection, of socket buffers or memory) -- not
    that the destination failed. A resolver's or TLS error's number is
    its library's own code, no errno: never a shortage here."""
    if isinstance(exc, (socket.gaierror, socket.herror, ssl.SSLError)):
        return False
    return exc.errno in (SHORT_WHILE_OPENING if opening else OUT_OF_DESCRIPTORS)


@dataclass
class Outcome:
    ok: bool
    kind: str                       # metrics label: 2xx, 4xx, 429, 5xx, other (1xx, 3xx), timeout,
                                    # connection, invalid, forbidden (docs/http.md, "Metrics")
    retryable: bool = False
    delay: float | None = None      # from Retry-After
    result: bytes | None = None
    error: dict[str, Any] = field(default_factory=dict)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date);
    None for anything else. Delta-seconds are ASCII digits only: ``str.isdigit``
    also takes superscripts and other scripts' digits (``"²"``), which
    ``float`` may refuse."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), WEBHOOK_MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when is None:
            return None
        seconds = when.timestamp() - now
    except (TypeError, ValueError, OverflowError):   # OverflowError: a zone offset of thousands of hours
        return None
    return max(0.0, min(WEBHOOK_MAX_RETRY_AFTER, seconds))


def classify(status: int, retry_after: str | None, body: bytes, now: float, location: str | None = None) -> Outcome:
    """The outcome of an answer. ``location``: a redirect's ``Location``,
    resolved against the task's URL (:func:`redirect_target`), named in the
    error of a 3xx, which is final: redirects are not followed."""
    if 200 <= status < 300:
        text = body[:WEBHOOK_RESULT_LIMIT].decode("utf-8", "replace")
        return Outcome(True, "2xx", result=msgpack.packb({"status": status, "body": text}, use_bin_type=True))
    head = f"HTTP {status}"
    if 300 <= status < 400:
        # before 2026-12-07 only ``HTTP 302: `` and the (often empty) body
        head += (f" to {location}" if location else "") + (
            " (redirects are not followed: submit the task with the URL the request should reach)")
    error: dict[str, Any] = {"type": "HTTPError", "status": status, "failed_at": now,
                             "message": f"{head}: {body[:WEBHOOK_ERROR_LIMIT].decode('utf-8', 'replace')}"}
    if status == 429 or status >= 500:
        delay = parse_retry_after(retry_after, now)
        if delay is not None:
            error["retry_after"] = delay
        return Outcome(False, "429" if status == 429 else "5xx", True, delay, error=error)
    return Outcome(False, "4xx" if status >= 400 else "other", False, error=error)


def redirect_target(url: str, location: str | None) -> str | None:
    """Where a redirect's ``location`` points, resolved against ``url`` (the
    task's), as a log line names a URL (:func:`url_for_logs`: no
    credentials, query or fragment; at most :data:`LOCATION_SHOWN`
    characters). None without one, or for one that does not parse."""
    if not location:
        return None
    try:
        target = url_for_logs(urljoin(url, location.strip()))
    except ValueError:
        return None
    return target[:LOCATION_SHOWN] if target.startswith(("http://", "https://")) else None


def request_target(url: str) -> tuple[tuple[str, str, int], str]:
    """``((scheme, host, port), path?query)`` of ``url``, as they go on the
    wire: a host in another script as its IDNA (punycode) name, characters
    outside ASCII in the path and query percent-encoded as UTF-8 (what is
    already percent-encoded stays). ValueError if the URL cannot be sent
    (a space or another control character in it: ``urlsplit`` would drop
    some of them, ``http.client`` refuses the others; a port that is not a
    number, over 65535, or 0)."""
    found = _UNSENDABLE_URL.search(url.partition("#")[0])   # the fragment is never sent
    if found is not None:
        raise ValueError(f"URL {url!r} holds {found.group()!r} (a space or another control character)")
    parts = urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname or ""
    port = parts.port       # ValueError: not a number, or over 65535
    if port == 0:           # no server listens there (before 2026-12-05 it was sent to port 80)
        raise ValueError(f"URL {url!r} names port 0")
    if ":" in host and "%25" in host:
        # An IPv6 zone as RFC 6874 writes it in a URL (``[fe80::1%25eth0]``):
        # ``%`` for the resolver, as the raw form ``[fe80::1%eth0]`` has it
        # (before 2026-12-05's review getaddrinfo was given ``%25eth0``).
        host = host.replace("%25", "%", 1)
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    uri = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    if not uri.isascii():
        uri = quote(uri, safe=URI_SAFE)
    return (scheme, host, port if port is not None else 443 if scheme == "https" else 80), uri


class Outbound:
    def __init__(self, pool_size: int, connect_timeout: float, destinations: Destinations,
                 signer: WebhookSigner | None = None) -> None:
        """``signer``: sign every attempt with its secrets (None: unsigned)."""
        self.connections = Connections(pool_size, connect_timeout, destinations)
        self.signer = signer
        self._not_sent = _NOT_SENT | SIGNING_HEADERS if signer is not None else _NOT_SENT

    def send(self, task: Task, timeout: float) -> Outcome:
        """Make one attempt at delivering ``task``; at most ``timeout`` seconds.
        Raises :class:`LocalShortage` when the node itself has no descriptor
        (or buffers, memory) for it: no attempt was made."""
        now = wall()
        try:
            key, uri = request_target(task.url or "")
        except ValueError as exc:   # UnicodeError included
            return _failure("invalid", False, "InvalidURL", str(exc), now)
        if key[0] not in ("http", "https") or not key[1]:
            return _failure("invalid", False, "InvalidURL", f"cannot deliver to {url_for_logs(task.url or '')!r}: "
                            "not an http:// or https:// URL with a host", now)
        headers = {k: v for k, v in ((task.meta or {}).get("headers") or {}).items()
                   if not isinstance(k, str) or k.lower() not in self._not_sent}
        for name, value in headers.items():
            problem = send_problem(name, value)
            if problem is not None:   # stored before submits were checked, or by a peer: never sent
                return _failure("invalid", False, "InvalidHeader", problem, now)
        headers.update({"X-Task-Id": task.id, "X-Task-Queue": task.queue,
                        "X-Task-Retry-Count": str(max(0, task.attempt - 1)), "User-Agent": USER_AGENT})
        timer = green.Timeout(timeout)
        timer.start()
        destination: Destination | None = None
        conn: HTTPConnection | None = None
        read_to_the_end = False
        opening = True      # resolving, making and connecting the socket: a shortage there is the node's
        try:
            destination = self.connections.destination(key)
            conn = destination.take(timeout)
            if conn.sock is None:
                conn.connect()   # here, not inside request(): its errors are told apart
            opening = False
            if self.signer is not None:     # now: the timestamp is the send time, each attempt signed anew
                headers.update(self.signer.headers(task.id, task.body or b"", wall()))
            conn.request(task.method, uri, body=task.body or None, headers=headers)   # no body: no length on a GET
            response = final_response(conn, task.method, MAX_INTERIM_ANSWERS)
            body = bytearray()
            while len(body) <= WEBHOOK_RESPONSE_LIMIT:
                chunk = response.read(WEBHOOK_RESPONSE_LIMIT + 1 - len(body))
                if not chunk:
                    if response.length:   # closed before its Content-Length: http.client says nothing
                        raise IncompleteRead(bytes(body), response.length)
                    read_to_the_end = True
                    break
                body += chunk
            # past the limit, the unread rest goes with the connection, closed below
            return classify(response.status, response.getheader("Retry-After"), bytes(body), wall(),
                            redirect_target(task.url or "", response.getheader("Location")))
        except ForbiddenDestination as exc:   # resolves to a private address: never delivered
            return _failure("forbidden", False, "ForbiddenDestination", exc.message, now)
        except green.Timeout as exc:
            if exc is not timer:
                raise
            return _failure("timeout", True, "Timeout", f"no complete answer within {timeout:g}s", now)
        except AnswerTooSlow:     # its bytes kept coming, and its deadline passed meanwhile
            return _failure("timeout", True, "Timeout", f"no complete answer within {timeout:g}s", now)
        except InvalidURL as exc:   # an HTTPException, but no transport error: never deliverable
            return _failure("invalid", False, "InvalidURL", str(exc), now)
        except ssl.SSLCertVerificationError as exc:   # an OSError: said before it, with what to do
            return _failure("connection", True, "ConnectionError",
                            f"{exc.__class__.__name__}: {exc}{UNTRUSTED_CERTIFICATE}", now)
        except OSError as exc:   # DNS failures included
            if local_shortage(exc, opening):
                raise LocalShortage(exc) from exc
            return _failure("connection", True, "ConnectionError", f"{exc.__class__.__name__}: {exc}", now)
        except HTTPException as exc:
            return _failure("connection", True, "ConnectionError", f"{exc.__class__.__name__}: {exc}", now)
        except ValueError as exc:   # a header, method or URL the HTTP client refuses: never deliverable
            return _failure("invalid", False, "InvalidRequest", str(exc), now)
        finally:
            timer.close()
            if destination is not None and conn is not None:
                destination.give_back(conn, read_to_the_end)

    def close(self) -> None:
        self.connections.close()


def _failure(kind: str, retryable: bool, type_: str, message: str, now: float) -> Outcome:
    return Outcome(False, kind, retryable, error={"type": type_, "message": message[:1024], "failed_at": now})
