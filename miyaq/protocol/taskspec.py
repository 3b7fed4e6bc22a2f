"""Turn a task map from the wire into a :class:`~miyaq.store.task.Task`.

Validation happens here, field by field, before anything is stored; a bad
task raises :class:`~miyaq.errors.InvalidField` naming the field. Defaults
come from the node's configuration. ``countdown`` is relative to the node's
clock, ``eta`` absolute (unix seconds, float: sub-second precision).
"""
from __future__ import annotations

from typing import Any

# YEAR is taken from here too (recordspec): the node's settings of task defaults share the bound.
from miyaq.config import MAX_REPLICAS, MAX_RETRIES, YEAR as YEAR, NodeConfig
from miyaq.errors import InvalidField
from miyaq.store.task import Spec, Task, spec_for
from miyaq.protocol import fields as f
# The names and bounds a producer checks too (no store, no node settings), re-exported here.
from miyaq.protocol.task_names import (_ID, _QUEUE, MAX_ID_CHARS as MAX_ID_CHARS, MAX_KEY as MAX_KEY,
                                       MAX_TTL as MAX_TTL, MIN_TTL as MIN_TTL, check_id as check_id,
                                       check_queue as check_queue, is_id as is_id)
from miyaq.protocol.headers import check_header_fields, check_new_header_fields
from miyaq.protocol.urls import check_new_url

MAX_URL = 2048
"""Characters a webhook's URL may have (its query string included)."""
METHODS = ("POST", "PUT", "PATCH", "GET", "DELETE")


def check_headers(value: Any) -> dict[str, str]:
    """A webhook task's extra HTTP headers: at most 64, strings to strings,
    each one that can be sent (:mod:`miyaq.protocol.headers`: no CR or LF)."""
    if not isinstance(value, dict) or len(value) > 64 or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidField("field 'headers' must map at most 64 strings to strings", field="headers")
    return check_header_fields(value)


def receive_queues(body: dict[str, Any]) -> list[str]:
    """A RECEIVE's ``queues`` (ZeroMQ and ``POST /receive``): 1 to 64 queue
    names, ``["default"]`` when left out. An empty list is refused: it names
    nothing to take from, and before 2026-12-07 it waited its whole
    ``timeout`` and answered no task while tasks waited."""
    queues = f.string_list(body, "queues", ["default"], max_items=64)
    if not queues:
        raise InvalidField("field 'queues' names no queue: name at least one (left out, it is [\"default\"])",
                           field="queues")
    for q in queues:
        check_queue(q, "queues")
    return list(queues)


