"""HTTP requests and responses as the gateway's handlers see them.

:class:`Request` wraps a WSGI environ: the body is read once, never past
``max_body`` (413 beyond it); JSON and form bodies are decoded on demand
with the charset of the Content-Type (parameters such as
``; charset=utf-8`` are accepted). Every parse failure raises a
:class:`~miyaq.errors.MiyaqError` naming the field, which the server turns
into a 4xx JSON answer -- never a 500, whatever a client sends:

* a charset Python knows but that is not a text encoding (``rot13``,
  ``base64``, ``zlib``) is refused like an unknown one;
* JSON is nested at most ``MAX_JSON_DEPTH`` levels, has no ``NaN`` or
  ``Infinity`` (nor a number that overflows to it), no integer outside what a task's payload can carry (64
  bits, msgpack's range) and no string that is not Unicode text (a lone
  UTF-16 surrogate such as ``"\udc80"``, which JSON's escapes can spell
  and UTF-8 cannot): nothing stored from a body can later fail to be
  packed, written to the log or shown;
* a body the server cannot read (a bad chunk size, a connection closed
  mid-body) is a 400 and the connection is closed (:attr:`Request.close`);
* a query string is parsed like a form (at most ``MAX_FORM_FIELDS``);
* the bodies being read and handled at once, over all connections, hold
  at most ``http_body_budget`` bytes (:class:`BodyBudget`), counted as
  they are read (:data:`BODY_STEP` at a time): a request whose body would
  pass it is answered 503 ``busy`` (with Retry-After) before the rest of
  its body is read, and its connection closed.
"""
from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl

from miyaq.constants import MAX_FORM_FIELDS
from miyaq.errors import Busy, InvalidField, MiyaqError, TooLarge
from miyaq.gateway.errors import UnsupportedMediaType
from miyaq.gateway.json_body import is_text, parse_json

#: The environ key of the request's socket, set by the server
#: (:mod:`miyaq.gateway.hangup` watches it while a long-poll waits).
CONNECTION = "miyaq.connection"
#: The environ key of the client the request came from, as the server counts
#: its connections (:func:`~miyaq.gateway.wsgi.client_group`): its large
#: answers count in its share of the answer budget (:mod:`miyaq.gateway.answers`).
CLIENT = "miyaq.client"

