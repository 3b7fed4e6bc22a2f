"""Optional bearer-token authentication for the whole HTTP interface.

With ``http_token`` set, every request must carry ``Authorization: Bearer
<token>``; anything else is a 401 with ``WWW-Authenticate: Bearer``. The
comparison takes constant time. The token is a shared secret: serve the
gateway over a trusted network or behind TLS (docs/http.md, "Security").
"""
from __future__ import annotations

import hmac

from .errors import Unauthorized
from .request import Request

CHALLENGE = ("WWW-Authenticate", 'Bearer realm="miyaq"')


class BearerAuth:
    def __init__(self, token: str) -> None:
        self._expected = ("Bearer " + token).encode() if token else b""

    @property
    def enabled(self) -> bool:
        return bool(self._expected)

    def check(self, request: Request) -> None:
        """Raise :class:`Unauthorized` unless the request carries the token."""
        if not self._expected:
            return
        given = request.header("Authorization").encode("latin-1", "replace")
        if not hmac.compare_digest(given, self._expected):
            raise Unauthorized("missing or wrong bearer token" if given else "a bearer token is required")
