"""HTTP header fields a webhook task asks the node to send.

Two levels of check:

* :func:`header_problem`, what any task may hold -- at a submit over
  ZeroMQ, in a record from the log or another node (through
  :func:`check_header_fields`): a name must be an HTTP token (RFC 9110:
  letters, digits and ``!#$%&'*+-.^_`|~``), a value may hold no control
  character but the tab -- above all no CR or LF, which would let a
  submitter end the header and write headers (or a whole request) of its
  own into the node's request to the destination. It does not grow: a
  check added here would refuse records stored before it (a task dropped
  from the log at the next start);
* :func:`send_problem`, what can be sent as it is: also nothing outside
  Latin-1 (a header is sent as Latin-1 bytes: ``€`` cannot be). Checked
  before each delivery (a task failing it is dead-lettered before any byte
  is sent), and at every submit (ZeroMQ and HTTP: ``task_from_wire``) by :func:`check_new_header_fields`,
  which also compares names as HTTP does, without regard to case: two
  names that differ only in case are refused, and so is a name the node
  sets on every delivery (:data:`NODE_SET`): a worker reading the first of
  two ``X-Task-Id`` would take the submitter's value for the task's id. A
  task stored with one anyway is still delivered: the node's own value is
  sent, the task's is not (:mod:`miyaq.gateway.outbound`).
"""
from __future__ import annotations

import re
from typing import Any

from miyaq.errors import InvalidField

_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NOT_LATIN_1 = re.compile(r"[^\x00-\xff]")
MAX_VALUE = 8192
#: Headers the node sets on every delivery (lower case); a new task may not set its own.
NODE_SET = frozenset({"x-task-id", "x-task-queue", "x-task-retry-count"})


def header_problem(name: Any, value: Any) -> str | None:
    """Why a task may not hold ``name: value``, or None if it may."""
    if not isinstance(name, str) or not _NAME.match(name):
        return f"webhook header name {name!r} is not an HTTP token"
    if not isinstance(value, str):
        return f"webhook header {name!r} must have a string value"
    if "\r" in value or "\n" in value:
        return f"webhook header {name!r} has a CR or LF in its value (header injection)"
    if _BAD_VALUE.search(value):
        return f"webhook header {name!r} has a control character in its value"
    if len(value) > MAX_VALUE:
        return f"webhook header {name!r} is longer than {MAX_VALUE} characters"
    return None


def send_problem(name: Any, value: Any) -> str | None:
    """Why ``name: value`` cannot be sent as it is, or None if it can."""
    problem = header_problem(name, value)
    if problem is not None:
        return problem
    found = _NOT_LATIN_1.search(value)
    if found is not None:
        return (f"webhook header {name!r} has {found.group()!r} in its value: header values are sent as "
                "Latin-1 and cannot hold it (percent-encode it, or use RFC 8187's encoding)")
    return None


def check_header_fields(headers: dict[str, Any], field: str = "headers") -> dict[str, Any]:
    """``headers`` if a task may hold every one (:func:`header_problem`);
    else :class:`InvalidField` naming the header."""
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            raise InvalidField(problem, field=field)
    return headers


def check_new_header_fields(headers: dict[str, Any], field: str = "headers") -> dict[str, Any]:
    """``headers`` of a new task if every one can be sent as it is
    (:func:`send_problem`), none is named like one the node sets
    (:data:`NODE_SET`) and no two names differ only in case; else
    :class:`InvalidField` naming the header."""
    seen: dict[str, str] = {}
    for name, value in headers.items():
        problem = send_problem(name, value)
        if problem is not None:
            raise InvalidField(problem, field=field)
        lower = name.lower()
        if lower in NODE_SET:
            raise InvalidField(f"webhook header {name!r} is the node's own: it sets it on every delivery",
                               field=field)
        if lower in seen:
            raise InvalidField(f"webhook headers {seen[lower]!r} and {name!r} are the same header "
                               "(header names are compared without regard to case)", field=field)
        seen[lower] = name
    return headers
