"""HTTP requests and responses as the gateway's handlers see them.

:class:`Request` wraps a WSGI environ: the body is read once, never past
``max_body`` (413 beyond it); JSON and form bodies are decoded on demand
with the charset of the Content-Type (parameters such as
``; charset=utf-8`` are accepted). Every parse failure raises a
:class:`~miyaq.errors.MiyaqError` naming the field, which the server turns
into a 4xx JSON answer.
"""
from __future__ import annotations

import codecs
import json
import math
from typing import Any
from urllib.parse import parse_qs, parse_qsl

from miyaq.constants import MAX_FORM_FIELDS
from miyaq.errors import InvalidField, TooLarge
from miyaq.gateway.errors import UnsupportedMediaType

JSON_TYPE = "application/json"
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


class Request:
    __slots__ = ("_body", "_query", "environ", "max_body", "method", "params", "path")

    def __init__(self, environ: dict[str, Any], max_body: int) -> None:
        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        self.path: str = environ.get("PATH_INFO", "/") or "/"
        self.max_body = max_body
        self.params: dict[str, str] = {}     # path parameters, set by the router
        self._body: bytes | None = None
        self._query: dict[str, list[str]] | None = None

    # -- headers and query ---------------------------------------------------------
    def header(self, name: str, default: str = "") -> str:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            return self.environ.get(key) or default
        return self.environ.get("HTTP_" + key) or default

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True,
                                   max_num_fields=MAX_FORM_FIELDS)
        return self._query

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

    # -- body ----------------------------------------------------------------------
    def body(self) -> bytes:
        if self._body is None:
            raw_length = self.environ.get("CONTENT_LENGTH") or ""
            stream = self.environ["wsgi.input"]
            if raw_length:
                try:
                    length = int(raw_length)
                except ValueError:
                    raise InvalidField("header 'Content-Length' must be an integer",
                                       field="Content-Length") from None
                if length > self.max_body:
                    raise TooLarge(f"request body of {length} bytes exceeds the limit of {self.max_body}")
                data = stream.read(length) if length > 0 else b""
            else:   # chunked or unknown length: read at most one byte past the limit
                data = stream.read(self.max_body + 1)
                if len(data) > self.max_body:
                    raise TooLarge(f"request body exceeds the limit of {self.max_body} bytes")
            self._body = data
        return self._body

    def media_type(self) -> tuple[str, str]:
        """(media type, charset) of the body; the charset must be one Python knows."""
        media, params = parse_content_type(self.header("Content-Type"))
        charset = params.get("charset", "utf-8")
        try:
            codecs.lookup(charset)
        except LookupError:
            raise InvalidField(f"unknown charset {charset!r} in Content-Type", field="Content-Type") from None
        return media, charset

    def text(self, charset: str) -> str:
        try:
            return self.body().decode(charset)
        except UnicodeDecodeError:
            raise InvalidField(f"the body is not valid {charset}", field="body") from None

    def json(self, required: bool = True) -> Any:
        """The body as JSON. An empty body is ``{}`` unless ``required``.

        Read as JSON: ``application/json`` (and ``*+json``), no Content-Type
        at all, and ``application/x-www-form-urlencoded`` when the body is
        JSON -- the type ``curl -d`` and many HTTP libraries put on any body
        they are given. A form body that is not JSON, and every other type,
        is 415 (docs/http.md, "Content types").
        """
        media, charset = self.media_type()
        labelled_form = media == FORM_TYPE
        if media not in (JSON_TYPE, "") and not media.endswith("+json") and not labelled_form:
            raise UnsupportedMediaType(f"expected Content-Type {JSON_TYPE}, got {media!r}")
        if not self.body():
            if required:
                raise InvalidField("a JSON body is required", field="body")
            return {}
        try:
            return json.loads(self.text(charset))
        except ValueError as exc:
            if labelled_form:
                raise UnsupportedMediaType(f"expected a JSON body (Content-Type {JSON_TYPE}); got a "
                                           f"{FORM_TYPE} body that is not JSON") from None
            raise InvalidField(f"the body is not valid JSON: {exc}", field="body") from None

    def json_object(self, required: bool = True) -> dict[str, Any]:
        value = self.json(required)
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


def json_response(obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return Response(status, body, [("Content-Type", "application/json")] + (headers or []))
