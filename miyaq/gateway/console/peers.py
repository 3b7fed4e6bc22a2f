"""The console asks the other members of the ring over their HTTP
gateways: their ``/status`` and ``/workers`` for the ring and workers pages,
and ``POST /queues/<q>/pause|resume`` so that pausing a queue pauses it on
every node (as ``miyaq queue pause`` does).

Each call has a short deadline (``TIMEOUT``, for the whole call: a member
that drips its answer a byte at a time gets no more) and answers an error
string instead of raising, so one member down or crawling slows a page by
at most that much and never breaks it; reads are cached for ``CACHE_TTL`` seconds (at most
``MAX_CACHED`` entries), so live-updating pages do not multiply requests.
The node's own ``http_token`` is sent: members of one cluster share it.
An ``https://`` member is verified against ``http_ca`` (else the system's
CA certificates), its certificate naming the host it advertises.
``http_ca`` is loaded when the console is made and again on SIGHUP
(:meth:`Peers.reload_ca`); a file that no longer loads keeps the CA
certificates in use, with an ERROR saying why.
Members are asked one after the other (a ring has a handful of members).
"""
from __future__ import annotations

import json
import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

from ... import __version__
from ...errors import ConfigError
from ...runtime import green, monotonic
from ...runtime.http import client_context, connection, final_response
from .. import tls

logger = logging.getLogger(__name__)

TIMEOUT = 1.0
CACHE_TTL = 2.0
MAX_CACHED = 256
MAX_ANSWER = 4 * 1024 * 1024
MAX_INTERIM = 8                 # interim answers (103 Early Hints) read past


class Peers:
    def __init__(self, token: str, ca: str = "") -> None:
        """``ca``: the ``http_ca`` file, loaded now (ConfigError if it does not
        load); "" trusts the system's CA certificates."""
        self.ca = ca
        self._context: ssl.SSLContext | None = tls.ca_context(ca) if ca else None
        self.headers = {"User-Agent": f"miyaq-console/{__version__}", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._cache: dict[str, tuple[float, Any]] = {}

    def call(self, base: str, method: str, path: str) -> dict[str, Any] | str:
        """``method path`` on the gateway at ``base``: the JSON answer, or an error text."""
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"no usable gateway address ({base!r})"
        conn = None
        deadline = green.Timeout(TIMEOUT)
        deadline.start()
        try:
            context = self._tls() if parts.scheme == "https" else None
            conn = connection(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                              timeout=TIMEOUT, connect_timeout=TIMEOUT, context=context)
            headers = dict(self.headers)
            body = None
            if method == "POST":
                headers["Content-Type"] = "application/json"
                body = b"{}"
            conn.request(method, path, body=body, headers=headers)
            response = final_response(conn, method, MAX_INTERIM)
            raw = response.read(MAX_ANSWER)
            answer = json.loads(raw)
            if response.status >= 400:
                error = answer.get("error", {}) if isinstance(answer, dict) else {}
                return f"HTTP {response.status}: {error.get('message', 'error')}"
            return answer if isinstance(answer, dict) else "the answer is not a JSON object"
        except green.Timeout as exc:
            if exc is not deadline:
                raise
            logger.debug("console: %s %s%s: no complete answer within %gs", method, base, path, TIMEOUT)
            return f"unreachable (no complete answer within {TIMEOUT:g}s)"
        except Exception as exc:   # unreachable, timed out, not JSON: shown on the page, never raised
            logger.debug("console: %s %s%s failed: %r", method, base, path, exc)
            return f"unreachable ({type(exc).__name__})"
        finally:
            deadline.close()
            if conn is not None:
                conn.close()

    def _tls(self) -> ssl.SSLContext:
        """The TLS context for https members: ``http_ca``'s, else the system's
        CAs (made on first use)."""
        if self._context is None:
            self._context = client_context()
        return self._context

    def reload_ca(self, reason: str) -> bool:
        """Load ``http_ca`` again (SIGHUP): calls from now on trust the CA
        certificates it holds now. A file that does not load (any fault
        :func:`~miyaq.gateway.tls.ca_context` refuses) keeps the ones in
        use and logs an ERROR saying why. True if loaded; also without
        ``http_ca`` (nothing to load)."""
        if not self.ca:
            return True
        try:
            context = tls.ca_context(self.ca)
        except ConfigError as exc:
            logger.error("HTTPS CA certificates (http_ca) not reloaded (%s), keeping the ones in use: %s",
                         reason, exc.message)
            return False
        self._context = context
        logger.info("HTTPS CA certificates (http_ca) reloaded (%s) from %s", reason, self.ca)
        return True

    def get(self, base: str, path: str) -> dict[str, Any] | str:
        """A cached GET (at most ``CACHE_TTL`` seconds old)."""
        key = base + path
        now = monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_TTL:
            return hit[1]
        answer = self.call(base, "GET", path)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (now, answer)
        return answer
