"""The submit window's two bounds -- ``window`` submits, ``window_bytes``
bytes -- as the clients' ``submit()`` applies them (the threaded and gevent
:class:`~miyaq.client.client.Client`, ``miyaq.aio.Client``), and the
Timeout of a submit they kept out.

What is in flight is the core's to count (:class:`~.core.ClientCore`:
``in_flight``, ``bytes_in_flight``); each submit counts for its
:attr:`Pending.size <miyaq.client.pending.Pending>`. One submit is always
let in when none is in flight, however large: a task over ``window_bytes``
would wait for ever otherwise. So a client holds at most ``window``
submits, and at most ``window_bytes`` or one task. Before 2026-12-07 the
count was the only bound: 10,000 tasks of 1 MiB, 10 GB, were held before
``submit()`` blocked.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import Timeout

if TYPE_CHECKING:
    from .core import ClientCore


def blocked_by(core: "ClientCore", window: int, window_bytes: int, size: int) -> str | None:
    """Which bound keeps out a submit of ``size`` bytes: ``"count"``
    (``window`` submits are in flight) or ``"bytes"`` (it would take what
    they hold past ``window_bytes``); None: it goes in. O(1), from any
    thread: a stale read lets a racing caller in, as with the count alone."""
    in_flight = core.submitted - core.submits.resolved
    if in_flight >= window:
        return "count"
    if in_flight and core.submitted_bytes - core.submits.resolved_bytes + size > window_bytes:
        return "bytes"
    return None


def stayed_full(bound: str, core: "ClientCore", window: int, window_bytes: int, size: int,
                waited: float) -> Timeout:
    """The error of a submit of ``size`` bytes kept out for ``waited``
    seconds, naming the ``bound`` (:func:`blocked_by`) and what it held."""
    if bound == "count":
        return Timeout(f"submit window stayed full for {waited:g}s: {window:,} submits unacknowledged "
                       f"(window={window})")
    return Timeout(f"submit window stayed full for {waited:g}s: {core.bytes_in_flight:,} bytes unacknowledged, "
                   f"and this task's {size:,} would pass window_bytes={window_bytes}")
