"""The pause webhook delivery takes when the node itself is short of what a
connection needs (:class:`ShortagePause`).

When the node itself cannot make an attempt -- no file descriptor left
for the connection (EMFILE, ENFILE), or no socket buffers or memory to
open it: :class:`~miyaq.gateway.outbound.LocalShortage` -- the destination
is not to blame: the task is given back unstarted (``Engine.give_back``,
as a worker's RETURN: no attempt spent, ready again at once), and the
deliverer (:class:`~miyaq.gateway.webhooks.WebhookDeliverer`) leases no
task to any lane for a pause (``SHORTAGE_PAUSE_MIN``, doubling at each
shortage met after a pause up to ``SHORTAGE_PAUSE_MAX``; back to the least
once an attempt begun since gets past it). Its lanes wait as when the
node's slots are all taken, and are offered the dispatcher again when the
pause ends. A pause starting is logged at most once a minute (a warning
naming the limit on open files), and so is the end of a shortage, with how
many attempts were given back. Before 2026-12-06 each such attempt failed
as a ``ConnectionError``: a node out of descriptors dead-lettered every
webhook task in a second, its destination never asked.

Constraints: this keeps the pause's state and its lines only -- giving the
task back and offering the lanes again are the deliverer's; nothing here
blocks (the pause's end is a hub callback).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from miyaq.gateway.outbound import LocalShortage
from miyaq.logs import LogLimiter
from miyaq.runtime import green
from miyaq.runtime.open_files import open_files_hint

logger = logging.getLogger("miyaq.gateway.webhooks")    # the deliverer's logger on purpose: one name to filter

#: Seconds no webhook task is leased after the node met a shortage of its
#: own (no descriptor left): the first pause of a shortage ...
SHORTAGE_PAUSE_MIN = 0.1
#: ... doubling, while it lasts, up to this.
SHORTAGE_PAUSE_MAX = 5.0


def _shortage_hint(cause: OSError) -> str:
    """What an operator can do about a shortage of the node's own (``cause``)."""
    hint = open_files_hint(cause).strip()      # the count against the limit, for EMFILE and ENFILE
    if hint:
        return f'{hint}; docs/configuration.md, "Open files"'
    return "the system is short of socket buffers or memory"


class ShortagePause:
    """A shortage of the node's own, as webhook delivery meets it: whether
    a pause runs (:meth:`paused`), the next pause, and the attempts given
    back since the last recovery. ``resume`` is called (from the hub) when
    a pause ends."""

    def __init__(self, resume: Callable[[], None]) -> None:
        self.resume = resume
        # The timer that ends the pause (None: not paused), the next pause, how
        # many shortages were met (an attempt begun at another count may not end
        # the backoff) and the attempts given back since the last recovery.
        self.resume_timer: Any = None
        self.next_pause = SHORTAGE_PAUSE_MIN
        self.shortages = 0
        self.given_back = 0
        self.shortage_log = LogLimiter(logger, burst=1)   # once a minute per node and kind, however many

    def paused(self) -> bool:
        """Whether no webhook task may be leased now (a pause runs)."""
        return self.resume_timer is not None

    def mark(self) -> int:
        """Taken as an attempt begins: :meth:`got_past` is given it back."""
        return self.shortages

    def got_past(self, mark: int) -> None:
        """An attempt begun at ``mark`` (:meth:`mark`) got past opening its
        connection: if no shortage was met since it began and the last one
        doubled the pause, the shortage is over and the next one pauses the
        least again."""
        if mark == self.shortages and self.next_pause > SHORTAGE_PAUSE_MIN:
            self._recovered()

    def met(self, shortage: LocalShortage, may_pause: bool = True) -> None:
        """An attempt was given back for ``shortage``: counted, and -- if
        ``may_pause`` (the node is not stopping) and none runs already -- a
        pause starts, logged once a minute."""
        if self.resume_timer is None and may_pause:
            pause, self.next_pause = self.next_pause, min(SHORTAGE_PAUSE_MAX, 2 * self.next_pause)
            self.shortages += 1
            self.resume_timer = green.call_later(pause, self._pause_over)
            self.shortage_log.log(
                logging.WARNING, "shortage",
                "webhooks: this node cannot open a connection (%s: %s): no attempt is spent, the task waits "
                "ready, and no webhook task is leased for %gs (doubling up to %gs while it lasts)",
                shortage, _shortage_hint(shortage.cause), pause, SHORTAGE_PAUSE_MAX)
        self.given_back += 1

    def _pause_over(self) -> None:
        """A pause ended (a hub callback: never blocks)."""
        self.resume_timer = None
        self.resume()

    def _recovered(self) -> None:
        """An attempt begun since the last shortage got past it: the next
        shortage pauses the least again."""
        self.next_pause = SHORTAGE_PAUSE_MIN
        self.shortage_log.log(logging.INFO, "recovered", "webhooks: connections open again; %d attempt(s) had "
                              "been given back for want of the node's own resources, none spent", self.given_back)
        self.given_back = 0

    def close(self) -> None:
        """The node stops: a pause running ends without calling ``resume``."""
        if self.resume_timer is not None:
            self.resume_timer.close()
            self.resume_timer = None
