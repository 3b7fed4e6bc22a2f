"""Who is looking at the console, what they may do, and CSRF protection.

A caller is let in by the gateway's own tokens (:class:`~miyaq.gateway.auth.BearerAuth`):
an ``Authorization: Bearer`` header with any token the gateway knows
(``http_token`` or one of ``http_tokens``), or a session cookie the console
signed after such a token was typed into its sign-in form; the caller acts
with that token's role. With no token set every caller is let in as
``admin``, as the JSON API does. Sessions are stateless:
``<issued>.<nonce>.<fingerprint>.<hmac>``, keyed by a key the gateway
derives from its admin token (so a new one ends every session), valid for
``SESSION_TTL`` seconds; the fingerprint names the token (keyed, never the
token itself) and is looked up on every request, so a token removed from
``http_tokens`` (or given another role) ends (or changes) its sessions at
the next reload. The cookie is ``HttpOnly``, ``SameSite=Strict``, scoped to
``/ui`` and named after the port (browsers share cookies between the ports
of one host).

Every POST must carry the form field ``csrf``: an HMAC of the session's
nonce, which only pages of this console show. A POST whose ``Origin`` or
``Sec-Fetch-Site`` says it came from another site is refused too.

:func:`can_operate` is the one place that decides whether a caller may act
(pause, retry, purge): the ``admin`` role, on a console that is not
``read-only``. Every other role sees the console read-only.

:func:`require` is the one place that decides whether a caller may open a
page or post an action at all: each console route shows the data of one
JSON route, or calls its function (:data:`COUNTERPARTS`), and needs the
role that route needs (:func:`miyaq.gateway.permissions.needs`, the JSON
API's own table), so the console never shows a token what the API refuses
it. A producer token, for instance, may not open ``/ui/dead`` because it
may not ``GET /dead``.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from ...errors import Forbidden
from ...runtime import wall
from ...security.roles import Role
from ..auth import BearerAuth, bearer_token
from ..permissions import may, needs
from ..request import Request

SESSION_TTL = 12 * 3600.0
CSRF_FIELD = "csrf"
OPEN = "-"     # the fingerprint of a session opened while no token was required

#: Each console route (method, template) and the JSON route whose data it
#: shows or whose function it calls. Roles come from ``needs`` of the JSON
#: route, never from here. A route missing from this table, or one with no
#: JSON counterpart (it names itself), is looked up as it is: ``needs``
#: knows no ``/ui`` path, so it needs ``admin`` (closed until someone
#: decides otherwise, as for a new JSON endpoint).
COUNTERPARTS: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/ui"): ("GET", "/status"),
    ("GET", "/ui/activity.json"): ("GET", "/metrics"),     # the same counters as miyaq_tasks_total
    ("GET", "/ui/queues"): ("GET", "/queues"),
    ("GET", "/ui/workers"): ("GET", "/workers"),
    ("GET", "/ui/ring"): ("GET", "/status"),
    ("GET", "/ui/task"): ("GET", "/tasks/{id}"),           # by key it is a search: FIND_BY_KEY
    ("GET", "/ui/tasks/{id}"): ("GET", "/tasks/{id}"),
    ("GET", "/ui/dead"): ("GET", "/dead"),
    ("GET", "/ui/periodic"): ("GET", "/ui/periodic"),      # schedules are in no JSON answer: admin
    ("POST", "/ui/queues/{queue}/pause"): ("POST", "/queues/{queue}/pause"),
    ("POST", "/ui/queues/{queue}/resume"): ("POST", "/queues/{queue}/resume"),
    ("POST", "/ui/dead/retry"): ("POST", "/dead/retry"),
    ("POST", "/ui/dead/purge"): ("POST", "/dead/purge"),
}
#: Finding a task by its key searches the node's tasks: a listing, as ``GET /tasks``.
FIND_BY_KEY = ("GET", "/tasks")


@dataclass(frozen=True)
class Viewer:
    """A caller let into the console."""

    nonce: str            # the session's nonce (the CSRF token is derived from it)
    fresh_cookie: str     # a Set-Cookie value to send (a new session), or ""
    console_mode: str     # the node's http_console setting: on, read-only
    role: Role            # the role of the token the caller came with (admin when none is required)


def can_operate(viewer: Viewer) -> bool:
    """May this caller pause queues, retry and purge dead letters?

    Only an ``admin`` (the ``http_token``, an admin line of ``http_tokens``,
    or anyone when no token is set), and never on a ``read-only`` console.
    """
    return viewer.console_mode == "on" and viewer.role is Role.ADMIN


def counterpart(method: str, template: str) -> tuple[str, str]:
    """The JSON route a console route stands for (itself if it has none)."""
    return COUNTERPARTS.get((method.upper(), template), (method.upper(), template))


def allowed(viewer: Viewer, method: str, template: str) -> bool:
    """May this caller use the console route ``method template``? Exactly
    when its role may use the JSON counterpart (:func:`counterpart`)."""
    return may(viewer.role, needs(*counterpart(method, template)))


def require(viewer: Viewer, method: str, template: str) -> None:
    """Raise :class:`Forbidden` unless :func:`allowed`; the message names the
    role needed and the JSON route that needs it (pages show it escaped)."""
    if allowed(viewer, method, template):
        return
    json_route = counterpart(method, template)
    needed, role = needs(*json_route).value, viewer.role.value
    what = "page" if method.upper() == "GET" else "action"
    if json_route == (method.upper(), template):
        why = "it has no counterpart in the JSON API"
    else:
        why = f"{role} tokens may not {' '.join(json_route)} in the JSON API either"
    raise Forbidden(f"this {what} needs {_a(needed)} token, not {_a(role)} token: {why}")


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def visible_pages(viewer: Viewer | None) -> frozenset[str]:
    """The console pages (GET) this caller may open: the links its pages show."""
    if viewer is None:
        return frozenset()
    return frozenset(t for m, t in COUNTERPARTS if m == "GET" and allowed(viewer, m, t))


class Sessions:
    def __init__(self, auth: BearerAuth, port: int, mode: str) -> None:
        self.auth = auth
        self.mode = mode
        self.cookie = f"miyaq_console_{port}"
        self._key = auth.derive_key("console session")

    # -- cookies -------------------------------------------------------------------
    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def _issue(self, now: float, fingerprint: str) -> tuple[str, str]:
        nonce = secrets.token_hex(16)
        body = f"{int(now)}.{nonce}.{fingerprint}"
        value = f"{body}.{self._sign(body)}"
        cookie = (f"{self.cookie}={value}; Path=/ui; Max-Age={int(SESSION_TTL)}; HttpOnly; SameSite=Strict")
        return nonce, cookie

    def clear_cookie(self) -> str:
        return f"{self.cookie}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict"

    def _session(self, request: Request, now: float) -> tuple[str, Role] | None:
        """The nonce and role of a valid session cookie whose token is still valid, or None."""
        for part in request.header("Cookie").split(";"):
            name, eq, value = part.strip().partition("=")
            if not eq or name != self.cookie:
                continue
            body, _, sig = value.rpartition(".")
            issued, _, rest = body.partition(".")
            nonce, _, fingerprint = rest.partition(".")
            if not (issued.isdigit() and nonce and fingerprint and sig):
                return None
            if not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
                return None
            if not 0 <= now - int(issued) <= SESSION_TTL:
                return None
            role = self._role_of_session(fingerprint)
            return (nonce, role) if role is not None else None
        return None

    def _role_of_session(self, fingerprint: str) -> Role | None:
        if not self.auth.enabled:
            return Role.ADMIN
        if fingerprint == OPEN:
            return None   # opened while the gateway was open: not valid once tokens are required
        return self.auth.tokens.role_of_fingerprint(fingerprint)

    def _start(self, token: str) -> Viewer | None:
        role = self.auth.role_of(token)
        if role is None:
            return None
        fingerprint = self.auth.tokens.fingerprint(token) if self.auth.enabled else OPEN
        nonce, cookie = self._issue(wall(), fingerprint)
        return Viewer(nonce, cookie, self.mode, role)

    # -- who is it -------------------------------------------------------------------
    def identify(self, request: Request) -> Viewer | None:
        """The caller, or None if a token is required and none valid came.
        A caller let in without a valid session gets a fresh one."""
        session = self._session(request, wall())
        if session is not None:
            return Viewer(session[0], "", self.mode, session[1])
        return self._start(bearer_token(request))

    def sign_in(self, token: str) -> Viewer | None:
        """A new session if ``token`` is one the gateway knows."""
        return self._start(token)

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
