"""What a ``miyaq.aio.Client`` never closed left unsent, said once: at
interpreter exit for a client still referenced
(:func:`miyaq.aio.client._report_at_exit`), or when its driver is collected
with submits no node acknowledged (``miyaq.aio.unclosed``: a
client collected after its event loop ended, one garbage cycle with its
driver and handles, is not there at exit any more)."""
from __future__ import annotations

import logging

#: The client module's logger: the line is the same whichever says it.
logger = logging.getLogger("miyaq.aio.client")


def dropped(unanswered: int, refused: int) -> str:
    """What became of the submits a flush would have reported."""
    def submits(n: int) -> str:
        return f"{n} submit{'' if n == 1 else 's'}"
    said = []
    if unanswered:
        said.append(f"{submits(unanswered)} never answered {'was' if unanswered == 1 else 'were'} dropped (a node may "
                    "or may not have stored them)")
    if refused:
        said.append(f"{submits(refused)} failed (refused, or out of time) without anyone being told")
    return "; ".join(said)


def report_dropped(unanswered: int, refused: int) -> None:
    """Log, at ERROR, a client never closed that dropped ``unanswered``
    submits and failed ``refused`` unseen (nothing when both are 0)."""
    if unanswered or refused:
        logger.error("a miyaq.aio client never closed: %s; await client.close() (or use `async with`) before "
                     "its event loop ends", dropped(unanswered, refused))
