"""Checks of a caller's arguments that never reach a node: how long to wait,
and the client's own options.

A bad argument fails in the caller before anything is sent or queued: a
``TypeError`` for a value of the wrong type, a ``ValueError`` for one out of
range (a negative or NaN timeout), each naming the argument; a client's
constructor raises :class:`miyaq.ConfigError` for its options. Without these
checks a NaN timeout made ``result()`` wait for ever (every comparison with
a NaN deadline is false) and a negative one surfaced as a message of the
threading module's.
"""
from __future__ import annotations

import math
import threading
from typing import overload

from ..constants import MAX_BATCH
from ..errors import ConfigError

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
                   max_batch: int, heartbeat_timeout: float) -> None:
    """A client's constructor options (both flavours): ConfigError naming the
    first bad one. Counts are integers of at least 1; timeouts finite numbers
    of seconds above 0 (a zero timeout would fail every call);
    ``heartbeat_timeout`` 0.5 to 3600 seconds, as a node's
    ``peer_heartbeat_timeout`` (libzmq counts it in milliseconds, and a PING
    goes every fifth of it)."""
    for name, count in (("window", window), ("max_batch", max_batch)):
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


__all__ = ["client_options", "seconds"]
