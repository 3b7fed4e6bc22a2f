"""Typed field readers for message bodies.

Each reader returns the value or raises :class:`~miyaq.errors.InvalidField`
naming the field, so a bad request is refused before it changes any state.
"""
from __future__ import annotations

import math
import re
from typing import Any

from miyaq.errors import InvalidField

_MISSING = object()


def _get(body: dict[str, Any], name: str, default: Any) -> Any:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise InvalidField(f"field {name!r} is required", field=name)
        return default
    return value


def _default_in_range(name: str, default: Any, lo: float, hi: float) -> Any:
    """``default`` when it is None or within ``lo``..``hi``; else InvalidField.
    A default comes from the node's settings (``replicas``, ``default_timeout``):
    stored, a value out of range would be refused by the record's own check
    when the log is replayed, so the task is refused now instead.
    ``NodeConfig.validate`` keeps such settings out; this is the last guard."""
    if default is None or lo <= default <= hi:
        return default
    raise InvalidField(f"field {name!r} must be between {lo:g} and {hi:g}, and this node's default ({default!r}) is "
                       "not: give the field, or fix the node's setting", field=name)


def string(body: dict[str, Any], name: str, default: Any = _MISSING, max_len: int = 256) -> Any:
    value = _get(body, name, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, str):
        raise InvalidField(f"field {name!r} must be a string, not {type(value).__name__}", field=name)
    if not value or len(value) > max_len:
        raise InvalidField(f"field {name!r} must have 1 to {max_len} characters", field=name)
    return value


def integer(body: dict[str, Any], name: str, default: Any = _MISSING,
            lo: int = -(2**31), hi: int = 2**31 - 1) -> Any:
    """The integer ``name``, ``lo`` to ``hi``; else ``default`` (None: no
    value), which must be in that range too (:func:`_default_in_range`)."""
    value = _get(body, name, default)
    if value is default and default is not _MISSING:
        return _default_in_range(name, value, lo, hi)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"field {name!r} must be an integer, not {type(value).__name__}", field=name)
    if not lo <= value <= hi:
        raise InvalidField(f"field {name!r} must be between {lo} and {hi}", field=name)
    return value


def number(body: dict[str, Any], name: str, default: Any = _MISSING,
           lo: float = 0.0, hi: float = 1e12) -> Any:
    """The number ``name``, ``lo`` to ``hi``, as a float; else ``default``
    (None: no value), which must be in that range too (:func:`_default_in_range`)."""
    value = _get(body, name, default)
    if value is default and default is not _MISSING:
        return _default_in_range(name, value, lo, hi)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidField(f"field {name!r} must be a number, not {type(value).__name__}", field=name)
    value = float(value)
    if math.isnan(value) or not lo <= value <= hi:
        raise InvalidField(f"field {name!r} must be between {lo:g} and {hi:g}", field=name)
    return value


def boolean(body: dict[str, Any], name: str, default: Any = _MISSING) -> Any:
    value = _get(body, name, default)
    if not isinstance(value, bool):
        raise InvalidField(f"field {name!r} must be true or false", field=name)
    return value


def binary(body: dict[str, Any], name: str, default: Any = _MISSING, max_len: int = 2**24) -> Any:
    value = _get(body, name, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, bytes):
        raise InvalidField(f"field {name!r} must be binary (msgpack bin), not {type(value).__name__}", field=name)
    if len(value) > max_len:
        raise InvalidField(f"field {name!r} exceeds {max_len} bytes", field=name)
    return value


def string_list(body: dict[str, Any], name: str, default: Any = _MISSING,
                max_items: int = 256, max_len: int = 128) -> Any:
    value = _get(body, name, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, list) or len(value) > max_items:
        raise InvalidField(f"field {name!r} must be a list of at most {max_items} strings", field=name)
    for item in value:
        if not isinstance(item, str) or not item or len(item) > max_len:
            raise InvalidField(f"field {name!r} must hold strings of 1 to {max_len} characters", field=name)
    return value


def mapping(body: dict[str, Any], name: str, default: Any = _MISSING) -> Any:
    value = _get(body, name, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, dict):
        raise InvalidField(f"field {name!r} must be a map", field=name)
    return value


def items(body: dict[str, Any], name: str, max_items: int) -> list[Any]:
    value = _get(body, name, _MISSING)
    if not isinstance(value, list):
        raise InvalidField(f"field {name!r} must be a list", field=name)
    if len(value) > max_items:
        raise InvalidField(f"field {name!r} holds {len(value)} items; at most {max_items}", field=name)
    return value


class KnownNames:
    """Strings ``pattern`` accepted, remembered (at most ``limit``) so a hot
    path checks each queue name or node id once."""

    def __init__(self, pattern: re.Pattern[str], limit: int = 10_000) -> None:
        self.pattern = pattern
        self.limit = limit
        self._seen: set[str] = set()

    def valid(self, value: Any) -> bool:
        if type(value) is not str:
            return False
        if value in self._seen:
            return True
        if not self.pattern.fullmatch(value):
            return False
        if len(self._seen) < self.limit:
            self._seen.add(value)
        return True
