"""How a table shows a task name a worker declared (``miyaq status``'s
workers, the console's Workers page): as it is when it is plain, quoted
when it could be read as something the table itself writes.

A worker declares any names its app has (up to 256 characters each:
docs/protocol.md, 7.1), so a name can be ``any``, ``none`` or ``-`` (what
a row says for "every name", "an empty list", "the node did not say"),
contain the list's comma, ``and 99 more``, or a double space and
``STOPPING`` (the mark of a stopping worker). Such a name is shown in
double quotes -- ``"any"``, ``"x  STOPPING"`` -- a quote or backslash in
it escaped by a backslash, and a plain one (letters, digits and
``_ . : -``, like a Python function's dotted path) as it is. Control
characters are the caller's to escape, as for every field of its rows
(``miyaq status`` writes them as ``\x1b``; the console's page as they are,
HTML-escaped).
"""
from __future__ import annotations

import re

_PLAIN = re.compile(r"[A-Za-z0-9_.:\-]+\Z")
RESERVED = frozenset({"any", "none", "-", "?"})
"""What a row's task names column says of its own."""


def name_label(name: str) -> str:
    """``name`` as a row shows it: itself when plain, else in double quotes."""
    if _PLAIN.match(name) and name not in RESERVED:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
