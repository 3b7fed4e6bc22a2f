"""The web console: HTML pages at ``/ui`` on the gateway's port (docs/console.md).

:func:`install` is the gateway's one registration point: it adds the
console's routes to the gateway's router and tells the gateway's auth that
``/ui`` checks its callers itself (:mod:`.access`: the same token, or a
session signed after typing it, and on every page and action the role
its JSON counterpart needs, :func:`.access.require`). Pages are rendered on the server
(:mod:`.render`, templates in ``templates/``), live-update with htmx and
draw the overview chart with uPlot (vendored in ``static/``, see
``static/VENDORED.md``); they read the node through :mod:`.data` and act
through the same functions as the JSON API.

Parts: :class:`~.activity.Activity` (rates, sampled every second by a
greenlet started with the gateway), :class:`~.attempts.AttemptLog` (failed
attempts, an engine listener), :class:`~.peers.Peers` (other members'
gateways), :mod:`.pages` (GET) and :mod:`.actions` (POST).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ... import __version__
from ...errors import MiyaqError
from ...runtime import RESTART, green, monotonic, wall
from ..errors import http_status
from ..request import Request, Response
from ..router import Router
from .access import Sessions, Viewer, can_operate, require, visible_pages
from .activity import Activity
from .attempts import AttemptLog
from .data import ConsoleData
from .peers import Peers
from .render import SECURITY_HEADERS, Renderer, StaticFiles

if TYPE_CHECKING:
    from ..admin_api import AdminApi
    from ..server import Gateway

logger = logging.getLogger(__name__)

PREFIX = "/ui"
SAMPLE_EVERY = 1.0
Page = Callable[[Request, Viewer], Response]


class Console:
    def __init__(self, gateway: Gateway, admin: AdminApi) -> None:
        self.gateway = gateway
        self.admin: AdminApi = admin
        self.mode = gateway.config.http_console
        engine = gateway.core.engine
        self.activity = Activity(engine.outcomes, pruned=engine.pruned_outcomes)
        self.attempts = AttemptLog(wall)
        gateway.core.engine.listeners.append(self.attempts)
        self.peers = Peers(gateway.config.http_token, gateway.config.http_ca)
        self.data: ConsoleData = ConsoleData(gateway, admin, self.activity, self.attempts, self.peers)
        self.sessions = self._sessions()
        self.render = Renderer()
        self.static = StaticFiles()
        self._stopping = False

    # -- lifecycle (with the gateway) ----------------------------------------------------
    def start(self) -> None:
        # the port is known now (it may have been 0 before the server bound)
        self.sessions = self._sessions()
        self.gateway.supervisor.spawn("console sampler", self._sample_loop, policy=RESTART)

    def stop(self) -> None:
        self._stopping = True

    def _sessions(self) -> Sessions:
        gateway = self.gateway
        return Sessions(gateway.auth, gateway.port, self.mode, tls=gateway.tls is not None)

    def _sample_loop(self) -> None:
        next_at = monotonic()
        while not self._stopping:
            try:
                self.activity.sample(wall())
            except Exception:   # the chart is not worth the node: log it and sample again next second
                logger.exception("console: sampling the node's activity failed")
            next_at += SAMPLE_EVERY
            delay = next_at - monotonic()
            if delay < 0:            # fell behind (a busy or frozen process): start afresh
                next_at, delay = monotonic(), SAMPLE_EVERY
            green.sleep(delay)

    # -- routes ------------------------------------------------------------------------
    def guard(self, page: Page, template: str = "", *, post: bool = False) -> Callable[[Request], Response]:
        """``page`` for callers let in whose role may use the route
        ``template`` (:func:`.access.require`: the role its JSON counterpart
        needs; no ``template``, signing out: any caller let in); callers not
        let in are sent to the sign-in form. Errors, a refused role's 403
        among them, become an HTML page with the status the JSON API would give."""
        method = "POST" if post else "GET"

        def handler(request: Request) -> Response:
            viewer = self.sessions.identify(request)
            if viewer is None:
                if post or request.method not in ("GET", "HEAD"):
                    return self.error_page(request, None, 401, "Sign in first: this console needs the "
                                                               "gateway's token.")
                return self.render.redirect("/ui/login?next=" + quote(_quote_path(request), safe=""))
            try:
                if template:
                    require(viewer, method, template)
                return page(request, viewer)
            except MiyaqError as err:
                return self.error_page(request, viewer, http_status(err), err.message)
        return handler

    def error_page(self, request: Request, viewer: Viewer | None, status: int, message: str) -> Response:
        context = self.context(request, viewer)
        context.update(status=status, message=message)
        return self.render.page("error.html", context, status, viewer.fresh_cookie if viewer else "")

    # -- answers the gateway makes under /ui ---------------------------------------------
    @staticmethod
    def owns(path: str) -> bool:
        """Is ``path`` the console's (``/ui`` and below)?"""
        return path == PREFIX or path.startswith(PREFIX + "/")

    def error_answer(self, request: Request, err: MiyaqError, headers: list[tuple[str, str]]) -> Response:
        """The console's error page for an error the gateway raised before or
        around a console handler (no such page, a method a page does not
        take, a refused Host or cross-site request, a bug), with the
        console's headers plus ``headers`` (``Allow``, ``Retry-After``). The
        page never repeats the path or the method the client sent."""
        status = http_status(err)
        message = {404: "There is no such page in this console.",
                   405: "This page does not take that method: " + ", ".join(err.details.get("allow", [])),
                   500: "Internal error while handling the request (the node's log says more)."
                   }.get(status, err.message)
        context: dict[str, Any] = {
            "node_id": self.gateway.config.id, "path": PREFIX, "url": PREFIX, "version": __version__,
            "signed_in": False, "operator": False, "role": "", "can_see": frozenset(), "csrf": "",
            "token_required": self.gateway.auth.enabled, "mode": self.mode, "flash": {},
            "status": status, "message": message}
        response = self.render.page("error.html", context, status)
        response.headers.extend(headers)
        return response

    @staticmethod
    def secured(response: Response) -> Response:
        """``response`` with every header of the console's pages it lacks
        (CSP, X-Frame-Options, nosniff, Referrer-Policy, Cache-Control)."""
        present = {name.lower() for name, _ in response.headers}
        for name, value in (*SECURITY_HEADERS, ("Cache-Control", "no-store")):
            if name.lower() not in present:
                response.headers.append((name, value))
        return response

    def context(self, request: Request, viewer: Viewer | None, **extra: Any) -> dict[str, Any]:
        """What every page's layout needs."""
        context: dict[str, Any] = {
            "node_id": self.gateway.config.id, "path": request.path, "url": _quote_path(request),
            "version": __version__, "signed_in": viewer is not None,
            "operator": viewer is not None and can_operate(viewer),
            "role": viewer.role.value if viewer is not None else "",
            "can_see": visible_pages(viewer),
            "csrf": self.sessions.csrf_token(viewer) if viewer is not None else "",
            "token_required": self.gateway.auth.enabled, "mode": self.mode,
            "flash": self.sessions.flash_of(request, viewer),   # shown only if this session signed it
        }
        context.update(extra)
        return context


def _quote_path(request: Request) -> str:
    """The request's path and query, safe to put in a link to this console."""
    query = request.environ.get("QUERY_STRING", "")
    return quote(request.path, safe="/") + ("?" + query if query else "")


def install(gateway: Gateway, router: Router, admin: AdminApi) -> Console | None:
    """Add the console to a gateway (None when ``http_console`` is off)."""
    if gateway.config.http_console == "off":
        return None
    from .actions import Actions
    from .pages import Pages
    console = Console(gateway, admin)
    gateway.auth.delegate(PREFIX)
    pages, actions = Pages(console), Actions(console)
    router.add("GET", "/ui/static/{name}", lambda request: console.static.get(request.params["name"]))
    router.add("GET", "/ui/login", actions.login_form)
    router.add("POST", "/ui/login", actions.login)
    router.add("POST", "/ui/logout", console.guard(actions.logout, post=True))
    for path, page in pages.routes():
        router.add("GET", path, console.guard(page, path))
    for path, action in actions.routes():
        router.add("POST", path, console.guard(action, path, post=True))
    return console
