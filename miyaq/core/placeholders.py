"""The ``started-elsewhere`` placeholder of an at-most-once task, and the
report of the worker another holder leased it to.

When another holder starts an at-most-once task, this node drops its copy
for a placeholder tombstone (state ``started-elsewhere``): it must never
run it. The runner's finish replaces the placeholder (its ``F`` event,
:meth:`~miyaq.core.replicas.ReplicaCopies.finish_copy`). But the runner's
node may die with the task running, and its worker then reports to another
holder (docs/cluster.md, "A task's life in a cluster", item 7): that holder
has only the placeholder. So the placeholder keeps who the ``S`` event
named as the attempt's lessee (:class:`PlaceholderLease`), and a DONE of
that attempt from that lessee replaces it with ``done`` and the result, as
the runner's finish would have, here and -- through the listeners, the
``F`` event -- on every other holder; a report from anyone else changes
nothing (``not_leased``). Before 2026-12-07 the placeholder took no report:
the result was lost, and the task stayed ``started-elsewhere`` on every
holder for its tombstone's life.

Bounded: at most :data:`MAX_PLACEHOLDER_LEASES` leases, the oldest dropped
first (a report on a dropped one is refused, as before), each dropped when
its placeholder is replaced. Memory only: a restarted holder's placeholders
(from its log) take no report. Part of the engine
(:class:`~miyaq.core.engine.Engine` inherits it); no I/O, none blocks.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from miyaq.config import NodeConfig
from miyaq.core.transitions import Transitions
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.store.task import DONE, Task

#: Placeholder leases kept at most: one per at-most-once task that another
#: holder runs now, as a placeholder's lease goes when the runner's finish
#: replaces it. Each is about 170 bytes (tracemalloc, 2026-12-07)
#: beside the lessee's name (at most ``MAX_LESSEE``, 512 characters): at
#: most about 7 MB in all, 2 MB with workers' usual names.
MAX_PLACEHOLDER_LEASES = 10_000


class PlaceholderLease(NamedTuple):
    """Who another holder leased an at-most-once task's attempt to, and
    what a ``done`` tombstone needs of the dropped copy to be told to the
    other holders (and timed) like the runner's own finish."""

    attempt: int
    lessee: str
    holders: tuple[str, ...]
    created: float


class Placeholders(Transitions):
    """The placeholders' leases and the report a placeholder takes (a base of
    :class:`~miyaq.core.engine.Engine`)."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        # id -> the lease its started-elsewhere placeholder takes a report of (oldest first)
        self.placeholder_leases: OrderedDict[str, PlaceholderLease] = OrderedDict()

    def start_elsewhere(self, task: Task, attempt: int, lessee: str | None, now: float) -> None:
        """Another holder started attempt ``attempt`` of the at-most-once
        ``task``, leased to ``lessee`` (None: its node did not say): drop
        this copy for a ``started-elsewhere`` placeholder of that attempt,
        which keeps the lessee so it can take that worker's DONE
        (:meth:`complete_placeholder`)."""
        if attempt > task.attempt:
            task.attempt = attempt
        holders, created = task.holders, task.created
        self._finish(task, STARTED_ELSEWHERE, None, now)
        if lessee is not None:
            leases = self.placeholder_leases
            leases.pop(task.id, None)
            leases[task.id] = PlaceholderLease(attempt, lessee, holders, created)
            while len(leases) > MAX_PLACEHOLDER_LEASES:
                leases.popitem(last=False)

    def lease_placeholder_again(self, task_id: str, attempt: int, lessee: str | None) -> None:
        """Another ``S`` event for an at-most-once task this node holds a
        placeholder of: its runner's worker gave the attempt back unstarted
        (``Engine.release``) and the runner leased it again, perhaps to
        another worker, under the same attempt number. The placeholder's
        lease takes the new lessee (None: its node did not say, and the
        lease is dropped), so it takes that worker's DONE if the runner then
        dies; before, it kept the first lessee and refused it. An event of
        an earlier attempt than the lease's changes nothing."""
        leases = self.placeholder_leases
        lease = leases.get(task_id)
        if lease is None or attempt < lease.attempt:
            return
        del leases[task_id]
        if lessee is not None:      # the newest lease last: the oldest are dropped first
            leases[task_id] = lease._replace(attempt=attempt, lessee=lessee)

    def drop_placeholder_lease(self, task_id: str) -> None:
        """The placeholder of ``task_id`` was replaced (the runner's finish)."""
        leases = self.placeholder_leases
        if leases:
            leases.pop(task_id, None)

    def complete_placeholder(self, task_id: str, attempt: int, result: bytes | None, now: float,
                             by: str | None) -> bool:
        """DONE of ``attempt`` from ``by`` for a task this node holds only a
        ``started-elsewhere`` placeholder of: taken if the ``S`` event named
        ``by`` the lessee of that attempt (the runner's node died, and its
        worker reports here): the placeholder becomes ``done`` with
        ``result``, counted as the runner's finish is on every holder, and
        the listeners hear it like any end (logged, waiters answered, the
        ``F`` event to the other holders). False, changing nothing, for any
        other report (counted in ``not_leased`` when a placeholder is
        there) or when no placeholder is."""
        stone = self.table.tombstone(task_id)
        if stone is None or stone.state != STARTED_ELSEWHERE:
            return False
        lease = self.placeholder_leases.get(task_id)
        if by is None or lease is None or lease.attempt != attempt or lease.lessee != by:
            self.not_leased += 1
            return False
        self.drop_placeholder_lease(task_id)
        task = Task(task_id, stone.queue, None, b"", key=stone.key, created=lease.created, at_most_once=True)
        task.attempt = attempt
        task.holders = lease.holders
        queue = task.queue
        self._count(queue)      # a queue pruned meanwhile is known again, prunable again
        self.outcomes[(queue, "completed")] += 1
        self.outcomes[(queue, DONE)] += 1
        done = self.table.bury(task, DONE, result, now)
        if stone.key is not None:
            self.table.key_finished(stone.key, task_id)
        for listener in self.listeners:
            listener.task_finished(task, done)
        return True
