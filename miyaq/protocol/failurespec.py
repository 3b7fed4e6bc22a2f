"""Check and cut the failure descriptions a task keeps (its ``error``).

A failure description is a map of at most 16 names to scalars (strings,
numbers, booleans, nil), with ``type`` and ``message`` strings when present.
One comes from a consumer that reports a failure (FAILED, NACK, an HTTP
nack: :func:`failure_from_wire`), or from another node or the log inside a
record (:func:`check_error`, called by :mod:`miyaq.protocol.recordspec` and
:mod:`miyaq.protocol.eventspec`).

A description over ``ERROR_BYTES`` of UTF-8 (counted by
:func:`miyaq.store.table.error_bytes`) is cut to it, not refused
(:func:`cut_error`): whatever enters a node keeps at most ``ERROR_BYTES``.
Anything else wrong raises :class:`~miyaq.errors.InvalidField` naming the
field, before anything is stored.
"""
from __future__ import annotations

import math
from typing import Any

from miyaq.constants import ERROR_BYTES
from miyaq.errors import InvalidField
from miyaq.store.table import error_bytes

_ERROR_KEYS = 16
_ERROR_TEXT = 16384
#: Room a cut string's mark takes (`` [... 65536 bytes cut]``).
_CUT_MARK = 32


def check_error(value: Any, field: str = "error") -> dict[str, Any] | None:
    """A failure description: nil, or a map of at most 16 names to scalars
    (strings up to 16384 characters, numbers, booleans, nil), ``type`` and
    ``message`` strings when present. One over ``ERROR_BYTES`` is cut, not
    refused (:func:`cut_error`), in place: callers that keep the record they
    checked (the log's replay, a stream event) keep the cut one."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > _ERROR_KEYS:
        raise InvalidField(f"field {field!r} must be a map of at most {_ERROR_KEYS} entries", field=field)
    for k, v in value.items():
        if not isinstance(k, str) or len(k) > 64:
            raise InvalidField(f"field {field!r} must have names of at most 64 characters", field=field)
        if v is None or isinstance(v, (bool, int)):
            continue
        if isinstance(v, str):
            if len(v) > _ERROR_TEXT:
                raise InvalidField(f"field {field!r} holds a string over {_ERROR_TEXT} characters", field=field)
        elif not (isinstance(v, float) and math.isfinite(v)):
            raise InvalidField(f"field {field!r} may hold only strings, numbers, booleans and nil", field=field)
    for name in ("type", "message"):
        if name in value and not isinstance(value[name], str):
            raise InvalidField(f"field {field!r}: {name!r} must be a string", field=field)
    return cut_error(value)


def cut_error(error: dict[str, Any], limit: int = ERROR_BYTES) -> dict[str, Any]:
    """``error``, cut in place to at most ``limit`` bytes (:func:`error_bytes`;
    ``ERROR_BYTES`` unless told) and returned: the traceback first (its end is kept: the innermost frames
    and the exception), then any other string, then the message (its start
    is kept), the type last. Each string is cut on a character boundary and
    marked ``[... N bytes cut]``; strings of at most 32 bytes are kept
    whole. Names are at most 64 characters, 16 of them (:func:`check_error`),
    so what is left always fits ``ERROR_BYTES`` (a smaller ``limit``, as
    far as marks and those short strings allow)."""
    over = error_bytes(error) - limit
    if over <= 0:
        return error
    others = [k for k, v in error.items() if isinstance(v, str) and k not in ("type", "message", "traceback")]
    for name in ("traceback", *others, "message", "type"):
        text = error.get(name)
        if not isinstance(text, str):
            continue
        size = _utf8_len(text)
        if size <= _CUT_MARK:
            continue
        error[name] = cut = _cut_text(text, max(size - over - _CUT_MARK, 0), keep_end=name == "traceback")
        over -= size - _utf8_len(cut)
        if over <= 0:
            break
    return error


#: The most characters a reported failure's fields keep (longer ones are cut,
#: then the whole to ``ERROR_BYTES``: :func:`cut_error`).
FAILURE_CHARS = (("type", 256), ("message", 4096), ("traceback", 16384))


def failure_from_wire(value: Any) -> dict[str, Any]:
    """A failure a consumer reports (FAILED, NACK, an HTTP nack):
    ``{type, message, traceback?}``, strings, each cut to its
    :data:`FAILURE_CHARS` and then, together, to ``ERROR_BYTES`` of UTF-8
    (:func:`cut_error`); :class:`InvalidField` (field ``error``) if it is
    not a map of strings."""
    if not isinstance(value, dict):
        raise InvalidField("field 'error' must be a map {type, message, traceback}", field="error")
    out: dict[str, Any] = {}
    for name, limit in FAILURE_CHARS:
        v = value.get(name)
        if v is not None:
            if not isinstance(v, str):
                raise InvalidField(f"error field {name!r} must be a string", field="error")
            out[name] = v[:limit]
    out.setdefault("type", "Error")
    out.setdefault("message", "")
    return cut_error(out)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _cut_text(text: str, keep: int, keep_end: bool) -> str:
    """``text`` cut to at most ``keep`` bytes of UTF-8 (its start, or its end),
    on a character boundary, and marked."""
    data = text.encode("utf-8", "surrogatepass")
    kept = (data[len(data) - keep:] if keep_end else data[:keep]).decode("utf-8", "ignore")
    cut = len(data) - len(kept.encode("utf-8"))
    return f"[{cut} bytes cut ...] {kept}" if keep_end else f"{kept} [... {cut} bytes cut]"
