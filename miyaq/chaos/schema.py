"""The fields of each history record kind: the one place a record is
checked before the checker reads it (docs/chaos.md, "The history").

:func:`problem` says what is wrong with a decoded line, or ``None`` for a
record the checker may read. A record fails when its ``ev`` is not one of
the kinds the harness writes, when ``t`` is not a finite number of
wall-clock seconds between 2000 and 2100 (a time in milliseconds, NaN,
infinity or a string is refused here, so no later arithmetic meets it), or
when a field the checker reads has the wrong type. Fields the checker does
not read are not checked (a later harness may add some). Such a record is
counted like a line that does not parse; it is never half-used.

Constraints: pure and cheap (one dict lookup per field); never raises.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

T_MIN = 946_684_800.0
"""2000-01-01 in Unix seconds: any earlier ``t`` is not a run's wall clock."""
T_MAX = 4_102_444_800.0
"""2100-01-01: a later ``t`` is not seconds (a time in milliseconds is ~1.8e12)."""

Check = Callable[[Any], bool]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -2 ** 63 <= v < 2 ** 63


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _time(v: Any) -> bool:
    return _num(v) and T_MIN <= v <= T_MAX


def _endpoints(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(e, str) for k, e in v.items())


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


_EXEC: dict[str, Check] = {"id": _str, "attempt": _int, "pid": _int}
REQUIRED: dict[str, dict[str, Check]] = {
    "run": {},
    "phase": {"name": _str},
    "submit": {"id": _str},
    "ack": {"id": _str},
    "fail": {"id": _str},
    "final": {"id": _str, "state": _str},
    "start": _EXEC,
    "finish": _EXEC,
    "fault": {"phase": _str},
    "node": {"id": _str, "endpoint": _str},
    "stats": {},
    "merge": {"records": _int, "bad_lines": _int},
    "read": {"id": _str},
}
"""Every kind the harness writes, with the fields it must carry besides ``ev`` and ``t``."""
OPTIONAL: dict[str, dict[str, Check]] = {
    "run": {"node_endpoints": _optional(_endpoints), "duration": _optional(_num)},
    "fail": {"code": _optional(_str)},
    "start": {"node": _optional(_str), "worker": _optional(_str)},
    "finish": {"node": _optional(_str), "worker": _optional(_str)},
    "fault": {"fault": _optional(_int), "kind": _optional(_str), "target": _optional(_str),
              "pid": _optional(_int), "recover_s": _optional(_num)},
    "stats": {"nodes": _optional(_dict)},
    "submit": {"result": _int},
    "read": {"size": _int, "code": _str},
}
"""Fields the checker reads when present: if there, of this type."""


def problem(record: Any) -> str | None:
    """What makes ``record`` (a decoded JSON line) no history record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    ev = record.get("ev")
    required = REQUIRED.get(ev) if isinstance(ev, str) else None
    if required is None or not isinstance(ev, str):
        return f"unknown record kind {ev!r:.40}"
    if not _time(record.get("t")):
        return f"{ev}: t is not wall-clock seconds: {record.get('t')!r:.40}"
    for name, check in required.items():
        if not check(record.get(name)):
            return f"{ev}: bad or missing {name}: {record.get(name)!r:.40}"
    for name, check in OPTIONAL.get(ev, {}).items():
        if name in record and not check(record[name]):
            return f"{ev}: bad {name}: {record[name]!r:.40}"
    return None
