"""What a worker says when a node refuses its key (``forbidden``): its
role may not speak the worker protocol (a producer's key), or it was
revoked.

Said once at ERROR with what to do, then reminded every
``REFUSED_REMINDER`` seconds: each heartbeat is refused again, and before
2026-12-07 a WARNING for each (five a minute, the log limiter's) buried the
reason. The link keeps beating meanwhile: a node re-reads ``authorized/``
(SIGHUP, or by itself), so a role changed there, or the key authorized on a
node that did not have it yet, lets the worker in without a restart -- the
next heartbeat is answered RECONNECT and it registers (docs/operations.md,
"A wrong CURVE key on a client or a worker", says why it does not exit).
One per node link; only that link's greenlets call it.
"""
from __future__ import annotations

import logging
from typing import Any

from ..runtime import monotonic

logger = logging.getLogger("miyaq.worker.link")     # the link's lines, as before

#: Seconds between the reminders that a node still refuses the key.
REFUSED_REMINDER = 600.0


class KeyRefusal:
    """Whether the node of ``endpoint`` refuses this worker's key, and the
    lines that say so."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.refusing = False       # refused, and not welcomed since
        self.refusals = 0           # since the last line said so
        self.reminder = 0.0         # when the next reminder is due (monotonic)

    def refused(self, message: Any) -> None:
        """The node answered ``forbidden`` with ``message`` (its words,
        logged as data)."""
        now = monotonic()
        if self.refusing:
            self.refusals += 1
            if now >= self.reminder:
                logger.warning("node %s still refuses this worker's key (%d refusal(s) in the last %.0f minutes): "
                               "%s", self.endpoint, self.refusals, REFUSED_REMINDER / 60, message)
                self.refusals = 0
                self.reminder = now + REFUSED_REMINDER
            return
        self.refusing = True
        self.refusals = 0
        self.reminder = now + REFUSED_REMINDER
        logger.error("node %s refuses this worker's key: %s. A worker needs a key of role worker (or admin) that is "
                     "in the nodes' authorized/ directory: `miyaq keys list KEYDIR` shows each key's role, `miyaq "
                     "keys add KEYDIR NAME --role worker` makes one (start the worker with --key "
                     "KEYDIR/NAME.key_secret). This worker keeps trying and registers once the node lets it "
                     "(a node re-reads authorized/ on SIGHUP); it says so again every %.0f minutes while refused",
                     self.endpoint, message, REFUSED_REMINDER / 60)

    def welcomed(self) -> bool:
        """The node welcomed the worker: True if it refused the key until now."""
        was, self.refusing = self.refusing, False
        return was
