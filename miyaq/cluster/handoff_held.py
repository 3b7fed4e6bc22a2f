"""Copies an old holder keeps after every new holder confirmed them, because
a confirmation came from a ring newer than this node's view:
:class:`HeldCopies`, kept by :class:`~miyaq.cluster.handoff.Handoff`.

A node back in the ring may see a ring without itself (epoch 2) while the
others already have the one that includes it again (epoch 3). Its pass then
hands every copy to the others, which store it placed by *their* ring --
this node among the holders -- and answer "stored" with their epoch, 3. Had
it dropped its copies on that answer, by its own lagging view, the others
would find nothing to send it (their copies already list it) and its resync
would be refused while its view still lagged: the tasks would live on one
holder fewer than the ring says (docs/cluster.md, "Handoff"). So such a copy
stays until this node's view reaches the answer's epoch and the pass it runs
then decides (a holder there keeps it), or for ``HELD_COPY_TTL`` at most --
a view that never catches up. Past that time it is dropped, with a
warning, as it was before 2026-12-06. How many are held at once is bounded
by the node's ``max_tasks``: each is a copy its table holds (or one that
ended since, forgotten within ``HELD_COPY_TTL``), so the bound costs no
memory the table does not already bound. A fixed 100,000 dropped the copy
past it with no line in the log -- the very loss the hold prevents, for a
node holding more copies than that (audit review23: 250 of 300 dropped
with the bound patched to 50, 206 of them left without a copy on that
node for good). A hold refused past it still drops the copy, counted and
logged at a bounded rate.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from miyaq.logs import LogLimiter
from miyaq.runtime import monotonic
from miyaq.store.task import RUNNING, Task

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

__all__ = ["HELD_COPY_TTL", "MAX_HELD_COPIES", "HeldCopies", "HoldingCopies"]

logger = logging.getLogger("miyaq.cluster.handoff")     # the handoff's lines, on its logger

#: How long a copy waits for this node's view to reach the epoch of the
#: confirmation that would have dropped it (seconds, monotonic).
HELD_COPY_TTL = 60.0
#: The default bound on copies held at once (:class:`HeldCopies`' ``limit``):
#: a handoff gives its node's ``max_tasks``.
MAX_HELD_COPIES = 1_000_000
#: Holds refused past the bound are logged at most once a minute (with the count).
_refused_log = LogLimiter(logger, burst=1, per=60.0)


class HeldCopies:
    """Task ids kept past their confirmation, each with the newest epoch a
    confirmation of it named and when it stops waiting for it (monotonic).
    Bounded: ``limit`` ids (a handoff's: its node's ``max_tasks``), each
    ``HELD_COPY_TTL`` at most.
    ``len()`` is how many are held now (STATUS ``cluster.held_copies``);
    ``dropped`` counts, since start, the copies dropped past the bounds
    (STATUS ``cluster.held_dropped``): a hold refused for ``limit``
    (its caller drops the copy at once) and the copies dropped when their
    time ran out."""

    def __init__(self, limit: int = MAX_HELD_COPIES) -> None:
        if limit < 1:
            raise ValueError(f"a bound of held copies must be at least 1, not {limit}")
        self.limit = limit
        self._held: dict[str, tuple[int, float]] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._held

    def hold(self, task_id: str, epoch: int, now: float) -> bool:
        """Keep ``task_id``'s copy until this node's view reaches ``epoch``
        (or ``HELD_COPY_TTL`` from its first hold, ``now``: monotonic).
        False, and nothing kept, when ``limit`` are held already (counted in
        ``dropped`` and logged at a bounded rate: its caller drops the copy)."""
        held = self._held.get(task_id)
        if held is not None:
            self._held[task_id] = (max(held[0], epoch), held[1])
            return True
        if len(self._held) >= self.limit:
            self.dropped += 1       # its caller drops the copy
            _refused_log.warning("full", "%d copies are held for a ring newer than this node's view, the most "
                                 "(max_tasks): task %s's copy is dropped, and it may live on a holder fewer "
                                 "than the ring says (%d dropped so far); this node's view of the ring lags",
                                 len(self._held), task_id, self.dropped)
            return False
        self._held[task_id] = (epoch, now + HELD_COPY_TTL)
        return True

    def reached(self, epoch: int) -> list[str]:
        """Forget and return the ids whose epoch is ``epoch`` or older: a pass
        on a view of ``epoch`` placed them."""
        done = [task_id for task_id, (wanted, _) in self._held.items() if wanted <= epoch]
        for task_id in done:
            del self._held[task_id]
        return done

    def expired(self, now: float) -> list[str]:
        """Forget and return the ids that waited ``HELD_COPY_TTL`` (``now``:
        monotonic) without this node's view catching up."""
        done = []
        for task_id, (_, until) in self._held.items():     # in the order first held: of their deadlines
            if until > now:
                break
            done.append(task_id)
        for task_id in done:
            del self._held[task_id]
        return done

    def drop(self, task_id: str) -> None:
        """Stop holding ``task_id`` (it ended, or is handed off again)."""
        self._held.pop(task_id, None)


class HoldingCopies:
    """What a :class:`~miyaq.cluster.handoff.Handoff` (of which this is a
    base) decides about a copy every new holder confirmed: drop it, or hold
    it (:class:`HeldCopies`). The handoff sets the attributes below."""

    role: ClusterRole
    leaving: dict[str, set[str]]
    held: HeldCopies

    def _not_a_holder(self, task: Task, answer: dict[str, Any]) -> bool:
        """Every new holder confirmed ``task`` (the last with ``answer``):
        True if this node may drop its copy -- it does not run it, and is a
        holder neither by its copy's holders nor by its view of the ring now
        (a pass under way may not have placed the copy yet). A confirmation
        from a ring newer than this node's view keeps the copy
        (:class:`HeldCopies`) until a pass on that ring decides: there this
        node may be a holder again, which the confirming holder's copy
        already says, so no one would send it the copy back."""
        me = self.role.node_id
        if task.state == RUNNING or me in task.holders or me in self.role.holders_for(task):
            return False
        epoch = answer.get("epoch")
        if type(epoch) is int and epoch > self.role.view.epoch and self.held.hold(task.id, epoch, monotonic()):
            return False
        return True

    def _drop_held(self, ids: list[str], why: str | None) -> None:
        """The held copies of ``ids`` a pass on their ring placed (``why``
        None), or that waited too long (``why`` says so): each is dropped if
        this node is still no holder of it and it is not handed off again
        (then its new holders' confirmations decide)."""
        table = self.role.engine.table
        dropped = 0
        for task_id in ids:
            task = table.live.get(task_id) or table.dead.get(task_id)
            if (task is None or task.state == RUNNING or task_id in self.leaving
                    or self.role.node_id in task.holders):
                continue
            self.role.engine.forget(task)
            dropped += 1
        if dropped and why is not None:
            self.held.dropped += dropped
            logger.warning("handoff: dropped %d copy(ies) every new holder confirmed on a newer ring: %s",
                           dropped, why)
