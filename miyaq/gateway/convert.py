"""Conversions between JSON (what HTTP clients send and read) and what the
node stores (msgpack payloads, unix times).

* Times: ``eta`` is unix seconds (a number) or an ISO 8601 string; a string
  without a UTC offset is taken as UTC.
* Payloads: a named task's body is msgpack ``[args, kwargs]``, as the Python
  client packs it, so Python workers run tasks submitted over HTTP.
* Results: msgpack decoded to JSON; a value JSON cannot hold (bytes, non-text
  keys) is returned as ``result_base64`` (the raw msgpack) instead.

Payload and result conversions are total: whatever a producer stored over
ZeroMQ (bytes that are not msgpack, values nested too deep for JSON, floats
JSON has no name for) comes back as base64, never as an exception.
"""
from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from typing import Any

import msgpack

from miyaq.errors import InvalidField, TooLarge
from miyaq.protocol import codec


def number(raw: Any, field: str, lo: float = 0.0, hi: float = 1e12) -> float:
    """A number from JSON or from a form's text."""
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            raise InvalidField(f"field {field!r} must be a number", field=field) from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or math.isnan(raw) or not lo <= raw <= hi:
        raise InvalidField(f"field {field!r} must be a number between {lo:g} and {hi:g}", field=field)
    return float(raw)


def integer(raw: Any, field: str, lo: int = -(2**31), hi: int = 2**31 - 1) -> int:
    if isinstance(raw, str):
        try:
            raw = int(raw.strip())
        except ValueError:
            raise InvalidField(f"field {field!r} must be an integer", field=field) from None
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise InvalidField(f"field {field!r} must be an integer between {lo} and {hi}", field=field)
    return raw


def timestamp(raw: Any, field: str) -> float:
    """Unix seconds from a number or an ISO 8601 date-time."""
    if isinstance(raw, str) and raw.strip() and not raw.strip().replace(".", "", 1).isdigit():
        try:
            when = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise InvalidField(f"field {field!r} must be unix seconds or an ISO 8601 date-time",
                               field=field) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    return number(raw, field)


def pack_args(args: Any, kwargs: Any) -> bytes:
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list):
        raise InvalidField("field 'args' must be a JSON array", field="args")
    if not isinstance(kwargs, dict):
        raise InvalidField("field 'kwargs' must be a JSON object", field="kwargs")
    return msgpack.packb([args, kwargs], use_bin_type=True)


def check_payload(packed: bytes, max_payload: int, field: str, what: str) -> bytes:
    """``packed`` if it fits the node's ``max_payload``, else a 413
    ``too_large`` naming ``field`` as the caller wrote it (``args``,
    ``params``, ``result``) and the limit with its flag. Before 2026-12-07
    a task's arguments past it were a 400 naming ``body`` -- a field no
    HTTP caller sends -- and an ack's result a 413 naming nothing."""
    if len(packed) > max_payload:
        raise TooLarge(f"{what} take {len(packed)} bytes packed, over the node's max_payload of {max_payload} "
                       "bytes (--max-payload): keep large data elsewhere (a file, an object store, a database "
                       "row) and pass where it is", field=field)
    return packed


def _json_ready(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):   # bytes, NaN, nested past the stack
        return False
    return True


def result_fields(raw: bytes | None) -> dict[str, Any]:
    """``{"result": ...}`` for a msgpack result JSON can hold, else
    ``{"result_base64": ...}`` -- also for one with a map that holds a key
    twice: decoded, it keeps the last, so the JSON would not show what was
    stored, and could be far shorter than its bytes (the gateway counts on
    a fifth of them at least: :func:`miyaq.gateway.answers.least_result`)."""
    if raw is None:
        return {}
    try:
        value = codec.unpack(raw, strict_keys=True, unique_keys=True)
    except Exception:  # noqa: BLE001 - not msgpack, or past codec.MAX_VALUES: the bytes as they are
        value = raw
    if not isinstance(value, bytes) and _json_ready(value):
        return {"result": value}
    return {"result_base64": base64.b64encode(raw).decode()}


def payload_fields(body: bytes) -> dict[str, Any]:
    """A named task's payload for a pull consumer: ``args``/``kwargs`` when it
    is the usual msgpack ``[args, kwargs]`` JSON can hold, else ``body_base64``."""
    try:
        value = codec.unpack(body, strict_keys=True) if body else [[], {}]
    except Exception:  # noqa: BLE001 - not msgpack, or past codec.MAX_VALUES: the bytes as they are
        value = None
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)
            and isinstance(value[1], dict) and _json_ready(value)):
        return {"args": value[0], "kwargs": value[1]}
    return {"body_base64": base64.b64encode(body).decode()}