JSON_TYPE = "application/json"
#: An integer query parameter: ASCII digits (at most 18: no bound needs more), an optional sign.
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
FORM_TYPE = "application/x-www-form-urlencoded"


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``"Application/JSON; charset=UTF-8"`` -> ``("application/json", {"charset": "utf-8"})``."""
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        key, eq, val = item.strip().partition("=")
        if eq and key.strip():
            params[key.strip().lower()] = val.strip().strip('"').lower()
    return media.strip().lower(), params


def check_charset(charset: str) -> str:
    """``charset`` if Python decodes text with it; else an :class:`InvalidField`
    naming Content-Type (``rot13`` or ``zlib`` are codecs, not text encodings)."""
    try:
        codecs.lookup(charset)
        b"x".decode(charset)   # LookupError for a codec that is not a text encoding (b"" never looks)
    except UnicodeError:
        pass   # a text encoding that cannot decode "x" alone (utf-16): fine
    except (LookupError, ValueError):     # ValueError: a NUL in the name ("embedded null character")
        raise InvalidField(f"unknown charset {charset!r} in Content-Type", field="Content-Type") from None
    return charset


BODY_LIMIT_HINT = " (the node's --http-max-body; a task's arguments take at most its max_payload besides)"
"""What a 413 for a body over ``http_max_body`` adds: the setting to raise
(before 2026-12-07 the message named only a number)."""


#: Bytes of a request body read (and counted in ``http_body_budget``) at a
#: time: a connection that sends headers and no body holds this much of the
#: budget, not its Content-Length.
BODY_STEP = 64 * 1024


class BodyBudget:
    """The bytes of request bodies the gateway reads and holds at once, over
    all its connections: at most ``limit`` (``http_body_budget``). A body
    counts what it holds and the :data:`BODY_STEP` it waits for (each step
    counted before it is read: :meth:`Request._read_counted`) until its
    request is answered. Before 2026-12-07 only each body was bounded
    (``http_max_body``): 200 connections from two loopback addresses, each
    sending all but the last byte of a 4 MiB body, took a node from 45 to
    850 MiB for ``http_body_timeout`` (30 s) at a time, and the default
    ``http_max_connections`` (1,024) let one client hold 4 GiB. Hub thread only."""

    __slots__ = ("limit", "held", "refused")

    def __init__(self, limit: int, refused: Callable[[str], None] = lambda reason: None) -> None:
        self.limit = limit
        self.held = 0
        self.refused = refused     # told "body_budget" at each refusal (the gateway's miyaq_http_refused_total)

    def take(self, size: int) -> None:
        """Count ``size`` more bytes, or raise :class:`~miyaq.errors.Busy`
        (nothing counted) when they would pass the limit."""
        if self.held + size > self.limit:
            self.refused("body_budget")
            raise Busy(f"the gateway is reading and handling {self.held:,} bytes of request bodies; this body of "
                       f"{size:,} would pass its http_body_budget of {self.limit:,} (--http-body-budget): "
                       "retry shortly")
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


class Request:
    __slots__ = ("_body", "_query", "_reserved", "budget", "close", "environ", "max_body", "method", "params",
                 "path")

    def __init__(self, environ: dict[str, Any], max_body: int, budget: BodyBudget | None = None) -> None:
        self.environ = environ
        self.budget = budget       # None: bodies not counted together (a request made outside the server)
        self._reserved = 0         # what this request's body counts in ``budget`` until release()
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        self.path: str = environ.get("PATH_INFO", "/") or "/"
        self.max_body = max_body
        self.params: dict[str, str] = {}     # path parameters, set by the router
        self._body: bytes | None = None
        self._query: dict[str, list[str]] | None = None
        self.close = False      # answer with Connection: close (the body was not read to its end)

    # -- headers and query ---------------------------------------------------------
    @property
    def connection(self) -> Any | None:
        """The client's socket (None for a request not made over HTTP, as in unit tests)."""
        return self.environ.get(CONNECTION)

    @property
    def client(self) -> str:
        """The client's address as its connections are counted ("" for a request not made over HTTP)."""
        return str(self.environ.get(CLIENT, ""))

    def header(self, name: str, default: str = "") -> str:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            return self.environ.get(key) or default
        return self.environ.get("HTTP_" + key) or default

    @property
    def query(self) -> dict[str, list[str]]:
        """The query's parameters, percent-decoded as UTF-8. A query sent
        with raw bytes outside ASCII (curl sends a literal ``?key=clé`` so)
        is read as the UTF-8 it is -- the server hands it over as Latin-1,
        as WSGI says -- and one that is not UTF-8 is a 400: before
        2026-12-06 such a key was read garbled and named another key's
        holders."""
        if self._query is None:
            raw = self.environ.get("QUERY_STRING", "")
            if not raw.isascii():
                try:
                    raw = raw.encode("latin-1").decode("utf-8")
                except (UnicodeEncodeError, UnicodeDecodeError):
                    raise InvalidField("the query string is not UTF-8: percent-encode it as UTF-8 (é as %C3%A9)",
                                       field="query") from None
            try:
                self._query = parse_qs(raw, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
            except ValueError as exc:   # too many fields
                raise InvalidField(f"the query string is malformed: {exc}", field="query") from None
        return self._query

    def only_args(self, *names: str) -> None:
        """Refuse a query parameter other than ``names`` (400 naming it and
        the ones taken). For the listings, whose filters are query
        parameters: one they do not have (``GET /tasks?key=...``, a misspelt
        ``?stat=dead``) was ignored before 2026-12-07, and every task listed
        read as the tasks it asked for."""
        unknown = sorted(set(self.query) - set(names))
        if unknown:
            raise InvalidField(f"unknown query parameter {unknown[0]!r}; {self.method} {self.path} takes "
                               + ", ".join(names), field=unknown[0])

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def arg_number(self, name: str, default: float, lo: float, hi: float) -> float:
        raw = self.arg(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise InvalidField(f"query parameter {name!r} must be a number", field=name) from None
        if math.isnan(value) or not lo <= value <= hi:
            raise InvalidField(f"query parameter {name!r} must be between {lo:g} and {hi:g}", field=name)
        return value

    def arg_integer(self, name: str, default: int, lo: int, hi: int) -> int:
        """The integer query parameter ``name``, ``lo`` to ``hi``; ``default``
        when it is absent or empty. Only digits, with an optional sign: a
        fraction (``1.5``), an exponent or ``1_000`` is a 400 naming it, as
        a ZeroMQ request's integer field is refused (before 2026-12-05
        ``?limit=1.5`` read as 1). Spaces around it are dropped, as before:
        in a query a literal ``+`` is a space, so ``?limit=+5`` is ``" 5"``."""
        raw = self.arg(name)
        if raw is not None:
            raw = raw.strip(" ")
        if raw is None or raw == "":
            return default
        if not _INTEGER.fullmatch(raw):
            raise InvalidField(f"query parameter {name!r} must be an integer", field=name)
        value = int(raw)
        if not lo <= value <= hi:
            raise InvalidField(f"query parameter {name!r} must be between {lo} and {hi}", field=name)
        return value

    # -- body ----------------------------------------------------------------------
    def body(self) -> bytes:
        """The whole body (read once). A body over ``max_body``, or one that
        cannot be read to its end, closes the connection after the answer."""
        if self._body is None:
            try:
                self._body = self._read_body()
            except MiyaqError:
                self.close = True
                raise
            except OSError as exc:   # a bad chunk size or trailer, or the client left mid-body
                self.close = True
                raise InvalidField(f"the request body cannot be read: {exc}", field="body") from None
        return self._body

    def _read_body(self) -> bytes:
        raw_length = self.environ.get("CONTENT_LENGTH") or ""
        stream = self.environ["wsgi.input"]
        if raw_length:
            try:
                length = int(raw_length)
            except ValueError:
                raise InvalidField("header 'Content-Length' must be an integer", field="Content-Length") from None
            if length > self.max_body:
                raise TooLarge(f"request body of {length} bytes exceeds the gateway's http_max_body of "
                               f"{self.max_body} bytes{BODY_LIMIT_HINT}")
            if length <= 0:
                return b""
            return self._read_counted(stream, length)
        # chunked or unknown length: read at most one byte past the limit
        data = self._read_counted(stream, self.max_body + 1)
        if len(data) > self.max_body:
            raise TooLarge(f"request body exceeds the gateway's http_max_body of {self.max_body} bytes"
                           + BODY_LIMIT_HINT)
        return data

    def _read_counted(self, stream: Any, most: int) -> bytes:
        """At most ``most`` bytes of the body, read :data:`BODY_STEP` at a
        time, each step counted in the gateway's budget before it is read
        (Busy if it does not fit) and what it did not bring given back: a
        body counts what it holds, and the step it waits for. Before
        review36 (2026-12-07) it counted its whole Content-Length before a
        byte came: 64 connections from one address sending the headers of
        a 4 MiB body and nothing more (no bandwidth) held the default
        budget, and every other client's body was refused 503, for
        ``http_body_timeout`` at a time."""
        parts: list[bytes] = []
        got = 0
        while got < most:
            step = min(BODY_STEP, most - got)
            self._reserve(step)
            part = bytes(stream.read(step))
            self._keep(step - len(part))
            if not part:
                break
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _reserve(self, size: int) -> None:
        """Count ``size`` more bytes of body in the gateway's budget before they are read (Busy if they do not fit)."""
        if self.budget is not None:
            self.budget.take(size)
            self._reserved += size

    def _keep(self, unused: int) -> None:
        """Give back ``unused`` bytes reserved that a read did not bring."""
        if self.budget is not None and unused > 0:
            self.budget.give(unused)
            self._reserved -= unused

    def release(self) -> None:
        """The request is answered: its body no longer counts in the budget. Safe to call twice."""
        if self.budget is not None and self._reserved:
            self.budget.give(self._reserved)
            self._reserved = 0

    def media_type(self) -> tuple[str, str]:
        """(media type, charset) of the body; the charset must be one Python knows."""
        media, params = parse_content_type(self.header("Content-Type"))
        return media, check_charset(params.get("charset", "utf-8"))

    def text(self, charset: str) -> str:
        """The body decoded with ``charset``; it must be Unicode text: a
        charset such as ``utf-7`` or ``unicode_escape`` can decode to a lone
        UTF-16 surrogate, which nothing can store or show."""
        try:
            text = self.body().decode(charset)
        except (UnicodeError, LookupError, ValueError):   # UnicodeError: idna and punycode's own
            raise InvalidField(f"the body is not valid {charset}", field="body") from None
        if not text.isascii() and not is_text(text):
            raise InvalidField(f"the body is not valid {charset}: it decodes to a lone UTF-16 surrogate, "
                               "which is not Unicode text", field="body")
        return text

    def json(self, required: bool = True, form_is_json: bool = False) -> Any:
        """The body as JSON. An empty body is ``{}`` unless ``required``.

        Read as JSON: ``application/json`` (and ``*+json``), no Content-Type
        at all, and ``application/x-www-form-urlencoded`` when the body is
        JSON -- the type ``curl -d`` and many HTTP libraries put on any body
        they are given. A form body that is not JSON, an empty one (what an
        HTML form without fields sends: before 2026-12-05 it read as ``{}``),
        and every other type, is 415 naming ``Content-Type``, its message the
        JSON parser's (a typo in ``curl -d '{...}'`` is told where the JSON
        breaks: before 2026-12-07 it was told only of the Content-Type);
        docs/http.md, "Content types". ``form_is_json``: the caller took a
        form-labelled body for JSON (``POST /queue``, a body starting with
        ``{``), so bad JSON there is a 400 naming ``body``, as for a body
        labelled JSON.
        """
        media, charset = self.media_type()
        labelled_form = media == FORM_TYPE and not form_is_json
        if media not in (JSON_TYPE, "") and not media.endswith("+json") and media != FORM_TYPE:
            raise UnsupportedMediaType(f"expected Content-Type {JSON_TYPE}, got {media!r}")
        if labelled_form and not self.body().strip():
            raise UnsupportedMediaType(f"an empty {FORM_TYPE} body is what an HTML form sends (and curl -d ''): "
                                       "send no body at all (curl -X POST, without -d) or a JSON one (-d '{}'), "
                                       f"Content-Type {JSON_TYPE}", field="Content-Type")
        if not self.body():
            if required:
                raise InvalidField("a JSON body is required", field="body")
            return {}
        try:
            return parse_json(self.text(charset))
        except ValueError as exc:
            if labelled_form:
                raise UnsupportedMediaType(
                    f"the body is not valid JSON ({exc}); it came labelled {FORM_TYPE} (curl -d's default, "
                    "or an HTML form), which this endpoint reads only when the body is JSON: fix the JSON "
                    "and send it with -H 'Content-Type: application/json'", field="Content-Type") from None
            raise InvalidField(f"the body is not valid JSON: {exc}", field="body") from None

    def json_object(self, required: bool = True, form_is_json: bool = False) -> dict[str, Any]:
        value = self.json(required, form_is_json)
        if not isinstance(value, dict):
            raise InvalidField("the JSON body must be an object", field="body")
        return value

    def form(self, charset: str) -> list[tuple[str, str]]:
        """The body as ordered form fields (repeated names kept)."""
        try:
            return parse_qsl(self.text(charset), keep_blank_values=True, strict_parsing=False,
                             encoding=charset, errors="strict", max_num_fields=MAX_FORM_FIELDS)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidField(f"the form body is malformed: {exc}", field="body") from None


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []

    def undo(self) -> None:
        """Undo what the request did, its answer refused before a byte of it
        was sent (:mod:`miyaq.gateway.answers`). Nothing, unless a handler's
        answer says otherwise (a task leased to ``POST /receive`` goes back)."""


def json_response(obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return Response(status, body, [("Content-Type", "application/json")] + (headers or []))
