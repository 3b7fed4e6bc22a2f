"""One webhook attempt over a pooled keep-alive connection.

A :class:`geventhttpclient.HTTPClient` per destination (scheme, host, port)
keeps up to ``pool_size`` connections alive; at most ``WEBHOOK_MAX_DESTINATIONS``
are kept (least recently used closed first). After a timeout or any
transport error the destination's pool is dropped and rebuilt on next use,
so a half-written request never leaves a broken connection (or a lost pool
slot) behind.

When private addresses are refused (:class:`~miyaq.gateway.destinations.Destinations`),
a pool connects to the address the check resolved and approved (the
request's ``Host`` and, for https, the TLS server name stay the URL's host),
and is rebuilt -- resolved and checked again -- at least every
``RECHECK_EVERY`` seconds. A task's headers are checked again before each
attempt (no CR, LF or other control character).

Outcome rules (docs/http.md, "Webhook delivery"): only 2xx is success; 429,
5xx, timeouts and connection errors are retried (a ``Retry-After`` header,
seconds or an HTTP date, sets the delay); every other status is final and
the task goes to the dead-letter queue. :meth:`Outbound.send` never raises
for a delivery failure; it returns an :class:`Outcome`.
"""
from __future__ import annotations

import email.utils
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgpack

from miyaq import __version__
from miyaq.constants import (
    WEBHOOK_ERROR_LIMIT, WEBHOOK_MAX_DESTINATIONS, WEBHOOK_MAX_RETRY_AFTER,
    WEBHOOK_RESPONSE_LIMIT, WEBHOOK_RESULT_LIMIT,
)
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.errors import ForbiddenDestination
from miyaq.protocol.headers import header_problem
from miyaq.runtime import green, monotonic, wall
from miyaq.runtime.http import HTTPClient, HTTPParseError
from miyaq.store.task import Task

logger = logging.getLogger(__name__)

USER_AGENT = f"miyaq/{__version__}"
# Framing and connection headers are the HTTP client's business: a task's own
# Content-Length or Transfer-Encoding would desynchronise the pooled connection.
RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
                              "te", "trailer", "expect", "proxy-connection"})
#: Seconds a destination's pool lives before its addresses are resolved and checked again.
RECHECK_EVERY = 60.0


@dataclass
class Outcome:
    ok: bool
    kind: str                       # metrics label: 2xx, 4xx, 429, 5xx, timeout, connection, invalid
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
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, min(WEBHOOK_MAX_RETRY_AFTER, when.timestamp() - now))


def classify(status: int, retry_after: str | None, body: bytes, now: float) -> Outcome:
    if 200 <= status < 300:
        text = body[:WEBHOOK_RESULT_LIMIT].decode("utf-8", "replace")
        return Outcome(True, "2xx", result=msgpack.packb({"status": status, "body": text}, use_bin_type=True))
    error: dict[str, Any] = {"type": "HTTPError", "status": status, "failed_at": now,
                             "message": f"HTTP {status}: {body[:WEBHOOK_ERROR_LIMIT].decode('utf-8', 'replace')}"}
    if status == 429 or status >= 500:
        delay = parse_retry_after(retry_after, now)
        if delay is not None:
            error["retry_after"] = delay
        return Outcome(False, "429" if status == 429 else "5xx", True, delay, error=error)
    return Outcome(False, "4xx" if status >= 400 else "other", False, error=error)


