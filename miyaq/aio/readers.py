"""The asyncio driver's readers: one task per socket and per monitor reads
its messages and hands each to the driver (:class:`~miyaq.aio.driver.AsyncDriver`).

A reader holds its driver only weakly, and only while a message is handled:
a reader waiting for the next one keeps nothing alive, so a client dropped
without ``close()`` is collected (see :mod:`.unclosed`).
"""
from __future__ import annotations

import asyncio
import weakref
from typing import Any, Callable, Protocol, TypeVar


class Reading(Protocol):
    """What a reader feeds: its ``_crash`` when reading fails."""
    def _crash(self) -> None: ...


D = TypeVar("D", bound=Reading)

Handler = Callable[[D, int, Any, list[bytes]], bool]
"""A driver's method taking one message of node ``node``'s socket or
monitor; False: stop reading it."""


async def pump(driver: "weakref.ref[D]", handle: Handler[D], node: int, sock: Any) -> None:
    """Read ``sock`` (node ``node``'s socket or monitor) and hand each message
    to ``handle`` of the driver, until it says stop or the driver is gone.
    The driver is held only while a message is handled: a reader waiting for
    the next one keeps nothing alive (see :func:`~.unclosed.close_unclosed`)."""
    try:
        while True:
            frames = await sock.recv_multipart()
            if not _handed(driver, handle, node, sock, frames):
                return
    except asyncio.CancelledError:
        raise
    except Exception:
        alive = driver()
        if alive is not None:
            alive._crash()


def _handed(driver: "weakref.ref[D]", handle: Handler[D], node: int, sock: Any, frames: list[bytes]) -> bool:
    """``handle`` the message if the driver lives (a function of its own, so
    that no reference to the driver outlives the call in the reader's frame)."""
    alive = driver()
    return alive is not None and handle(alive, node, sock, frames)
