"""The dispatch gate: tasks are leased only while no reason holds it closed.

Several parts may need dispatching to stop for a while, each for its own
reason: the node draining for shutdown, a clustered node reconciling with the
other holders after a restart or a freeze. Each closes the gate with its
reason and opens it with the same reason; the gate is open only when no
reason is held, so one part can never reopen what another closed. The held
reasons are shown in ``status`` (``dispatch.held``).

Constraints: never blocks; ``close``/``open`` are idempotent per reason;
``is_open`` is a plain attribute the dispatcher reads on every pump.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

SHUTTING_DOWN = "shutting down"
RECONCILING = "reconciling"
FENCED = "fenced"


class Gate:
    def __init__(self) -> None:
        self._held: set[str] = set()
        self.is_open = True
        self._on_open: list[Callable[[], None]] = []

    def close(self, reason: str) -> None:
        """Stop leasing tasks until ``reason`` is released with :meth:`open`."""
        if reason not in self._held:
            self._held.add(reason)
            self.is_open = False
            logger.info("dispatching held: %s", reason)

    def open(self, reason: str) -> None:
        """Release ``reason``; when it was the last one, dispatching resumes."""
        if reason not in self._held:
            return
        self._held.discard(reason)
        logger.info("dispatching no longer held by: %s", reason)
        if not self._held:
            self.is_open = True
            for fn in list(self._on_open):
                fn()

    def holds(self, reason: str) -> bool:
        return reason in self._held

    def held(self) -> list[str]:
        """The reasons holding the gate closed (empty while it is open)."""
        return sorted(self._held)

    def on_open(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (it must not block) whenever the gate opens again."""
        self._on_open.append(fn)
