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

A FAILED of that attempt from that lessee ends the task as a single node
ends a failed at-most-once task: dead-lettered with the handler's error
(:meth:`Placeholders.fail_placeholder`). The placeholder holds no payload,
so the dead letter has none: it is marked with the node its arguments were
lost with (``meta`` :data:`~miyaq.store.task.ARGS_LOST`; its body says it
too, :func:`lost_args_body`), shown in its header, and a dead-letter retry
refuses it (:mod:`miyaq.core.dead_letters`).
Its ``D`` event carries the dead letter's record (no body), so the other
holders' placeholders become the same dead letter
(:meth:`Placeholders.dead_without_args`), as does a SYNC or handoff of it.
Before 2026-12-08 the FAILED was refused: the failure was lost, and the task
stayed ``started-elsewhere`` everywhere until ``result_ttl``.

Bounded: at most :data:`MAX_PLACEHOLDER_LEASES` leases, the oldest dropped
first (a report on a dropped one is refused, as before), each dropped when
its placeholder is replaced. A lease keeps the task's interned
:class:`~miyaq.store.task.Spec` (its handler name, for the dead letter of
a FAILED; none for a webhook task, whose deliverer died with the runner):
shared with every task of its kind, so most leases add nothing. Memory
only: a restarted holder's placeholders (from its log) take no report. Part of the engine
(:class:`~miyaq.core.engine.Engine` inherits it); no I/O, none blocks.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, NamedTuple

import msgpack

from miyaq.config import NodeConfig
from miyaq.constants import MAX_QUEUES
from miyaq.core.transitions import Transitions
from miyaq.errors import InvalidField
from miyaq.logs import LogLimiter
from miyaq.protocol.failurespec import cut_error
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.store.task import ARGS_LOST, DEAD, DONE, SCHEDULED, Spec, Task, args_lost, handler_label

# The engine's logger (as miyaq.core.transitions): the dead letter of a
# FAILED a placeholder took is logged under the name the engine's are.
_log = LogLimiter(logging.getLogger("miyaq.core.engine"))

def lost_args_body(node: str) -> bytes:
    """The body of a dead letter whose arguments were lost with ``node``:
    msgpack ``{"args_lost": node}``, which is not ``[args, kwargs]``. Nothing
    of this build runs such a dead letter (a retry refuses it), but a build
    that does not know the mark (a downgrade, docs/cluster.md) would: its
    worker then refuses the body (``BadBody``) instead of running the
    handler with no arguments, as it would an empty body."""
    return msgpack.packb({ARGS_LOST: node})


#: How much of a dead letter's error message its log line shows (as the engine's).
DEAD_LINE_MESSAGE = 200

#: Placeholder leases kept at most: one per at-most-once task that another
#: holder runs now, as a placeholder's lease goes when the runner's finish
#: replaces it. 10,000 of them held 3.3 MB with lessees of 40 characters,
#: 8.0 MB with ``MAX_LESSEE`` (512), their tasks' specs shared (tracemalloc,
#: their ids and the dict included, 2026-12-08); a spec no live task shares
#: any more adds 861 bytes with a handler name of 256 characters and a queue
#: name of 128: 16.7 MB at worst, every lease of another kind of task.
MAX_PLACEHOLDER_LEASES = 10_000


class PlaceholderLease(NamedTuple):
    """Who another holder leased an at-most-once task's attempt to, and
    what a ``done`` tombstone needs of the dropped copy to be told to the
    other holders (and timed) like the runner's own finish."""

    attempt: int
    lessee: str
    holders: tuple[str, ...]
    created: float
    runner: str             # the node that sent the S event: the arguments are lost with it
    spec: Spec | None       # the task's kind (None for a webhook task): a FAILED's dead letter needs its name


