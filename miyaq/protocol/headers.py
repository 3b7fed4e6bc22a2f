"""HTTP header fields a webhook task asks the node to send.

A name must be an HTTP token (RFC 9110: letters, digits and
``!#$%&'*+-.^_`|~``), a value may hold no control character but the tab
-- above all no CR or LF, which would let a submitter end the header and
write headers (or a whole request) of its own into the node's request to
the destination. Checked when a task is submitted (over ZeroMQ and HTTP)
and again before each delivery.
"""
from __future__ import annotations

import re
from typing import Any

from miyaq.errors import InvalidField

_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_VALUE = 8192


def header_problem(name: Any, value: Any) -> str | None:
    """Why ``name: value`` cannot be sent as a header, or None if it can."""
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


def check_header_fields(headers: dict[str, Any], field: str = "headers") -> dict[str, Any]:
    """``headers`` if every one can be sent; else :class:`InvalidField` naming the header."""
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            raise InvalidField(problem, field=field)
    return headers
