"""What the client's two tables -- submits (:mod:`~.submits`) and requests
(:mod:`~.requests`) -- send through and resolve: the ``send`` callable the
core gives them, the driver's futures as :class:`Waiter`, and the
:class:`Resolver` that resolves them at once or after the driver's lock is
released. Part of the client's sans-I/O core (:mod:`miyaq.client.core`)."""
from __future__ import annotations

from typing import Any, Callable, Protocol

from ..errors import MiyaqError

Send = Callable[[int, bytes, dict[str, Any]], bool]
"""``send(node, command, body)``: False when that node is not connected."""


class Waiter(Protocol):
    """What a submit or a request resolves: a future of the driver's kind."""

    def set(self, value: Any) -> None: ...

    def fail(self, error: MiyaqError) -> None: ...


class Resolver:
    """Resolves waiters: at once, or -- while ``deferring`` -- later, when the
    driver calls :meth:`run`. The threaded driver defers while it holds its
    lock, so a caller woken by its reply finds the lock free (and the short
    path open) instead of racing the I/O thread for it."""

    __slots__ = ("deferring", "_ready")

    def __init__(self) -> None:
        self.deferring = False
        self._ready: list[tuple[Waiter, Any, MiyaqError | None]] = []

    def set(self, waiter: Waiter, value: Any) -> None:
        if self.deferring:
            self._ready.append((waiter, value, None))
        else:
            waiter.set(value)

    def fail(self, waiter: Waiter, error: MiyaqError) -> None:
        if self.deferring:
            self._ready.append((waiter, None, error))
        else:
            waiter.fail(error)

    def run(self) -> None:
        """Resolve what was deferred (in the order it was resolved)."""
        ready, self._ready = self._ready, []
        for waiter, value, error in ready:
            if error is None:
                waiter.set(value)
            else:
                waiter.fail(error)