class Outbound:
    def __init__(self, pool_size: int, connect_timeout: float, destinations: Destinations) -> None:
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.destinations = destinations
        self._clients: OrderedDict[tuple[str, str, int], tuple[HTTPClient, float]] = OrderedDict()

    def _client(self, key: tuple[str, str, int], timeout: float) -> HTTPClient:
        """The destination's pool; a new one is resolved and checked first
        (ForbiddenDestination, or OSError if its host does not resolve)."""
        pooled = self._clients.get(key)
        if pooled is not None:
            client, made = pooled
            if not self.destinations.guards_private or monotonic() - made < RECHECK_EVERY:
                self._clients.move_to_end(key)
                return client
            self._drop(key, client)
        scheme, host, port = key
        address = self.destinations.connect_address(host, port)
        options: dict[str, Any] = {}
        if address is not None:   # connect to the checked address; the URL's host in Host and SNI
            default_port = 443 if scheme == "https" else 80
            bracketed = f"[{host}]" if ":" in host else host
            options["headers"] = {"Host": bracketed if port == default_port else f"{bracketed}:{port}"}
            if scheme == "https":
                options["ssl_options"] = {"server_hostname": host}
        client = HTTPClient(address or host, port, ssl=scheme == "https", concurrency=self.pool_size,
                            connection_timeout=min(self.connect_timeout, timeout), network_timeout=timeout,
                            **options)
        self._clients[key] = (client, monotonic())
        while len(self._clients) > WEBHOOK_MAX_DESTINATIONS:
            self._clients.popitem(last=False)[1][0].close()
        return client

    def _drop(self, key: tuple[str, str, int], client: HTTPClient | None) -> None:
        if client is None:
            return
        pooled = self._clients.get(key)
        if pooled is not None and pooled[0] is client:
            del self._clients[key]
        client.close()

    def send(self, task: Task, timeout: float) -> Outcome:
        """Make one attempt at delivering ``task``; at most ``timeout`` seconds."""
        now = wall()
        try:
            parts = urlsplit(task.url or "")
            scheme = parts.scheme
            key = (scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
        except ValueError as exc:
            return _failure("invalid", False, "InvalidURL", str(exc), now)
        if scheme not in ("http", "https") or not key[1]:
            return _failure("invalid", False, "InvalidURL", f"cannot deliver to {task.url!r}", now)
        uri = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        headers = {k: v for k, v in ((task.meta or {}).get("headers") or {}).items()
                   if k.lower() not in RESERVED_HEADERS}
        for name, value in headers.items():
            problem = header_problem(name, value)
            if problem is not None:   # stored before submits were checked, or by a peer: never sent
                return _failure("invalid", False, "InvalidHeader", problem, now)
        headers.update({"X-Task-Id": task.id, "X-Task-Queue": task.queue,
                        "X-Task-Retry-Count": str(max(0, task.attempt - 1)), "User-Agent": USER_AGENT})
        timer = green.Timeout(timeout)
        timer.start()
        client: HTTPClient | None = None
        try:
            client = self._client(key, timeout)
            response = client.request(task.method, uri, body=task.body, headers=headers)
            body = bytearray()
            for chunk in response:
                body += chunk
                if len(body) > WEBHOOK_RESPONSE_LIMIT:
                    self._drop(key, client)   # unread rest: that connection cannot be reused
                    break
            retry_after = response.get("Retry-After")
            if isinstance(retry_after, list):
                retry_after = retry_after[0]
            return classify(response.status_code, retry_after, bytes(body), wall())
        except ForbiddenDestination as exc:   # resolves to a private address: never delivered
            return _failure("forbidden", False, "ForbiddenDestination", exc.message, now)
        except green.Timeout as exc:
            if exc is not timer:
                raise
            self._drop(key, client)
            return _failure("timeout", True, "Timeout", f"no complete answer within {timeout:g}s", now)
        except (OSError, HTTPParseError, RuntimeError) as exc:   # DNS failures included
            self._drop(key, client)
            return _failure("connection", True, "ConnectionError", f"{exc.__class__.__name__}: {exc}", now)
        except ValueError as exc:   # a header, method or URL the HTTP client refuses: never deliverable
            self._drop(key, client)
            return _failure("invalid", False, "InvalidRequest", str(exc), now)
        finally:
            timer.close()

    def close(self) -> None:
        for client, _ in self._clients.values():
            client.close()
        self._clients.clear()


def _failure(kind: str, retryable: bool, type_: str, message: str, now: float) -> Outcome:
    return Outcome(False, kind, retryable, error={"type": type_, "message": message[:1024], "failed_at": now})