class Placeholders(Transitions):
    """The placeholders' leases and the report a placeholder takes (a base of
    :class:`~miyaq.core.engine.Engine`)."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        # id -> the lease its started-elsewhere placeholder takes a report of (oldest first)
        self.placeholder_leases: OrderedDict[str, PlaceholderLease] = OrderedDict()

    def start_elsewhere(self, task: Task, attempt: int, lessee: str | None, now: float, runner: str) -> None:
        """Another holder, ``runner``, started attempt ``attempt`` of the
        at-most-once ``task``, leased to ``lessee`` (None: its node did not
        say): drop this copy for a ``started-elsewhere`` placeholder of that
        attempt, which keeps the lessee so it can take that worker's DONE
        (:meth:`complete_placeholder`) or FAILED (:meth:`fail_placeholder`)."""
        if attempt > task.attempt:
            task.attempt = attempt
        holders, created = task.holders, task.created
        spec = task.spec if task.url is None else None
        self._finish(task, STARTED_ELSEWHERE, None, now)
        if lessee is not None:
            leases = self.placeholder_leases
            leases.pop(task.id, None)
            leases[task.id] = PlaceholderLease(attempt, lessee, holders, created, runner, spec)
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

    def _lease_of_report(self, task_id: str, attempt: int, by: str | None) -> PlaceholderLease | None:
        """The lease of the ``started-elsewhere`` placeholder of ``task_id``
        if it was of ``attempt`` and to ``by``; None, counted in
        ``not_leased`` when a placeholder is there, for any other report."""
        stone = self.table.tombstone(task_id)
        if stone is None or stone.state != STARTED_ELSEWHERE:
            return None
        lease = self.placeholder_leases.get(task_id)
        if by is None or lease is None or lease.attempt != attempt or lease.lessee != by:
            self.not_leased += 1
            return None
        return lease

    def fail_placeholder(self, task_id: str, attempt: int, error: dict[str, Any], now: float,
                         by: str | None) -> bool:
        """FAILED of ``attempt`` from ``by`` for a task this node holds only
        a ``started-elsewhere`` placeholder of, taken as
        :meth:`complete_placeholder` takes a DONE (the runner's node died,
        and its worker reports here): an at-most-once task is never run
        again, so the failure dead-letters it, retryable or not, with the
        handler's ``error`` -- as a single node does. The placeholder has no
        payload: the dead letter has none, marked with the node its
        arguments were lost with (:data:`~miyaq.store.task.ARGS_LOST`), and
        is never retried (:meth:`dead_without_args`). False, changing
        nothing, for any other report (``not_leased``), for a webhook
        task's placeholder (its lease keeps no spec) or when no placeholder
        is."""
        lease = self._lease_of_report(task_id, attempt, by)
        if lease is None or lease.spec is None:
            return False
        stone = self.table.tombstone(task_id)
        assert stone is not None       # _lease_of_report found it
        task = Task.of(task_id, lease.spec, b"", lease.created, lease.created)     # its body: dead_without_args
        task.attempt = attempt
        task.key = stone.key
        task.holders = lease.holders
        task.meta = {ARGS_LOST: lease.runner}
        self.dead_without_args(task, cut_error(error), now)      # (raises, nothing changed, past MAX_QUEUES)
        self.outcomes[(task.queue, "failed")] += 1
        kept = task.error or {}
        _log.log(logging.WARNING, "dead letter", "task %s (%s) in queue %s dead-lettered after %d attempt(s), "
                 "reported by its worker after node %s running it was lost: %s: %s (its arguments were lost with "
                 "that node: `miyaq dead retry` refuses it)", task_id, handler_label(task), task.queue, attempt,
                 lease.runner, kept.get("type", "?"), str(kept.get("message", ""))[:DEAD_LINE_MESSAGE])
        return True

    def dead_without_args(self, task: Task, error: dict[str, Any] | None, now: float) -> bool:
        """Replace this node's ``started-elsewhere`` placeholder of
        ``task`` -- a dead letter without its arguments
        (:data:`~miyaq.store.task.ARGS_LOST`), detached -- by ``task``
        itself, dead with ``error`` (checked; cut to the room left in
        ``max_bytes`` as any failure kept: ``keep_error``): counted
        (``dead``), logged (an ``A`` record: the placeholder's ``F`` record
        before it is dropped by a replay), waiters answered, and the other
        holders told (its ``D`` event carries its record). For :meth:`fail_placeholder`, and for
        another holder's ``D`` event, SYNC or handoff of such a dead letter
        (:mod:`miyaq.cluster`). False, changing nothing, if this node holds
        no such placeholder (a copy of its own, or another end).

        Checked as a copy a REPLICATE brings is (:mod:`miyaq.cluster.install`):
        a record of a task that is not at-most-once, or of a new queue past
        ``MAX_QUEUES``, is refused (:class:`~miyaq.errors.InvalidField`,
        nothing changed); and the dead letter never takes a dedup key
        another task holds here. Its key is its placeholder's (the record's
        only for a placeholder that has none: one heard from a resync
        before its copy, a ghost), and none when another task holds that
        key. Before 2026-12-08 a ``D`` event's or SYNC's record was taken as
        it came: one naming another live task's key took that key here
        (its producer's resend answered with the dead letter, and no dedup
        once it was purged)."""
        task_id = task.id
        table = self.table
        stone = table.tombstone(task_id)
        if (stone is None or stone.state != STARTED_ELSEWHERE or args_lost(task) is None
                or task_id in table.live or task_id in table.dead):
            return False
        if not task.at_most_once or (task.queue not in self.counts and len(self.counts) >= MAX_QUEUES):
            raise InvalidField(f"a dead letter without its arguments must be of an at-most-once task, in a "
                               f"queue this node may hold: task {task_id}", field="record")
        key = stone.key if stone.key is not None else task.key
        task.key = key if key is None or table.keys.get(key, task_id) == task_id else None
        self.drop_placeholder_lease(task_id)
        table.drop_tombstone(task_id)
        task.state, task.error = SCHEDULED, None
        task.body = lost_args_body(str(args_lost(task)))
        table.add(task)
        self._count(task.queue)[SCHEDULED] += 1
        self.keep_error(task, error)
        self._kill(task)
        return task.state == DEAD

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
        lease = self._lease_of_report(task_id, attempt, by)
        if lease is None:
            return False
        stone = self.table.tombstone(task_id)
        assert stone is not None       # _lease_of_report found it
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
