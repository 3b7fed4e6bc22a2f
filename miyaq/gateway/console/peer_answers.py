"""Reading what another member's gateway answered, for the console's pages.

A member is untrusted like any other peer: its ``/status`` and ``/workers``
answers are JSON of any shape a bug or an attacker gives them. Each reader
here returns only values of the shape the pages show (counts are integers
in 0..2^63-1, names are strings, times are unix times a date can show), or
None when the answer is not understood -- the page then says so for that
member instead of showing part of it or failing.
"""
from __future__ import annotations

import math
from typing import Any

NOT_UNDERSTOOD = "answer not understood"

_MAX_COUNT = 2**63 - 1
_LATEST_TIME = 253402300799.0     # 9999-12-31 23:59:59 UTC: the last time a date shows
_MAX_TEXT = 256                   # characters of a name, host or queue shown


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_COUNT


def _optional_count(value: Any) -> bool:
    return value is None or _count(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= _MAX_TEXT


def _time(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and 0 <= value <= _LATEST_TIME


def totals_of(answer: Any) -> dict[str, int] | None:
    """``live``, ``dead`` and ``workers`` of a ``/status`` answer, or None."""
    totals = answer.get("totals") if isinstance(answer, dict) else None
    if not isinstance(totals, dict):
        return None
    picked: dict[str, int] = {}
    for name in ("live", "dead", "workers"):
        value: Any = totals.get(name)
        if not _count(value):
            return None
        picked[name] = value
    return picked


def _names(worker: dict[str, Any]) -> bool:
    """A row's task names: absent (a member of before 2026-12-07; the page
    shows ``-``), ``"any"``, or a list of names (at most :data:`_MAX_TEXT`)
    with ``names_more`` a count."""
    names = worker.get("names")
    if names is None or names == "any":
        return True
    return (isinstance(names, list) and len(names) <= _MAX_TEXT and all(_text(n) for n in names)
            and _count(worker.get("names_more")))


def workers_of(answer: Any, limit: int) -> list[dict[str, Any]] | None:
    """The first ``limit`` workers of a ``/workers`` answer, each with the
    fields the workers page shows, or None if any of them is not understood."""
    workers = answer.get("workers") if isinstance(answer, dict) else None
    if not isinstance(workers, list):
        return None
    out = []
    for worker in workers[:limit]:
        if not isinstance(worker, dict):
            return None
        queues = worker.get("queues")
        host = worker.get("host")
        if not (_text(worker.get("worker")) and (host is None or _text(host))
                and _optional_count(worker.get("pid")) and _optional_count(worker.get("concurrency"))
                and _count(worker.get("running")) and _count(worker.get("capacity"))
                and _time(worker.get("last_seen")) and isinstance(worker.get("stopping", False), bool)
                and isinstance(queues, list) and len(queues) <= _MAX_TEXT and all(_text(q) for q in queues)
                and _names(worker)):
            return None
        out.append({key: worker.get(key) for key in
                    ("worker", "host", "pid", "concurrency", "running", "capacity", "queues", "names",
                     "names_more", "last_seen", "stopping")})
    return out
