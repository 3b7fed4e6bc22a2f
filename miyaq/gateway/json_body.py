"""A JSON request body's check: what the gateway takes from a client.

JSON is nested at most ``MAX_JSON_DEPTH`` levels, has no ``NaN`` or
``Infinity`` (nor a number that overflows to it), no integer outside what
a task's payload can carry (64 bits, msgpack's range) and no string that
is not Unicode text: nothing stored from a body can later fail to be
packed, written to the log or shown (:class:`miyaq.gateway.request.Request`
reads bodies with it).
"""
from __future__ import annotations

import json
import math
from typing import Any

from miyaq.constants import MAX_JSON_DEPTH
from miyaq.errors import InvalidField
from miyaq.runtime.heap import collector_paused


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


#: The integers a task's payload (msgpack) can carry: int64 and uint64.
MIN_INT = -(2 ** 63)
MAX_INT = 2 ** 64 - 1


def json_problem(value: Any, limit: int = MAX_JSON_DEPTH) -> str:
    """Why a parsed JSON value is refused ("" if it is not): nested more
    than ``limit`` deep, an integer outside ``MIN_INT``..``MAX_INT``, a
    number too large for a double (``1e999``, which Python reads as
    infinity), or a string (value or key) that is not Unicode text. Iterative: a deep value
    cannot exhaust the stack here.

    Only arrays and maps that hold something wait on its stack, and
    scalars are looked at where they are met: before 2026-12-07 every
    value took an entry (a tuple made for each), and a 4 MiB body of 1.4
    million empty arrays took 4-5 s here -- with the parse, 7-10 s of the
    node's one thread, every other client waiting (``/healthz`` answered
    after 9.9 s) -- and 90 MB more."""
    if type(value) is not dict and type(value) is not list:
        return _scalar_problem(value)
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return f"nested deeper than {limit} levels"
        if type(item) is dict:
            for key in item:
                if type(key) is not str or not key.isascii():
                    problem = _scalar_problem(key)
                    if problem:
                        return problem
            children: Any = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                if child:
                    stack.append((child, depth + 1))
                elif depth + 1 > limit:
                    return f"nested deeper than {limit} levels"
            elif kind is int:       # the common scalars checked here, without a call
                if not MIN_INT <= child <= MAX_INT:
                    return _scalar_problem(child)
            elif kind is str:
                if not child.isascii():
                    problem = _scalar_problem(child)
                    if problem:
                        return problem
            elif kind is not bool and child is not None:
                problem = _scalar_problem(child)
                if problem:
                    return problem
    return ""


def _scalar_problem(item: Any) -> str:
    """:func:`json_problem` of a value that is neither an array nor a map."""
    if isinstance(item, str):
        if not item.isascii() and not is_text(item):
            return "a string holds a lone UTF-16 surrogate, which is not Unicode text"
    elif isinstance(item, int) and not isinstance(item, bool):
        if not MIN_INT <= item <= MAX_INT:
            return "an integer is outside the 64-bit range a task's payload can carry"
    elif isinstance(item, float):
        if not math.isfinite(item):
            return "a number overflows a double (1e999 is Infinity by another name)"
    return ""


def is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json(text: str) -> Any:
    """JSON from a client. ValueError for bad syntax (NaN and Infinity
    included); :class:`InvalidField` for what :func:`json_problem` refuses."""
    try:
        with collector_paused():     # a body of http_max_body may make a million containers
            value = json.loads(text, parse_constant=_no_constant)
            problem = json_problem(value)
    except RecursionError:
        problem = f"nested deeper than {MAX_JSON_DEPTH} levels"
    else:
        if not problem:
            return value
    raise InvalidField(f"the body is not valid JSON: {problem}", field="body")
