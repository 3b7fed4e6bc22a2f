"""Who is looking at the console, what they may do, and CSRF protection.

A caller is let in by the gateway's own check (:class:`~miyaq.gateway.auth.BearerAuth`):
an ``Authorization: Bearer`` header with the node's ``http_token``, or a
session cookie the console signed after the token was typed into its
sign-in form. With no token set every caller is let in, as the JSON API
does. Sessions are stateless: ``<issued>.<nonce>.<hmac>``, keyed by a key
the gateway derives from its token (so a new token ends every session),
valid for ``SESSION_TTL`` seconds. The cookie is ``HttpOnly``,
``SameSite=Strict``, scoped to ``/ui`` and named after the port (browsers
share cookies between the ports of one host).

Every POST must carry the form field ``csrf``: an HMAC of the session's
nonce, which only pages of this console show. A POST whose ``Origin`` or
``Sec-Fetch-Site`` says it came from another site is refused too.

:func:`can_operate` is the one place that decides whether a caller may act
(pause, retry, purge); roles (issue 9) plug in there.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from ...errors import Forbidden
from ...runtime import wall
from ..auth import BearerAuth
from ..request import Request

SESSION_TTL = 12 * 3600.0
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Viewer:
    """A caller let into the console."""

    nonce: str            # the session's nonce (the CSRF token is derived from it)
    fresh_cookie: str     # a Set-Cookie value to send (a new session), or ""
    console_mode: str     # the node's http_console setting: on, read-only


def can_operate(viewer: Viewer) -> bool:
    """May this caller pause queues, retry and purge dead letters?

    Today: anyone let in (who holds the token, or anyone when no token is
    set), unless the node runs its console ``read-only``. Issue 9's roles
    decide here.
    """
    return viewer.console_mode == "on"


class Sessions:
    def __init__(self, auth: BearerAuth, port: int, mode: str) -> None:
        self.auth = auth
        self.mode = mode
        self.cookie = f"miyaq_console_{port}"
        self._key = auth.derive_key("console session")

    # -- cookies -------------------------------------------------------------------
    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def _issue(self, now: float) -> tuple[str, str]:
        nonce = secrets.token_hex(16)
        body = f"{int(now)}.{nonce}"
        value = f"{body}.{self._sign(body)}"
        cookie = (f"{self.cookie}={value}; Path=/ui; Max-Age={int(SESSION_TTL)}; HttpOnly; SameSite=Strict")
        return nonce, cookie

    def clear_cookie(self) -> str:
        return f"{self.cookie}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict"

    def _session(self, request: Request, now: float) -> str | None:
        """The nonce of a valid session cookie, or None."""
        for part in request.header("Cookie").split(";"):
            name, eq, value = part.strip().partition("=")
            if not eq or name != self.cookie:
                continue
            issued, _, rest = value.partition(".")
            nonce, _, sig = rest.partition(".")
            if not (issued.isdigit() and nonce and sig):
                return None
            if not hmac.compare_digest(sig.encode(), self._sign(f"{issued}.{nonce}").encode()):
                return None
            if not 0 <= now - int(issued) <= SESSION_TTL:
                return None
            return nonce
        return None

    # -- who is it -------------------------------------------------------------------
    def identify(self, request: Request) -> Viewer | None:
        """The caller, or None if the gateway's token is required and missing.
        A caller let in without a valid session gets a fresh one."""
        now = wall()
        nonce = self._session(request, now)
        if nonce is not None:
            return Viewer(nonce, "", self.mode)
        if not self.auth.bearer_ok(request):
            return None
        nonce, cookie = self._issue(now)
        return Viewer(nonce, cookie, self.mode)

    def sign_in(self, token: str) -> Viewer | None:
        """A new session if ``token`` is the gateway's token."""
        if not self.auth.verify(token):
            return None
        nonce, cookie = self._issue(wall())
        return Viewer(nonce, cookie, self.mode)

    # -- CSRF ------------------------------------------------------------------------
    def csrf_token(self, viewer: Viewer) -> str:
        return self._sign("csrf:" + viewer.nonce)[:40]

    def check_post(self, request: Request, viewer: Viewer, form: dict[str, str]) -> None:
        """Raise :class:`Forbidden` unless this POST comes from a page of this console."""
        site = request.header("Sec-Fetch-Site")
        if site and site not in ("same-origin", "none"):
            raise Forbidden(f"refused a {site} request: console actions come from console pages only")
        origin = request.header("Origin")
        if origin and urlsplit(origin).netloc != request.header("Host"):   # "null" is foreign too
            raise Forbidden("refused a request from another origin")
        given = form.get(CSRF_FIELD, "")
        if not hmac.compare_digest(given.encode(), self.csrf_token(viewer).encode()):
            raise Forbidden("missing or stale CSRF token: reload the page and try again")
