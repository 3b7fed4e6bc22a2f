"""The dead letters' two operations (:class:`DeadLetters`, a base of
:class:`~miyaq.core.engine.Engine`): a dead task revived -- its attempts
counted from zero, ready at once -- or purged for good (``miyaq dead
retry``, ``miyaq dead purge``, and their HTTP routes). Both take a
``between`` the caller may yield to the hub in, so a whole dead-letter
queue does not hold the node. Built on the moves of
:mod:`miyaq.core.transitions`. No I/O.

A dead letter whose arguments were lost (an at-most-once task whose
runner's node died, its failure reported to another holder:
:data:`~miyaq.store.task.ARGS_LOST`) is never revived: a retry naming it
is refused whole, nothing changed (:func:`check_retryable`), and a retry
of a whole queue leaves it out (:meth:`DeadLetters.retryable_dead`). It
can be listed, looked at and purged like any other.
"""
from __future__ import annotations

from typing import Callable, Iterable

from miyaq.core.transitions import Transitions
from miyaq.errors import InvalidField
from miyaq.runtime import wall
from miyaq.store.table import TaskTable
from miyaq.store.task import DEAD, args_lost, count_revival
from miyaq.store.task_bytes import let_go

__all__ = ["DeadLetters", "check_retryable", "not_retryable"]


def not_retryable(task_id: str, node: str) -> str:
    """Why the dead letter ``task_id``, whose arguments were lost with
    ``node``, cannot be retried (a refusal's message, a log line's)."""
    return (f"task {task_id} cannot be retried: its arguments were lost with node {node} (an at-most-once "
            "task's arguments are kept only by the node that runs it; its worker reported the failure to "
            "another holder after that node was lost); purge it (`miyaq dead purge ID`)")


def check_retryable(table: TaskTable, ids: list[str]) -> None:
    """Raise :class:`~miyaq.errors.InvalidField` (``ids``) if any of
    ``ids`` is a dead letter whose arguments were lost: it can never run
    again. Nothing is changed."""
    dead = table.dead
    for task_id in ids:
        task = dead.get(task_id)
        node = args_lost(task) if task is not None else None
        if node is not None:
            raise InvalidField(not_retryable(task_id, node), field="ids")


class DeadLetters(Transitions):
    """The engine's operations on its dead letters."""

    def retryable_dead(self, queue: str | None) -> list[str]:
        """The ids of the dead letters of ``queue`` (None: all) a retry of
        the whole queue revives: all but those whose arguments were lost."""
        return [t.id for t in self.table.iter_dead(queue) if args_lost(t) is None]

    def dead_retry(self, ids: Iterable[str], now: float, between: Callable[[], None] = lambda: None) -> list[str]:
        """Revive the dead tasks of ``ids`` (others are skipped); the ids
        revived. ``between`` is called before each (it may yield to the hub:
        a task purged or revived meanwhile is skipped), so reviving a whole
        dead-letter queue -- 100,000 tasks, 0.4 s -- does not hold the node.
        Refused whole (:class:`~miyaq.errors.InvalidField`), nothing
        revived, if any of ``ids`` is a dead letter whose arguments were
        lost (:func:`check_retryable`); one that became such a dead letter
        meanwhile is skipped."""
        ids = list(ids)
        check_retryable(self.table, ids)
        revived = []
        for task_id in ids:
            between()
            dead = self.table.dead.get(task_id)
            if dead is None or args_lost(dead) is not None:
                continue
            task = self.table.revive(task_id)
            if task is None:
                continue
            task.attempt = 0
            count_revival(task)
            self._make_ready(task, now)
            for listener in self.listeners:
                listener.task_revived(task)
            revived.append(task_id)
        return revived

    def dead_purge(self, queue: str | None, ids: Iterable[str] | None = None,
                   between: Callable[[], None] = lambda: None, at: float | None = None) -> int:
        """Drop dead tasks for good (``ids``, or every one of ``queue``, or
        all); how many. ``between`` as for :meth:`dead_retry`; ``at``, when
        the purge was made (wall clock; now when None: another holder's, heard
        late, keeps its time -- miyaq.cluster.sync). Each id purged
        is remembered (:class:`~miyaq.store.purge_marks.PurgeMarks`,
        bounded as the tombstones are), so a stale dead copy of it -- a SYNC
        answer served before another holder heard of the purge, a handoff,
        a late REPLICATE -- is not stored again (docs/cluster.md, "Purged
        dead letters stay purged")."""
        victims = list(ids) if ids is not None else [t.id for t in self.table.iter_dead(queue)]
        n = 0
        for task_id in victims:
            between()
            task = self.table.purge(task_id)
            if task is None:
                continue
            self._count(task.queue)[DEAD] -= 1
            self.table.purged.mark(task_id, wall() if at is None else at)    # before the listeners: the log writes when
            for listener in self.listeners:
                listener.task_purged(task)
            # Gone for good: a stale lease-timer entry (dropped lazily) may
            # still refer to the task, and must not hold its payload there,
            # outside max_bytes, as a finished task's must not (_finish).
            let_go(task)
            n += 1
        return n
