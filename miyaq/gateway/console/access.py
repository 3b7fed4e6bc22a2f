"""Who is looking at the console, what they may do, and CSRF protection.

A caller is let in by the gateway's own tokens (:class:`~miyaq.gateway.auth.BearerAuth`):
an ``Authorization: Bearer`` header with any token the gateway knows
(``http_token`` or one of ``http_tokens``), or a session cookie the console
signed after such a token was typed into its sign-in form; the caller acts
with that token's role. With no token set every caller is let in as
``admin``, as the JSON API does. Sessions are signed cookies,
``<issued ms>.<nonce>.<fingerprint>.<hmac>``, keyed by a key the gateway
derives from its admin token (so a new one ends every session), valid for
``SESSION_TTL`` seconds; the fingerprint names the token (keyed, never the
token itself) and is looked up on every request, so a token removed from
``http_tokens`` (or given another role) ends (or changes) its sessions at
the next reload. The only server state is one "not before" time per token
fingerprint, set when a session of that token signs out: every session of
that token issued before it is refused (bounded by the tokens that signed
out within ``SESSION_TTL``; per node and in memory, so a restart forgets
it). The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the
browser came over HTTPS, scoped to ``/ui`` and named after the port
(browsers share cookies between the ports of one host).

Every POST, signing in included, must come from a page of this origin
(:func:`miyaq.gateway.origin.refuse_cross_site`: ``Origin`` and
``Sec-Fetch-Site``), and every POST but signing in must carry the form
field ``csrf``: an HMAC of the session's nonce, which only pages of this
console show. The flash message an action leaves ("3 dead letters
purged") travels in the query string signed with the session's nonce
(:meth:`Sessions.flash_of`), so a link cannot make the console show one.

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

from ...errors import Forbidden
from ...runtime import wall
from ...security.roles import Role
from ..auth import BearerAuth, bearer_token
from ..origin import refuse_cross_site, request_scheme
from ..permissions import may, needs
from ..request import Request

SESSION_TTL = 12 * 3600.0
CSRF_FIELD = "csrf"
OPEN = "-"     # the fingerprint of a session opened while no token was required
#: The query parameters of an action's flash message, and the one that signs them.
FLASH_FIELDS = ("done", "q", "n", "of")
FLASH_SIG = "flash"

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
#: What the task page shows beyond ``GET /tasks/{id}``: a finished task's
#: result is ``GET /tasks/{id}/result``'s; its payload and the failed
#: attempts this node saw (messages and tracebacks) are in no JSON answer,
#: so they are looked up as the console route they are, which ``needs``
#: does not know: admin.
TASK_RESULT = ("GET", "/tasks/{id}/result")
TASK_INTERNALS = ("GET", "/ui/tasks/{id}/payload")


@dataclass(frozen=True)
class Viewer:
    """A caller let into the console."""

    nonce: str            # the session's nonce (the CSRF token is derived from it)
    fresh_cookie: str     # a Set-Cookie value to send (a new session), or ""
    console_mode: str     # the node's http_console setting: on, read-only
    role: Role            # the role of the token the caller came with (admin when none is required)
    fingerprint: str = OPEN   # the keyed fingerprint of that token (OPEN when none is required)


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
    """The console's sessions: signed cookies, one "not before" time per
    token fingerprint (sign-outs), CSRF tokens and signed flash messages."""

    def __init__(self, auth: BearerAuth, port: int, mode: str, tls: bool = False) -> None:
        self.auth = auth
        self.mode = mode
        self.tls = tls          # the gateway serves HTTPS (cookies are Secure then)
        self.cookie = f"miyaq_console_{port}"
        self._key = auth.derive_key("console session")
        self._not_before: dict[str, int] = {}    # fingerprint -> ms: sessions issued before it signed out

    # -- cookies -------------------------------------------------------------------
    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def _attributes(self, request: Request, max_age: int) -> str:
        secure = "; Secure" if request_scheme(request, self.tls) == "https" else ""
        return f"Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"

    def _issue(self, request: Request, now: float, fingerprint: str) -> tuple[str, str]:
        """A new session cookie, stamped after its token's last sign-out even
        when the wall clock has been stepped back since (else the fresh
        session would look older than the sign-out and be refused until the
        clock caught up)."""
        nonce = secrets.token_hex(16)
        issued = max(_ms(now), self._not_before.get(fingerprint, -1) + 1)
        body = f"{issued}.{nonce}.{fingerprint}"
        value = f"{body}.{self._sign(body)}"
        return nonce, f"{self.cookie}={value}; {self._attributes(request, int(SESSION_TTL))}"

    def clear_cookie(self, request: Request) -> str:
        return f"{self.cookie}=; {self._attributes(request, 0)}"

    def _session(self, request: Request, now: float) -> tuple[str, Role, str] | None:
        """The nonce, role and fingerprint of a valid session cookie whose
        token is still valid and has not signed out since, or None."""
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
            if not -_ms(SESSION_TTL) <= _ms(now) - int(issued) <= _ms(SESSION_TTL):
                # Past its life; or stamped ahead of the clock by more than a
                # life (a session issued "ahead" only after a clock step back:
                # the cookie is signed, so no one else can date it).
                return None
            if int(issued) <= self._not_before.get(fingerprint, -1):
                return None    # its token signed out after it was issued
            role = self._role_of_session(fingerprint)
            return (nonce, role, fingerprint) if role is not None else None
        return None

    def _role_of_session(self, fingerprint: str) -> Role | None:
        if not self.auth.enabled:
            return Role.ADMIN
        if fingerprint == OPEN:
            return None   # opened while the gateway was open: not valid once tokens are required
        return self.auth.tokens.role_of_fingerprint(fingerprint)

    def _start(self, request: Request, token: str) -> Viewer | None:
        role = self.auth.role_of(token)
        if role is None:
            return None
        fingerprint = self.auth.tokens.fingerprint(token) if self.auth.enabled else OPEN
        nonce, cookie = self._issue(request, wall(), fingerprint)
        return Viewer(nonce, cookie, self.mode, role, fingerprint)

    # -- who is it -------------------------------------------------------------------
    def identify(self, request: Request) -> Viewer | None:
        """The caller, or None if a token is required and none valid came.
        A caller let in without a valid session gets a fresh one."""
        session = self._session(request, wall())
        if session is not None:
            return Viewer(session[0], "", self.mode, session[1], session[2])
        return self._start(request, bearer_token(request))

    def sign_in(self, request: Request, token: str) -> Viewer | None:
        """A new session if ``token`` is one the gateway knows."""
        return self._start(request, token)

    def sign_out(self, viewer: Viewer) -> None:
        """End every session of the viewer's token on this node: those issued
        until now are refused from here on. Entries older than a session's
        life are dropped, so the table holds at most one time per token that
        signed out within ``SESSION_TTL``. With the clock stepped back since
        the last sign-out, the mark moves past the sessions stamped after it
        (:meth:`_issue`), never back."""
        now = _ms(wall())
        horizon = now - _ms(SESSION_TTL)
        for fingerprint in [f for f, t in self._not_before.items() if t < horizon]:
            del self._not_before[fingerprint]
        self._not_before[viewer.fingerprint] = max(now, self._not_before.get(viewer.fingerprint, -1) + 1)

    # -- CSRF ------------------------------------------------------------------------
    def csrf_token(self, viewer: Viewer) -> str:
        return self._sign("csrf:" + viewer.nonce)[:40]

    def check_post(self, request: Request, viewer: Viewer, form: dict[str, str]) -> None:
        """Raise :class:`Forbidden` unless this POST comes from a page of this console."""
        refuse_cross_site(request, self.tls)
        given = form.get(CSRF_FIELD, "")
        if not hmac.compare_digest(given.encode(), self.csrf_token(viewer).encode()):
            raise Forbidden("missing or stale CSRF token: reload the page and try again")

    # -- flash messages --------------------------------------------------------------
    def _flash_sig(self, viewer: Viewer, fields: dict[str, str]) -> str:
        text = "\0".join(["flash", viewer.nonce, *(fields.get(name, "") for name in FLASH_FIELDS)])
        return self._sign(text)[:32]

    def flash_query(self, viewer: Viewer, fields: dict[str, str]) -> dict[str, str]:
        """``fields`` (of :data:`FLASH_FIELDS`) and their signature, for the
        query string of the page an action returns to."""
        return {**fields, FLASH_SIG: self._flash_sig(viewer, fields)}

    def flash_of(self, request: Request, viewer: Viewer | None) -> dict[str, str]:
        """The flash message fields of the request's query if this viewer's
        session signed them, else ``{}``: a link someone else wrote, or one
        from another session, shows nothing."""
        if viewer is None or not request.arg(FLASH_SIG):
            return {}
        fields = {name: request.arg(name) or "" for name in FLASH_FIELDS}
        given = request.arg(FLASH_SIG) or ""
        if not hmac.compare_digest(given.encode(), self._flash_sig(viewer, fields).encode()):
            return {}
        return fields


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
