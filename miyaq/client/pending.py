"""One submit between ``submit()`` and its acknowledgement
(:class:`Pending`), and the one error its caller sees when its deadline
passed (:func:`final_error`). Part of the client's sans-I/O core
(:mod:`miyaq.client.core`); the submit pipeline (:mod:`~.submits`) keeps
them."""
from __future__ import annotations

from typing import Any

from ..errors import Busy, MiyaqError, ShuttingDown, Timeout, Unavailable
from .resolver import Waiter
from .sizes import ENVELOPE


class Pending:
    """One submit between ``submit()`` and its acknowledgement. ``created`` and
    ``deadline`` are on the core's clock (monotonic seconds). ``size``: what
    it counts for in a batch and in the window's bytes (:func:`~.sizes.task_size`,
    taken once: the wire's ``body`` is not to change)."""

    __slots__ = ("wire", "waiter", "created", "deadline", "sent", "tries", "node", "next_try", "last_error",
                 "held_since", "joined", "in_capped", "size")

    def __init__(self, wire: dict[str, Any], waiter: Waiter, created: float, deadline: float) -> None:
        self.wire = wire
        self.waiter = waiter
        self.created = created
        self.deadline = deadline
        self.sent = 0.0
        self.tries = 0
        self.node = -1
        self.next_try = 0.0
        self.last_error: MiyaqError | None = None
        self.held_since: float | None = None    # when it first waited for its node's limits
        self.joined: list[Pending] | None = None  # later copies of the same id in flight, oldest first
        self.in_capped = False     # it has an entry in its pipeline's CappedSubmits (live or not)
        self.size = len(wire.get("body") or b"") + ENVELOPE      # task_size(wire), without the call

    def join(self, other: "Pending") -> None:
        """``other``, a submit of the same id sent while this one is
        unacknowledged, is a copy in flight beside it (and so are those that
        had joined it). Each copy keeps its own node, deadline and waiter:
        an answer that the id is stored resolves them all; a refusal or a
        failure is the copy's own (:class:`~.submits.SubmitPipeline`)."""
        joined = self.joined
        if joined is None:
            joined = self.joined = []
        joined.append(other)
        if other.joined:
            joined.extend(other.joined)
            other.joined = None
        if other.wire.get("resent"):
            self.may_be_stored()          # a try of that id may be stored somewhere

    def copy_from(self, node: int) -> "Pending":
        """The copy of this id whose answer comes from ``node``: this one if
        it went there (or no other did), else the oldest joined one that did."""
        if self.node == node or not self.joined:
            return self
        for other in self.joined:
            if other.node == node:
                return other
        return self

    def may_be_stored(self) -> None:
        """A try may have been stored somewhere: its acknowledgement never
        came, its connection closed, or a node refused it after copies were
        made (:data:`~.submits.NOTHING_STORED` says which refusals are not). Every
        later try is marked ``resent``: in a cluster each copy of a resent
        task asks the other holders before it runs."""
        self.wire["resent"] = True


def final_error(error: MiyaqError, p: Pending) -> MiyaqError:
    """The one error a caller sees when a submit's deadline passed."""
    task_id = p.wire.get("id")
    if error.code == Busy.code:   # full; a reason says of what (storage: unable to write its log; bytes, results)
        why = error.message if error.details.get("reason") else f"every node tried was full (the last: {error.message})"
        return Busy(f"task {task_id} not accepted before its deadline: {why}", **error.details)
    if error.code == ShuttingDown.code:
        return Unavailable(f"task {task_id} not accepted before its deadline: the nodes are shutting down")
    if isinstance(error, Timeout):
        return Timeout(f"task {task_id} not acknowledged before its deadline ({p.tries} tries)")
    return Unavailable(f"task {task_id} not accepted before its deadline: {error.message}")
