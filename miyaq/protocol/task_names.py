"""A task's id, queue and ttl, as a node checks them and a producer may
check them before it sends (:mod:`miyaq.client.option_values`): the rules
that need neither the store nor a node's settings. :mod:`.taskspec`
re-exports them."""
from __future__ import annotations

import re
from typing import Any

from miyaq.config import YEAR
from miyaq.errors import InvalidField

MAX_ID_CHARS = 64
"""The longest task id."""
MAX_KEY = 256
"""The longest ``key`` (characters), which the ring places a keyed task by."""
_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,%d}\Z" % MAX_ID_CHARS)     # \Z: "$" would let a trailing newline in
MAX_QUEUE_CHARS = 128
"""The longest queue name."""
_QUEUE = re.compile(r"^[A-Za-z0-9_.:\-]{1,%d}\Z" % MAX_QUEUE_CHARS)
MIN_TTL, MAX_TTL = 0.001, 10 * YEAR
"""A task's ``ttl`` bounds (seconds); a periodic schedule's ``ttl`` has the same."""


def check_id(value: Any, field: str = "id") -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidField(f"field {field!r} must be 1-{MAX_ID_CHARS} characters of A-Z a-z 0-9 _ . : -", field=field)
    return value


def is_id(value: Any) -> bool:
    """``check_id`` as a test, for fast paths."""
    return type(value) is str and _ID.match(value) is not None


def check_queue(value: Any, field: str = "queue") -> str:
    if not isinstance(value, str) or not _QUEUE.match(value):
        raise InvalidField(f"field {field!r} must be 1-{MAX_QUEUE_CHARS} characters of A-Z a-z 0-9 _ . : -",
                           field=field)
    return value
