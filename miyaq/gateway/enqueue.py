"""miyamoto-compatible enqueue: ``POST /queue`` and ``POST /queue/<queue>``.

Two body forms (docs/http.md, "Enqueue a webhook"):

* form fields (``application/x-www-form-urlencoded``, curl's ``-d``):
  ``task.url`` (required), ``task.countdown``, ``task.eta``, ``task.method``
  and the other ``task.*`` options below; every other field is a parameter
  and the worker receives them form-encoded, in the order given;
* JSON ``{"url", "params", "countdown", "eta", "method", ...}``: the worker
  receives ``params`` as a JSON body. Numbers are JSON numbers (``"50"``
  is refused, as by ``POST /tasks``); ``eta`` may also be an ISO 8601
  string.

For GET and DELETE the parameters go to the URL's query string instead of a
body: after its query (``&``-joined; a URL ending in ``?`` or ``&`` takes
them as they are), before its fragment. A URL with a space or another
control character is refused (400): no HTTP request can carry it.

The task's own ``Content-Type`` (any case) is kept; the node's (JSON or
form) is added only when it has none.

The answer is ``{"status": "scheduled", "id": ...}``; a bad field is a
400 naming it (``task.countdown``, ``url``, ...).
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from miyaq.errors import InvalidField
from miyaq.protocol.commands import DUPLICATE
from miyaq.protocol.taskspec import MAX_URL, check_queue, task_from_wire
from miyaq.protocol.urls import check_new_url
from miyaq.gateway import convert
from miyaq.gateway.errors import UnsupportedMediaType
from miyaq.gateway.submit import submit_task
from miyaq.gateway.request import FORM_TYPE, JSON_TYPE, Request, Response, json_response
from miyaq.runtime import wall

if TYPE_CHECKING:
    from .server import Gateway

Converter = Callable[[Any, str], Any]

# option -> converter (None: a string); the same names as JSON keys and,
# prefixed with "task.", as form fields
OPTIONS: dict[str, Converter | None] = {
    "url": None, "method": None, "id": None, "queue": None, "key": None,
    "countdown": convert.number, "eta": convert.timestamp, "ttl": convert.number,
    "timeout": convert.number, "backoff": convert.number, "priority": convert.integer,
    "max_retries": convert.integer,
}
JSON_ONLY = ("params", "headers")
FORM_HEADERS_HINT = ("; a form sets no headers: send the task as a JSON body (Content-Type: application/json) "
                     'with "url" and "headers": {"Authorization": ...}')
QUERY_METHODS = ("GET", "DELETE")


class Enqueue:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config

    def handle(self, request: Request) -> Response:
        media, charset = request.media_type()
        if media in (FORM_TYPE, "") and request.body().lstrip()[:1] == b"{":
            # curl -d '{...}' labels its JSON a form, and some clients send it with
            # no type; no form starts with '{' (a browser percent-encodes it), so it
            # is JSON, as on the JSON endpoints (before 2026-12-07: read as a form)
            options, is_json = self._from_json(request.json_object(form_is_json=True)), True
        elif media in (FORM_TYPE, ""):
            options, is_json = self._from_form(request.form(charset)), False
        elif media == JSON_TYPE or media.endswith("+json"):
            options, is_json = self._from_json(request.json_object()), True
        else:
            raise UnsupportedMediaType(f"POST /queue takes {FORM_TYPE} or {JSON_TYPE}, not {media!r}")
        params = options.pop("params")
        prefix = "" if is_json else "task."
        path_queue = request.params.get("queue")
        if path_queue is not None:
            check_queue(path_queue, "queue")
            if options.setdefault("queue", path_queue) != path_queue:
                raise InvalidField(f"{prefix}queue differs from the queue in the path", field=prefix + "queue")
        wire = self._wire(options, params, is_json, prefix)
        now = wall()
        try:
            task = task_from_wire(wire, now, self.config)
        except InvalidField as err:
            raise _renamed(err, prefix) from None
        status, detail = submit_task(self.gateway.role.intake, self.gateway.wake, task, now)
        answer: dict[str, Any] = {"status": "scheduled", "id": task.id}
        if status == DUPLICATE:
            answer["duplicate"] = True
            if isinstance(detail, str):
                answer["id"] = detail
        return json_response(answer)

    # -- the two body forms ------------------------------------------------------------
    def _from_form(self, fields: list[tuple[str, str]]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        params: list[tuple[str, str]] = []
        for name, value in fields:
            if not name.startswith("task."):
                params.append((name, value))
                continue
            option = name[5:]
            if option not in OPTIONS:
                raise InvalidField(f"unknown field {name!r}; task.* fields are "
                                   + ", ".join("task." + o for o in OPTIONS), field=name)
            convert_fn = OPTIONS[option]
            options[option] = value if convert_fn is None else convert_fn(value, name)
        options["params"] = params
        return options

    def _from_json(self, body: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for name, value in body.items():
            if name in JSON_ONLY:
                continue
            if name not in OPTIONS:
                raise InvalidField(f"unknown field {name!r}", field=name)
            if value is None:
                continue
            convert_fn = OPTIONS[name]
            if convert_fn is None:
                if not isinstance(value, str):
                    raise InvalidField(f"field {name!r} must be a string", field=name)
                options[name] = value
            elif isinstance(value, str) and convert_fn is not convert.timestamp:
                # JSON has numbers: "50" is refused, as POST /tasks and a ZeroMQ
                # SUBMIT refuse it (the form body's strings are parsed above).
                kind = "an integer" if convert_fn is convert.integer else "a number"
                raise InvalidField(f"field {name!r} must be {kind}, not str", field=name)
            else:
                options[name] = convert_fn(value, name)
        params = body.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidField("field 'params' must be a JSON object", field="params")
        headers = body.get("headers")
        if headers is not None and not (isinstance(headers, dict)
                                        and all(isinstance(v, str) for v in headers.values())):
            raise InvalidField("field 'headers' must map names to strings", field="headers")
        options["params"] = params
        if headers:
            options["headers"] = headers
        return options

    def _wire(self, options: dict[str, Any], params: Any, is_json: bool, prefix: str) -> dict[str, Any]:
        url = options.get("url")
        if not url:
            raise InvalidField(f"field {prefix + 'url'!r} is required", field=prefix + "url")
        try:
            check_new_url(url, prefix + "url")     # as task_from_wire will, named as the client wrote it
        except InvalidField as err:
            if is_json or not _has_userinfo(url):
                raise
            # a form sets no headers: say where they go (before 2026-12-07 the advice stopped there)
            raise InvalidField(err.message + FORM_HEADERS_HINT, **err.details) from None
        self.gateway.destinations.check(url, prefix + "url")
        method = str(options.get("method", "POST")).upper()
        headers: dict[str, str] = dict(options.pop("headers", None) or {})
        if method in QUERY_METHODS:
            body = b""
            pairs = params if isinstance(params, list) else list(_flat(params))
            if pairs:
                url = with_query(url, urlencode(pairs))
                if len(url) > MAX_URL:
                    raise InvalidField(f"the webhook's params go to the URL's query string for a {method}, and make "
                                       f"the URL {len(url)} characters, over the {MAX_URL} a URL may have: send "
                                       "fewer, or use POST (params in the body)", field="params")
        else:
            if is_json:
                body = json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
                content_type = JSON_TYPE
            else:
                body, content_type = urlencode(params).encode(), FORM_TYPE
            convert.check_payload(body, self.config.max_payload, "params", "the webhook's params")
            if not any(isinstance(name, str) and name.lower() == "content-type" for name in headers):
                headers["Content-Type"] = content_type
        wire: dict[str, Any] = {k: v for k, v in options.items() if k != "url"}
        wire.update(id=options.get("id") or uuid.uuid4().hex, url=url, method=method, body=body)
        if headers:
            wire["headers"] = headers
        return wire


def _has_userinfo(url: str) -> bool:
    """Whether ``url`` names credentials before its host, as
    :func:`~miyaq.protocol.urls.check_no_userinfo` refuses."""
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return False


def with_query(url: str, query: str) -> str:
    """``url`` with ``query`` added to its query string: after the query it
    has (``&``-joined unless it is empty or ends in ``&``), before its
    fragment (the first ``#`` starts it, RFC 3986)."""
    base, hash_mark, fragment = url.partition("#")
    _, question_mark, existing = base.partition("?")
    if not question_mark:
        joined = base + "?" + query
    elif not existing or existing.endswith("&"):
        joined = base + query
    else:
        joined = base + "&" + query
    return joined + hash_mark + fragment


def _flat(params: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for name, value in params.items():
        if isinstance(value, (dict, list)):
            raise InvalidField("params of a GET or DELETE task must be flat (they go to the query string)",
                               field="params")
        out.append((name, "" if value is None else json.dumps(value) if isinstance(value, bool)
                    else str(value)))
    return out


def _renamed(err: InvalidField, prefix: str) -> InvalidField:
    """Name the field as the client wrote it (``task.countdown`` in a form)."""
    field = err.details.get("field")
    if not prefix or not isinstance(field, str) or field not in OPTIONS and field != "headers":
        return err
    return InvalidField(err.message.replace(f"'{field}'", f"'{prefix}{field}'"), field=prefix + field)
