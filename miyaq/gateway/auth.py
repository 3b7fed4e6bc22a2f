"""Optional bearer-token authentication for the whole HTTP interface.

With ``http_token`` set, every request must carry ``Authorization: Bearer
<token>``; anything else is a 401 with ``WWW-Authenticate: Bearer``. The
comparison takes constant time. The token is a shared secret: serve the
gateway over a trusted network or behind TLS (docs/http.md, "Security").

A path prefix may be delegated (:meth:`BearerAuth.delegate`) to a part that
checks callers itself with :meth:`BearerAuth.verify` and keys from
:meth:`BearerAuth.derive_key`: the web console does, so a browser can sign
in once with the token and then carry a session cookie.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

from miyaq.gateway.errors import Unauthorized
from miyaq.gateway.request import Request

CHALLENGE = ("WWW-Authenticate", 'Bearer realm="miyaq"')


class BearerAuth:
    def __init__(self, token: str) -> None:
        self._expected = ("Bearer " + token).encode() if token else b""
        self._token = token.encode()
        self._delegated: tuple[str, ...] = ()
        # Without a token, keys are random per process (sessions end with it).
        self._secret = hashlib.sha256(b"miyaq keys\0" + self._token).digest() if token else secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        return bool(self._expected)

    def delegate(self, prefix: str) -> None:
        """Requests to ``prefix`` and below are checked by their handlers, not here."""
        self._delegated += (prefix,)

    def verify(self, token: str) -> bool:
        """True if ``token`` is the gateway's token (constant time); always with no token set."""
        if not self._expected:
            return True
        return hmac.compare_digest(token.encode("utf-8", "replace"), self._token)

    def bearer_ok(self, request: Request) -> bool:
        """True if the request carries the token (or none is required)."""
        if not self._expected:
            return True
        given = request.header("Authorization").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._expected)

    def derive_key(self, purpose: str) -> bytes:
        """A secret key for ``purpose`` (signing cookies, say) that changes with the token."""
        return hmac.new(self._secret, purpose.encode(), hashlib.sha256).digest()

    def check(self, request: Request) -> None:
        """Raise :class:`Unauthorized` unless the request carries the token."""
        if not self._expected or self.bearer_ok(request):
            return
        path = request.path
        if any(path == p or path.startswith(p + "/") for p in self._delegated):
            return   # its handlers check (the console: bearer token or a signed session)
        given = request.header("Authorization")
        raise Unauthorized("missing or wrong bearer token" if given else "a bearer token is required")
