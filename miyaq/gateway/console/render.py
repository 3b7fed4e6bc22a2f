"""HTML responses of the console: Jinja2 templates with autoescaping on,
the security headers every page carries, and the static files.

Every value a template prints is escaped (task payloads, names, errors,
worker hosts and schedule names come from producers and workers, that is
from anyone who can submit), and the characters a page would hide or show
in another order -- control characters, the bidirectional overrides -- are
written as escapes first (``\\u202e``: :func:`~miyaq.logs.escape_invisible`,
as ``miyaq status`` does for a terminal). Pages carry a strict Content-Security-Policy:
scripts and styles only from ``/ui/static/`` (no inline script or style
attribute, no eval), no frames, forms post only here.
"""
from __future__ import annotations

import json
import mimetypes
import os
from datetime import datetime, timezone
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ...errors import NotFound
from ...logs import escape_invisible
from ...protocol.name_labels import name_label
from ...protocol.recordspec import MAX_TIME
from ...runtime import wall
from ..request import Response

HERE = os.path.dirname(os.path.abspath(__file__))
STATIC_DIR = os.path.join(HERE, "static")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "same-origin")]
HTML = "text/html; charset=utf-8"


def _moment(ts: Any) -> float | None:
    """``ts`` if it is a time a page can print (unix seconds, above 0 and
    up to ``MAX_TIME``), else None: a value a peer or a handler put in an
    error map (``retry_at: "soon"``) or a time moved by a skewed clock must
    print as ``-``, not fail the page (before 2026-12-05: a 500)."""
    if type(ts) is not float and type(ts) is not int:
        return None
    return float(ts) if 0 < ts <= MAX_TIME else None


def _when(ts: Any) -> str:
    moment = _moment(ts)
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: Any) -> str:
    """``3.2 s ago`` / ``in 5 min`` relative to now; ``-`` for what is not a time."""
    moment = _moment(ts)
    if moment is None:
        return "-"
    delta = wall() - moment
    text = _span(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def _http_url(url: str | None) -> str:
    """``url`` if it is an http(s) address, else ``#``: a member's gateway
    address becomes a link, never a ``javascript:`` one."""
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        return url.rstrip("/")
    return "#"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}/s" if value >= 10 else f"{value:.2g}/s" if value else "0/s"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


#: Task names a worker's row on the Workers page shows (the rest counted:
#: "and N more"), each cut to :data:`NAME_CHARS` characters.
NAMES_ON_PAGE = 5
NAME_CHARS = 80


def _task_names(worker: dict[str, Any]) -> str:
    """A worker's task names as its row shows them: ``any``, the first
    :data:`NAMES_ON_PAGE` and how many more (its ``names`` and
    ``names_more``), ``none`` for an empty list, ``-`` when its node did not
    say (a member of before 2026-12-07); a name that could be read as one
    of these, or as the list's own marks, quoted (``name_label``)."""
    names = worker.get("names")
    if names is None:
        return "-"
    if not isinstance(names, list):
        return str(names)       # "any" (peer_answers lets nothing else through)
    shown = [name_label(n if len(n) <= NAME_CHARS else n[:NAME_CHARS - 1] + "\u2026") for n in names[:NAMES_ON_PAGE]]
    more = len(names) - len(shown) + (worker.get("names_more") or 0)
    return (", ".join(shown) or "none") + (f" and {more} more" if more > 0 else "")


def _visible(value: Any) -> Any:
    """Every printed value, before it is HTML-escaped: a string with what a
    page would hide or reorder written as escapes; anything else, and HTML
    the templates made (a macro's output: its values went through here),
    as it is. Before 2026-12-07 a name holding U+202E showed the rest of
    its cell reversed, and an escape sequence showed as nothing (audit
    review28)."""
    if isinstance(value, str) and not hasattr(value, "__html__"):
        return escape_invisible(value)
    return value


class Renderer:
    def __init__(self) -> None:
        self.env = Environment(loader=FileSystemLoader(os.path.join(HERE, "templates")),
                               autoescape=select_autoescape(["html"], default=True),
                               trim_blocks=True, lstrip_blocks=True, finalize=_visible)
        self.env.filters.update(when=_when, ago=_ago, span=_span, rate=_rate, size=_size, http_url=_http_url,
                                task_names=_task_names)
        self.env.policies["json.dumps_kwargs"] = {"sort_keys": True}

    def page(self, template: str, context: dict[str, Any], status: int = 200,
             cookie: str = "") -> Response:
        body = self.env.get_template(template).render(**context).encode()
        headers = [("Content-Type", HTML), ("Cache-Control", "no-store"), *SECURITY_HEADERS]
        if cookie:
            headers.append(("Set-Cookie", cookie))
        return Response(status, body, headers)

    @staticmethod
    def redirect(location: str, cookie: str = "") -> Response:
        """303 See Other to a path of this console (never another site). A
        location that is not printable ASCII (a sign-in's ``next`` holding a
        line break or other text no header can carry) goes to ``/ui`` too."""
        if (not location.startswith("/ui") or location.startswith("//")
                or not (location.isascii() and location.isprintable()) or " " in location):
            location = "/ui"
        headers = [("Location", location), ("Cache-Control", "no-store"), *SECURITY_HEADERS]
        if cookie:
            headers.append(("Set-Cookie", cookie))
        return Response(303, b"", headers)

    @staticmethod
    def json(obj: Any) -> Response:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return Response(200, body, [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                                    *SECURITY_HEADERS])


class StaticFiles:
    """The vendored libraries and the console's own CSS and script, read once."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        for name in sorted(os.listdir(STATIC_DIR)):
            path = os.path.join(STATIC_DIR, name)
            if os.path.isfile(path) and not name.startswith("."):
                kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
                if kind.startswith("text/") or kind.endswith("javascript"):
                    kind += "; charset=utf-8"
                with open(path, "rb") as fh:
                    self.files[name] = (fh.read(), kind)

    def get(self, name: str) -> Response:
        hit = self.files.get(name)
        if hit is None:
            raise NotFound(f"no static file {name}")
        body, kind = hit
        return Response(200, body, [("Content-Type", kind), ("Cache-Control", "public, max-age=3600"),
                                    *SECURITY_HEADERS])
