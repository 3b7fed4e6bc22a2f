"""The console's actions (POST): sign in and out, pause and resume a queue,
retry and purge dead letters.

Every action must come from a page of this origin (signing in included:
before 2026-12-05 another site could sign a browser in with its own
token), and every action but signing in needs a session and its CSRF
token (:meth:`~.access.Sessions.check_post`). Signing out ends every
session of its token on this node (:meth:`~.access.Sessions.sign_out`).
Every operator action needs the
role its JSON route needs (``Console.guard`` asks
:func:`~.access.require` before the action runs: admin for all of them)
and asks :func:`~.access.can_operate` too (a read-only console acts for
nobody). Actions call the same functions as the
JSON API (``AdminApi.set_paused``, ``retry_dead``, ``purge_dead``), then
answer 303 back to the page they came from with what was done, signed for
the session (:meth:`~.access.Sessions.flash_query`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from ...errors import Forbidden, InvalidField
from ...protocol.taskspec import check_id, check_queue
from ..origin import refuse_cross_site
from ..request import FORM_TYPE, Request, Response
from .access import Viewer, can_operate

if TYPE_CHECKING:
    from . import Console

logger = logging.getLogger(__name__)

MAX_FIELD = 4096


def _form(request: Request) -> dict[str, str]:
    """The posted form (the last value of each field); only URL-encoded forms."""
    media, charset = request.media_type()
    if media != FORM_TYPE:
        raise InvalidField(f"expected a form ({FORM_TYPE})", field="Content-Type")
    return {k: v[:MAX_FIELD] for k, v in request.form(charset)}


def _back(form: dict[str, str], default: str) -> str:
    """Where to return: the page the form came from, if it is a console page."""
    back = form.get("back", "")
    if back.startswith("/ui") and not back.startswith("//") and "\\" not in back:
        return back.split("?", 1)[0]
    return default


class Actions:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.admin = console.admin

    def routes(self) -> list[tuple[str, Callable[[Request, Viewer], Response]]]:
        return [("/ui/queues/{queue}/pause", self.pause), ("/ui/queues/{queue}/resume", self.resume),
                ("/ui/dead/retry", self.dead_retry), ("/ui/dead/purge", self.dead_purge)]

    def _operator_form(self, request: Request, viewer: Viewer) -> dict[str, str]:
        form = _form(request)
        self.console.sessions.check_post(request, viewer, form)
        if not can_operate(viewer):
            why = "this console is read-only" if viewer.console_mode != "on" else \
                f"operator actions need an admin token, not a {viewer.role.value} token"
            raise Forbidden(f"{why}: operator actions are not allowed")
        return form

    def _done(self, back: str, viewer: Viewer, **what: object) -> Response:
        """303 to ``back`` with the flash message ``what``, signed for this session."""
        query = self.console.sessions.flash_query(viewer, {k: str(v) for k, v in what.items()})
        return self.console.render.redirect(f"{back}?{urlencode(query)}", viewer.fresh_cookie)

    # -- signing in ------------------------------------------------------------------------
    def login_form(self, request: Request) -> Response:
        console = self.console
        context = console.context(request, None, next=request.arg("next") or "/ui", failed=False)
        return console.render.page("login.html", context)

    def login(self, request: Request) -> Response:
        """Start a session for a known token; a sign-in another site's page
        sent (login CSRF: the browser would act with the attacker's token)
        is refused with 403 like every other console POST."""
        console = self.console
        refuse_cross_site(request, console.sessions.tls)
        form = _form(request)
        viewer = console.sessions.sign_in(request, form.get("token", ""))
        target = form.get("next", "/ui")
        if viewer is None:
            logger.info("console: a sign-in with a wrong token")   # never the token itself
            context = console.context(request, None, next=target, failed=True)
            return console.render.page("login.html", context, 401)
        return console.render.redirect(target, viewer.fresh_cookie)

    def logout(self, request: Request, viewer: Viewer) -> Response:
        """End every session of the viewer's token on this node (before
        2026-12-05 only the browser forgot its cookie: a copy stayed valid
        for its 12 hours)."""
        sessions = self.console.sessions
        form = _form(request)
        sessions.check_post(request, viewer, form)
        sessions.sign_out(viewer)
        return self.console.render.redirect("/ui/login", sessions.clear_cookie(request))

    # -- queues ----------------------------------------------------------------------------
    def pause(self, request: Request, viewer: Viewer) -> Response:
        return self._set_paused(request, viewer, True)

    def resume(self, request: Request, viewer: Viewer) -> Response:
        return self._set_paused(request, viewer, False)

    def _set_paused(self, request: Request, viewer: Viewer, paused: bool) -> Response:
        """On this node, then on every other member's gateway (as ``miyaq queue pause``)."""
        form = self._operator_form(request, viewer)
        queue = check_queue(request.params["queue"])
        action = "pause" if paused else "resume"
        self.admin.set_paused(queue, paused)
        done, members = 1, self.console.data.member_urls()
        for node_id, url in sorted(members.items()):
            if node_id == self.console.gateway.config.id:
                continue
            answer = self.console.peers.call(url, "POST", f"/queues/{queue}/{action}") if url else "no gateway"
            if isinstance(answer, dict):
                done += 1
            else:
                logger.warning("console: could not %s queue %s on %s: %s", action, queue, node_id, answer)
        logger.info("console: queue %s %sd on %d of %d nodes", queue, action, done, max(1, len(members)))
        return self._done(_back(form, "/ui/queues"), viewer, done="paused" if paused else "resumed",
                          q=queue, n=done, of=max(1, len(members)))

    # -- dead letters ----------------------------------------------------------------------
    def _scope(self, form: dict[str, str]) -> tuple[str | None, list[str] | None]:
        """``id`` (one task), else ``queue`` (all of it), else ``all=1``."""
        if form.get("id"):
            return None, [check_id(form["id"])]
        if form.get("queue"):
            return check_queue(form["queue"]), None
        if form.get("all") == "1":
            return None, None
        raise InvalidField("say which dead letters: id, queue or all", field="id")

    def dead_retry(self, request: Request, viewer: Viewer) -> Response:
        form = self._operator_form(request, viewer)
        queue, ids = self._scope(form)
        retried = self.admin.retry_dead(queue, ids)
        return self._done(_back(form, "/ui/dead"), viewer, done="retried", n=len(retried))

    def dead_purge(self, request: Request, viewer: Viewer) -> Response:
        form = self._operator_form(request, viewer)
        queue, ids = self._scope(form)
        purged = self.admin.purge_dead(queue, ids)
        return self._done(_back(form, "/ui/dead"), viewer, done="purged", n=purged)
