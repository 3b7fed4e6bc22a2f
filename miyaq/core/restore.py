"""What the log's replay (:mod:`miyaq.persistence.replay`) installs in
the engine at start (:class:`Restore`, a base of
:class:`~miyaq.core.engine.Engine`): each task in the state it was logged
in -- one that was running back ready, its attempt spent, or dead-lettered
as ``Lost`` if it may not run again --, and the tombstones of finished
tasks not yet too old. Built on the moves of
:mod:`miyaq.core.transitions`. No I/O.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from miyaq.core.transitions import Transitions
from miyaq.store.task import DEAD, DONE, RETRYING, RUNNING, SCHEDULED, Task
from miyaq.store.task_bytes import let_go

if TYPE_CHECKING:
    from miyaq.core.cancels_ahead import CancelsAhead

__all__ = ["Restore"]


class Restore(Transitions):
    """The engine's installing of what its log held. The engine sets
    ``cancels_ahead`` (a cancel kept ahead of its copy is restored with
    its tombstone)."""

    cancels_ahead: CancelsAhead

    def restore(self, task: Task, now: float) -> Task | None:
        """Install a task rebuilt from the log, in the state it was logged in.
        A task that was running comes back ready, its attempt spent (its
        worker is gone) -- or dead-lettered as ``Lost`` if it may not run
        again: at most once, or that was its last attempt (as a lost lease
        on a running node). Returns a dead letter dropped to make room
        (more of them in the log than ``max_dead``: the one that died
        first), for the caller to log and journal."""
        state = task.state
        if state == RUNNING and (task.at_most_once or task.attempt > task.max_retries):
            state = DEAD
            ran = "an at-most-once task" if task.at_most_once else "this task's last attempt"
            task.error = {"type": "Lost", "message": f"the node restarted while {ran} ran"}
        task.seq = next(self._seq)
        task.state = SCHEDULED
        self._count(task.queue)[SCHEDULED] += 1
        self.table.add(task)
        evicted = None
        if state == DEAD:
            self._move(task, DEAD)
            evicted = self.table.kill(task)
            if evicted is not None:      # more dead letters in the log than max_dead: the oldest go
                self._count(evicted.queue)[DEAD] -= 1
                let_go(evicted)
        elif state == RETRYING:
            self._schedule(task, task.eta, RETRYING, now)
        elif state == SCHEDULED and (task.due > now or task.standby):
            self._schedule(task, task.due, SCHEDULED, now)
        else:
            self._make_ready(task, now)
        return evicted

    def restore_tombstone(self, record: dict[str, Any], now: float) -> bool:
        """Install a finished task's tombstone unless it is already too old
        (a cancel kept ahead of its copy too: :mod:`miyaq.core.cancels_ahead`)."""
        finished = record.get("at", now)
        if finished + self.table.tombstone_ttl <= now:
            return False
        task = Task(record["id"], record.get("queue", "default"), None, b"", key=record.get("key"))
        task.attempt = record.get("attempt", 0)
        task.error = record.get("error")
        self.cancels_ahead.restoring(record)      # one kept ahead of its copy: counted apart, before bury
        stone = self.table.bury(task, record.get("state", DONE), record.get("result"), finished)
        if task.key is not None:
            self.table.key_finished(task.key, task.id)
        self.cancels_ahead.restored(record, stone)     # one kept ahead of its copy without a key
        return stone is not None