def check_target(d: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(name, url)``: exactly one of a handler name or a webhook URL. Only
    the URL's ``http://``/``https://`` prefix is checked here: stored records
    pass this too; a new submit's URL is checked whole by
    :func:`~miyaq.protocol.urls.check_new_url`."""
    name = f.string(d, "name", None, max_len=256)
    url = f.string(d, "url", None, max_len=MAX_URL)
    if (name is None) == (url is None):
        raise InvalidField("a task needs exactly one of 'name' (handler) or 'url' (webhook)", field="name")
    if url is not None and not url.startswith(("http://", "https://")):
        raise InvalidField("field 'url' must be an http:// or https:// URL", field="url")
    return name, url


_BASIC = frozenset({"id", "queue", "name", "body"})
_QUEUES = f.KnownNames(_QUEUE)
#: ``check_queue`` as a test, for fast paths (names already seen are remembered).
is_queue = _QUEUES.valid


def queue_or_default(value: Any) -> str:
    """The task's queue: ``default`` when the field is absent, nil or empty
    (as it always was); any other value must be a queue name (``0`` or
    ``False`` is refused, not read as ``default``)."""
    if is_queue(value):
        return value
    return "default" if value is None or value == "" else check_queue(value)


def task_from_wire(d: Any, now: float, config: NodeConfig) -> Task:
    """Validate one task map. The common case (id, queue, name, body only)
    takes a short path: this runs once per submitted task."""
    if not isinstance(d, dict):
        raise InvalidField("each task must be a map", field="tasks")
    raw_id = d.get("id")
    task_id = raw_id if type(raw_id) is str and _ID.match(raw_id) else check_id(raw_id)
    queue = queue_or_default(d.get("queue"))
    body = d.get("body", b"")
    if type(body) is not bytes or len(body) > config.max_payload:
        body = f.binary(d, "body", b"", max_len=config.max_payload)
    name = d.get("name")
    if d.keys() <= _BASIC and type(name) is str and 0 < len(name) <= 256:
        return Task.of(task_id, _plain_spec(queue, name, config), body, now, now)
    return _full(d, task_id, queue, body, now, config)


def _plain_spec(queue: str, name: str, config: NodeConfig) -> Spec:
    """The spec of a task with nothing but a queue and a name: the config's defaults."""
    return spec_for(queue, name, None, "POST", 0, config.default_max_retries, config.default_backoff,
                    config.default_backoff_max, config.default_timeout, config.replicas, False)


def _full(d: dict[str, Any], task_id: str, queue: str, body: bytes, now: float, config: NodeConfig) -> Task:
    name, url = check_target(d)
    if url is not None:
        # A new webhook's URL must be one a request can be sent to (a host, a
        # port from 1 to 65535, no space or control character): refused here,
        # at every submit (ZeroMQ and HTTP); not in check_target, which records
        # from the log and from peers pass too (one stored before is
        # dead-lettered at its first attempt, InvalidURL: miyaq.protocol.urls).
        check_new_url(url)
    method = f.string(d, "method", "POST", max_len=8)
    if method not in METHODS:
        method = method.upper()
    if method not in METHODS:
        raise InvalidField(f"field 'method' must be one of {', '.join(METHODS)}", field="method")
    eta = f.number(d, "eta", None, lo=0.0, hi=now + 10 * YEAR)
    countdown = f.number(d, "countdown", None, lo=0.0, hi=10 * YEAR)
    if eta is not None and countdown is not None:
        raise InvalidField("give either 'eta' or 'countdown', not both", field="eta")
    run_at = eta if eta is not None else now + (countdown or 0.0)
    ttl = f.number(d, "ttl", None, lo=MIN_TTL, hi=MAX_TTL)
    meta = f.mapping(d, "headers", None)
    if meta is not None:
        # A new task's headers must also be sendable as they are (Latin-1) and
        # not named like the node's own: checked here, for every submit (ZeroMQ
        # and HTTP), not in check_headers, which records from the log pass too.
        meta = {"headers": check_new_header_fields(check_headers(meta))}
    offset = f.number(d, "offset", None, lo=0.0, hi=YEAR)
    if offset is not None:
        meta = dict(meta or {}, offset=offset)
    if f.boolean(d, "resent", False):
        meta = dict(meta or {}, resent=True)     # a client resend (cluster: ask before running)
    return Task(
        task_id, queue, name, body, url=url, method=method,
        priority=f.integer(d, "priority", 0),
        eta=run_at, created=now,
        expires=(now + ttl) if ttl else 0.0,
        max_retries=f.integer(d, "max_retries", config.default_max_retries, lo=0, hi=MAX_RETRIES),
        backoff=f.number(d, "backoff", config.default_backoff, lo=0.0, hi=YEAR),
        backoff_max=f.number(d, "backoff_max", config.default_backoff_max, lo=0.0, hi=YEAR),
        timeout=f.number(d, "timeout", config.default_timeout, lo=0.01, hi=YEAR),
        key=f.string(d, "key", None, max_len=MAX_KEY),
        replicas=f.integer(d, "replicas", config.replicas, lo=1, hi=MAX_REPLICAS),
        at_most_once=f.boolean(d, "at_most_once", False),
        meta=meta,
    )
