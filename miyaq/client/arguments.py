"""Checks of a caller's arguments that never reach a node: how long to wait,
the client's own options, and the endpoints it is given.

A bad argument fails in the caller before anything is sent or queued: a
``TypeError`` for a value of the wrong type, a ``ValueError`` for one out of
range (a negative or NaN timeout), each naming the argument; a client's
constructor raises :class:`miyaq.ConfigError` for its options and its
endpoints (``App(...)`` too, for its endpoints). Without these checks a NaN
timeout made ``result()`` wait for ever (every comparison with a NaN
deadline is false) and a negative one surfaced as a message of the
threading module's.
"""
from __future__ import annotations

import math
import threading
from typing import Any, overload

from ..constants import MAX_BATCH
from ..errors import ConfigError
from .sizes import WINDOW_BYTES

LONGEST_WAIT = min(1e9, threading.TIMEOUT_MAX)
"""The longest wait in seconds (31 years): a finite timeout past it means
"no bound" (None) where that is allowed, else this."""



@overload
def seconds(value: float, name: str) -> float: ...
@overload
def seconds(value: float | None, name: str, *, optional: bool) -> float | None: ...


def seconds(value: float | None, name: str, *, optional: bool = False) -> float | None:
    """``value`` checked as a number of seconds to wait: a real number (not a
    bool), at least 0, not NaN. ``optional``: None is allowed (the call's own
    "no bound of the caller's"), and so is infinity, which means the same and
    is returned as None."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        allowed = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name} must be {allowed}, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be at least 0 seconds, not {value!r}")
    if math.isinf(value):
        if optional:
            return None
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if value >= LONGEST_WAIT:
        # Past what a thread's wait takes (threading.TIMEOUT_MAX: OverflowError):
        # no bound, as infinity, where None is allowed; else the longest wait.
        return None if optional else LONGEST_WAIT
    return float(value)


def client_options(window: int, submit_timeout: float, ack_timeout: float, request_timeout: float,
                   max_batch: int, heartbeat_timeout: float, *, window_bytes: int = WINDOW_BYTES) -> None:
    """A client's constructor options (both flavours): ConfigError naming the
    first bad one. Counts (``window_bytes`` too) are integers of at least 1; timeouts finite numbers
    of seconds above 0 (a zero timeout would fail every call);
    ``heartbeat_timeout`` 0.5 to 3600 seconds, as a node's
    ``peer_heartbeat_timeout`` (libzmq counts it in milliseconds, and a PING
    goes every fifth of it)."""
    for name, count in (("window", window), ("max_batch", max_batch), ("window_bytes", window_bytes)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{name} must be an integer of at least 1, not {count!r}")
    if max_batch > MAX_BATCH:
        raise ConfigError(f"max_batch must be an integer of at least 1 and at most {MAX_BATCH:,}, not {max_batch!r}")
    for name, value in (("submit_timeout", submit_timeout), ("ack_timeout", ack_timeout),
                        ("request_timeout", request_timeout)):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not (0 < value < math.inf)):
            raise ConfigError(f"{name} must be a number of seconds above 0, not {value!r}")
    if (isinstance(heartbeat_timeout, bool) or not isinstance(heartbeat_timeout, (int, float))
            or not 0.5 <= heartbeat_timeout <= 3600):
        raise ConfigError(f"heartbeat_timeout must be 0.5 to 3600 seconds, not {heartbeat_timeout!r}")


def endpoint_list(endpoints: Any) -> list[str]:
    """``endpoints`` -- a string (several comma-separated) or an iterable of
    such strings -- as a list of endpoints, maybe empty. Anything else (an
    int, bytes, a list holding a non-string) or an endpoint with a character
    UTF-8 cannot encode (a lone surrogate) is a ConfigError naming it
    (before 2026-12-05: AttributeError or TypeError from deep inside)."""
    if isinstance(endpoints, str):
        given: list[Any] = [endpoints]
    else:
        try:
            given = list(endpoints)
        except TypeError:           # not iterable
            given = [endpoints]
        if isinstance(endpoints, (bytes, bytearray)) or not all(isinstance(e, str) for e in given):
            raise ConfigError(f"endpoints must be a string or a list of strings, not {_described(endpoints)}")
    for endpoint in given:
        if not endpoint.isascii():
            try:
                endpoint.encode()
            except UnicodeEncodeError:
                raise ConfigError(f"endpoint {endpoint!r} holds a lone surrogate, which UTF-8 cannot encode (as "
                                  "os.fsdecode() or errors='surrogateescape' make of bytes that are not UTF-8)"
                                  ) from None
    return [e.strip() for part in given for e in part.split(",") if e.strip()]


def _described(endpoints: Any) -> str:
    """What was given as endpoints, for an error: its type, and for an
    iterable the types it holds."""
    kind = type(endpoints).__name__
    if isinstance(endpoints, (list, tuple, set, frozenset)):
        inner = sorted({type(e).__name__ for e in endpoints if not isinstance(e, str)})
        return f"a {kind} holding {', '.join(inner)}"
    return kind


def split_endpoints(endpoints: Any) -> list[str]:
    """Endpoints as a list (:func:`endpoint_list`); none at all is a ConfigError."""
    endpoints = endpoint_list(endpoints)
    if not endpoints:
        raise ConfigError("a Client needs at least one node endpoint")
    return endpoints


__all__ = ["client_options", "endpoint_list", "seconds", "split_endpoints"]
