"""Bearer tokens with roles for the whole HTTP interface.

With ``http_token`` or ``http_tokens`` set (:class:`~miyaq.gateway.tokens.TokenTable`),
every request must carry ``Authorization: Bearer <token>``; without one,
or with a token the node does not know, it is a 401 with
``WWW-Authenticate: Bearer``. A known token acts with its role; an endpoint
its role may not use is a 403 ``forbidden`` (:mod:`~miyaq.gateway.permissions`).
With neither set every caller acts as ``admin``. The open paths of
:data:`~miyaq.gateway.permissions.OPEN` (the health probes) are never
checked: they answer every caller, with or without a token.

A path prefix may be delegated (:meth:`BearerAuth.delegate`) to a part that
checks callers itself with :meth:`BearerAuth.caller` and
:meth:`BearerAuth.role_of`, and signs with keys from
:meth:`BearerAuth.derive_key`: the web console does, so a browser can sign
in once with a token and then carry a session cookie.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

from miyaq.config import MIN_HTTP_TOKEN
from miyaq.errors import Forbidden
from miyaq.gateway.errors import Unauthorized
from miyaq.gateway.permissions import is_open, may
from miyaq.gateway.request import Request
from miyaq.gateway.tokens import TokenTable
from miyaq.security.roles import Role

CHALLENGE = ("WWW-Authenticate", 'Bearer realm="miyaq"')


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or ""."""
    scheme, _, token = request.header("Authorization").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def unauthorized_message(given: str) -> str:
    """What a 401 says: what was wrong with the ``Authorization`` header
    ``given`` and what to send instead, never the token (before 2026-12-07:
    "a bearer token is required", or "missing or wrong bearer token" for a
    header of another scheme as for an unknown token). Another scheme is
    named only when it is letters shorter than any token (``Token``,
    ``Basic``): a bare token sent without ``Bearer`` is never repeated."""
    scheme, _, rest = given.strip().partition(" ")
    if not scheme:
        return ("a bearer token is required: send the header 'Authorization: Bearer <token>' with a token "
                "of the node's --http-token or --http-tokens file")
    if scheme.lower() != "bearer":
        shown = f"'{scheme} ...'" if scheme.isalpha() and len(scheme) < MIN_HTTP_TOKEN else "another form"
        return f"the Authorization header must be 'Bearer <token>', not {shown}"
    if not rest.strip():
        return "the Authorization header names no token: send 'Authorization: Bearer <token>'"
    return ("unknown bearer token: not the node's --http-token nor in its --http-tokens file (revoked, "
            "mistyped, or a token of another node)")


class BearerAuth:
    def __init__(self, token: str, tokens_path: str = "") -> None:
        self.tokens = TokenTable(token, tokens_path)
        self._delegated: tuple[str, ...] = ()
        # Keys derived from the admin token (a new one ends every console session);
        # without one, random per process (sessions end with it).
        self._secret = (hashlib.sha256(b"miyaq keys\0" + token.encode()).digest() if token
                        else secrets.token_bytes(32))

    @property
    def enabled(self) -> bool:
        return self.tokens.enabled

    def delegate(self, prefix: str) -> None:
        """Requests to ``prefix`` and below are checked by their handlers, not here."""
        self._delegated += (prefix,)

    def role_of(self, token: str) -> Role | None:
        """The role of ``token`` (constant time); admin for anyone when no token is set."""
        if not self.enabled:
            return Role.ADMIN
        return self.tokens.role_of(token)

    def caller(self, request: Request) -> Role | None:
        """The role the request's bearer token carries, or None."""
        return self.role_of(bearer_token(request))

    def derive_key(self, purpose: str) -> bytes:
        """A secret key for ``purpose`` (signing cookies, say)."""
        return hmac.new(self._secret, purpose.encode(), hashlib.sha256).digest()

    def check(self, request: Request) -> Role | None:
        """The caller's role; None for an open path (the health probes: no
        token needed) or a delegated one (its handlers check). Raises
        :class:`Unauthorized` without a known token."""
        path = request.path
        if is_open(path):
            return None
        if any(path == p or path.startswith(p + "/") for p in self._delegated):
            return None
        role = self.caller(request)
        if role is None:
            raise Unauthorized(unauthorized_message(request.header("Authorization")))
        return role

    @staticmethod
    def authorize(role: Role | None, needed: Role | None, what: str) -> None:
        """Raise :class:`Forbidden` unless ``role`` includes ``needed`` (None: nothing to check)."""
        if role is None or needed is None or may(role, needed):
            return
        raise Forbidden(f"a {role.value} token may not {what}: it needs the {needed.value} role")
