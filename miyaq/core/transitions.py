"""The engine's state and the moves every engine operation is built from.

:class:`Transitions` holds what the engine owns -- the task table, the
timers, the ready queues, the per-queue counts and outcome totals, the
listeners -- and the few moves that change a task's state: each keeps the
queue counts, the ready lanes' counts, the task's timer, its consumer's lease
list, the tombstones and the listeners in step. Only these moves write
``task.state`` (besides intake and ``forget``, which add and drop tasks).

The operations built on them are :class:`~miyaq.core.engine.Engine`'s
(:mod:`miyaq.core.engine`) and, for the copies other holders tell this node
about, :mod:`miyaq.core.replicas`. No I/O; every method runs in the node's
event loop and none blocks.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Callable

from miyaq.config import NodeConfig
from miyaq.constants import ERROR_BYTES_MIN
from miyaq.core.listener import EngineListener
from miyaq.logs import LogLimiter
from miyaq.protocol.failurespec import cut_error
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.store.ready import ReadyQueues
from miyaq.store.table import TaskTable, Tombstone
from miyaq.store.tally import Tally
from miyaq.store.task import ALL_STATES, DEAD, READY, Task
from miyaq.store.task_bytes import error_bytes, let_go
from miyaq.store.timers import TimerHeap

# The engine's logger: a dead-letter eviction is logged under the same name as
# the engine's other records.
logger = logging.getLogger("miyaq.core.engine")
_log = LogLimiter(logger)     # a full dead-letter queue evicts one a task: a few lines a minute


class Transitions:
    """The engine's state and its state moves (the base of
    :class:`~miyaq.core.engine.Engine`)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.table = TaskTable(config.max_tombstones, max(config.result_ttl, config.dedup_window),
                               config.max_dead, config.max_result_bytes)
        self.timers = TimerHeap()
        self._seq = itertools.count(1)           # submit order; the ready lanes draw from it too
        self.ready = ReadyQueues(self._seq)
        self.listeners: list[EngineListener] = []
        self.accepting = True
        self.admission: list[Callable[[], None]] = []    # each may raise to refuse a new task (a full disk)
        # Tallies, not Counters: a count moves with every state move (miyaq.store.tally).
        self.counts: dict[str, Tally[str]] = {}          # queue -> state -> live count
        self.outcomes: Tally[tuple[str, str]] = Tally()  # (queue, outcome) -> total
        self.not_leased = 0      # reports ignored: the task was not leased to whoever reported

    # -- moves -----------------------------------------------------------------
    def _count(self, queue: str) -> Tally[str]:
        counts = self.counts.get(queue)
        if counts is None:
            counts = self.counts[queue] = Tally({s: 0 for s in ALL_STATES})
        return counts

    def _move(self, task: Task, state: str) -> None:
        counts = self._count(task.queue)
        old = task.state
        counts[old] -= 1
        counts[state] += 1
        if old == READY:
            self.ready.lane(task.lane).count -= 1
        elif state == READY:
            self.ready.lane(task.lane).count += 1
        task.state = state

    @staticmethod
    def _detach(task: Task) -> None:
        """Take the task off its consumer's lease list (if it has one)."""
        if task.consumer is not None:
            task.consumer.running.pop(task.id, None)
            task.consumer = None

    def _make_ready(self, task: Task, now: float) -> None:
        self._move(task, READY)
        self.ready.push(task)
        if task.expires:
            self.timers.arm(task, task.expires, now)
        else:
            self.timers.cancel(task)
        for listener in self.listeners:
            listener.task_ready(task)

    def _schedule(self, task: Task, when: float, state: str, now: float | None = None) -> None:
        """Move ``task`` to ``state`` (scheduled or retrying), its timer armed
        for ``when`` or its expiry, whichever comes first. A standby copy
        wakes at its expiry only while no start of the task reached it
        (attempt 0: the ttl never interrupts a run, and the runner applies
        it) and the expiry is still ahead (``now``, or the timers' latest
        time): it then asks the other holders like at any wake, and is
        expired only if none runs the task. Once past, it wakes at ``when``
        (a holder that runs it answered: it waits for it). Before 2026-12-05
        a standby copy never woke for its expiry: a task whose every copy
        was a standby (handed off after its first holder was drained)
        stayed ``scheduled`` past its ttl until the copies' offsets ran out."""
        if task.state != state:     # a new task is counted scheduled already (Engine.submit)
            self._move(task, state)
        expires = task.expires
        if expires and task.standby and (task.attempt or expires <= (self.timers.now if now is None else now)):
            expires = 0.0
        self.timers.arm(task, min(when, expires) if expires else when, now)

    def _finish(self, task: Task, state: str, result: bytes | None, now: float) -> Tombstone:
        self.timers.cancel(task)
        self._detach(task)
        counts = self._count(task.queue)
        counts[task.state] -= 1
        if task.state == READY:
            self.ready.lane(task.lane).count -= 1
        task.state = state
        if state != STARTED_ELSEWHERE:
            # The placeholder of an at-most-once task another holder runs is
            # no outcome: the runner's end replaces it, and is counted then
            # (ReplicaCopies.finish_copy).
            self.outcomes[(task.queue, state)] += 1
        stone = self.table.bury(task, state, result, now)
        for listener in self.listeners:
            listener.task_finished(task, stone)
        # The payload is not needed any more, and a finished task may stay
        # referenced a while by stale lane and timer entries (dropped lazily):
        # it must not hold its body (nor its webhook headers) there, outside max_bytes.
        let_go(task)
        return stone

    def keep_error(self, task: Task, error: dict[str, Any] | None) -> None:
        """Give ``task`` its last failure (at most ``ERROR_BYTES``, as every
        error that enters). A held task's error counts in ``max_bytes``
        (:func:`~miyaq.store.task_bytes.held_bytes`): one that does not fit in the
        room left is cut to it, keeping at least ``ERROR_BYTES_MIN`` (its
        type and the start of its message) -- a failure is never refused.
        So the errors pass ``max_bytes`` by at most ``ERROR_BYTES_MIN`` a
        held task."""
        table = self.table
        if error and table.holds(task):
            room = self.config.max_bytes - table.payload_bytes + error_bytes(task.error)
            if error_bytes(error) > room:
                error = cut_error(dict(error), max(room, ERROR_BYTES_MIN))     # a copy: a record may hold it
        table.set_error(task, error)

    def _kill(self, task: Task) -> None:
        self.timers.cancel(task)
        self._detach(task)
        self._move(task, DEAD)
        self.outcomes[(task.queue, DEAD)] += 1
        evicted = self.table.kill(task)
        if evicted is not None:
            self._count(evicted.queue)[DEAD] -= 1
            _log.warning("dead letters full", "dead-letter queue full (%d): dropped oldest task %s",
                         self.config.max_dead, evicted.id)
        for listener in self.listeners:
            listener.task_dead(task)
            if evicted is not None:
                listener.dead_evicted(evicted)
        if evicted is not None:
            let_go(evicted)      # dropped for good: a stale timer entry must not hold it (see _finish)
