"""What a node's limits do to the submits bound for it (:class:`LimitsGate`,
the base of :class:`~miyaq.client.submits.SubmitPipeline`).

- Once a node's RING reply said its limits (:class:`~.sizes.Limits`), a task
  that node could never take fails at once with ``InvalidField`` instead of
  being sent (libzmq would drop the connection and the task be resent until
  its deadline); the pipeline also keeps each SUBMIT to that node within its
  ``max_batch`` and half its ``max_message``.
- A submit with a payload over ``ASK_LIMITS_ABOVE`` waits, with every later
  one, until its node's limits are known (the core asks that node with a
  RING of its own), at most ``LIMITS_WAIT``: sent before, such a message
  could end the very connection the RING reply would come by.

The sizes and the checks themselves are :mod:`~.sizes`'s. Like the pipeline,
this touches no socket and no clock, and is called only by whoever holds
the client's core.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from ..errors import MiyaqError
from .nodes import Nodes
from .pending import Pending
from .sizes import LIMITS_POLL, LIMITS_WAIT, Limits, refusal, surely_fits

__all__ = ["LimitsGate"]


class Resolve(Protocol):
    """The pipeline's :meth:`~miyaq.client.submits.SubmitPipeline.resolve`."""

    def __call__(self, p: Pending, value: Any = None, error: MiyaqError | None = None) -> None: ...


class LimitsGate:
    """A node's limits applied to its submits (the pipeline's base). The
    pipeline sets the attributes below, and :meth:`resolve` is its own (it
    fails a submit)."""

    nodes: Nodes
    waiting: list[Pending]
    _ask_limits: Callable[[int], None]
    resolve: Resolve

    def _hold_for_limits(self, p: Pending, node: int, now: float) -> bool:
        """Whether ``p``, large, waits for node ``node``'s limits (asked for
        here) instead of leaving now: at most LIMITS_WAIT from its first wait."""
        if p.held_since is None:
            p.held_since = now
        elif now - p.held_since >= LIMITS_WAIT:
            return False
        p.node = node
        p.next_try = now + LIMITS_POLL
        self._ask_limits(node)
        return True

    def limits_heard(self, now: float) -> None:
        """A node said its limits (or that it has none): the submits that wait
        for limits go now (checked against them)."""
        for p in self.waiting:
            if p.held_since is not None and p.next_try > now:
                p.next_try = now

    def _within(self, node: int, batch: list[Pending], limits: Limits) -> list[Pending]:
        """The submits of ``batch`` that node ``node`` can take; each other one
        fails at once, naming the limit it passes."""
        fits: list[Pending] = []
        quick = surely_fits(limits)
        for p in batch:
            wire = p.wire
            if len(wire.get("body") or b"") <= quick and "headers" not in wire:
                fits.append(p)
                continue
            error = refusal(wire, limits, self.nodes.endpoints[node])
            if error is None:
                fits.append(p)
            else:
                self.resolve(p, error=error)
        return fits
