"""What becomes of an asyncio driver collected unclosed (its client dropped
without ``close()``): the finalizer
(:meth:`~miyaq.aio.driver.AsyncDriver._finalize_unclosed`) that stops its
readers, closes its sockets and reports the submits it dropped.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Any

from ..client.pending import Pending
from ..runtime.sockets import SocketFactory
from .unsent import report_dropped


def close_unclosed(factory: SocketFactory, socks: list[Any], monitors: list[Any],
                   readers: dict[int, list["asyncio.Task[None]"]], loop: asyncio.AbstractEventLoop | None,
                   pending: dict[str, Pending], waiting: list[Pending]) -> None:
    """The finalizer of a driver collected unclosed (``socks`` and
    ``monitors`` are held only to keep them reachable until the context
    closes them). While its event loop runs, its readers are stopped and its
    sockets closed in that loop, at its next pass (a collection may run in
    any thread, and in the middle of anything); otherwise -- never started,
    its loop stopped or closed -- the sockets are closed now. The submits
    still ``pending`` (unacknowledged) or ``waiting`` to be sent go with it:
    logged as the exit report of a client never closed logs them
    (:func:`~.unsent.report_dropped`). Before 2026-12-07 a client collected
    after its loop ended (one garbage cycle with its driver and handles,
    collected before the interpreter's exit) dropped them without a word."""
    unanswered = sum(1 + len(p.joined or ()) for p in itertools.chain(pending.values(), waiting))
    if unanswered:
        report_dropped(unanswered, 0)
    if loop is not None and loop.is_running():
        try:
            loop.call_soon_threadsafe(_stop_unclosed, factory, socks, monitors, readers)
            return
        except RuntimeError:        # closed since
            pass
    factory.close()


def _stop_unclosed(factory: SocketFactory, socks: list[Any], monitors: list[Any],
                   readers: dict[int, list["asyncio.Task[None]"]]) -> None:
    """In the loop of a driver collected unclosed: cancel its readers and close its sockets."""
    for tasks in readers.values():
        for task in tasks:
            task.cancel()
    factory.close()
