"""What the other holders of a replicated task tell this node's copy.

A clustered node holds copies of the tasks it is a holder of
(:mod:`miyaq.cluster`); the cluster calls these engine methods when another
holder finishes, kills, revives or runs a task, when this copy waits as a
standby, and when a copy is handed off. They change only this node's copy:
nothing here sends anything, and a copy's listeners hear of the change like
any other (``forget`` has its own ``task_forgotten``).

Part of the engine (:class:`~miyaq.core.engine.Engine` inherits them); built
on the moves of :mod:`miyaq.core.transitions`. No I/O; none blocks.
"""
from __future__ import annotations

from typing import Any

from miyaq.core.transitions import Transitions
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.store.task import DEAD, READY, RETRYING, RUNNING, SCHEDULED, Task, count_revival


#: The error ``type`` of a copy ended because another task holds its key
#: (its key's first holder took that one first: miyaq.cluster.copies).
DUPLICATE_ERROR = "Duplicate"


class ReplicaCopies(Transitions):
    """The engine's operations on the copies of replicated tasks."""

    def defer(self, task: Task, when: float, state: str | None = None) -> None:
        """(Re-)arm a standby copy's timer; it stays waiting until ``when``."""
        if task.state == RUNNING or task.state not in (SCHEDULED, READY, RETRYING):
            return
        target = state or (SCHEDULED if task.state == READY else task.state)
        self._schedule(task, when, target)

    def take_over(self, task: Task, now: float) -> None:
        """A standby copy found no earlier holder running it: run it here."""
        task.standby = False
        if task.state in (SCHEDULED, RETRYING):
            self._make_ready(task, now)

    def finish_copy(self, task_id: str, state: str, result: bytes | None, error: dict[str, Any] | None,
                    now: float, key: str | None = None) -> Task | None:
        """Another holder finished the task: finish this copy the same way.
        An unknown id still gets a tombstone, so a late copy cannot come back."""
        task = self.table.live.get(task_id) or self.table.dead.get(task_id)
        if task is None:
            stone = self.table.tombstone(task_id)
            # A copy dropped as "started elsewhere" (at most once) takes the
            # outcome when it comes: it is what the task's status should say,
            # and it is counted here as every holder counts a task's end (the
            # placeholder was not: see _finish). A ghost of an unknown id is not.
            replaces = stone is not None and stone.state == STARTED_ELSEWHERE and state != STARTED_ELSEWHERE
            if stone is None or replaces:
                ghost = Task(task_id, stone.queue if stone is not None else "default", None, b"",
                             key=key if key is not None or stone is None else stone.key)
                ghost.error = error
                self.table.bury(ghost, state, result, now)
                if replaces:
                    self._count(ghost.queue)      # a queue pruned meanwhile is known again, prunable again
                    self.outcomes[(ghost.queue, state)] += 1
                if key is not None:
                    self.table.key_finished(key, task_id)
            return None
        consumer = task.consumer
        if error is not None:
            task.error = error
        self._finish(task, state, result, now)   # dead tasks too: bury() takes them off the dead list
        if consumer is not None:
            consumer.abort([task.id])
        if task.key is not None and isinstance(error, dict) and error.get("type") == DUPLICATE_ERROR:
            # Ended because another task holds its key (cluster.copies): it
            # must not hold that key here for the dedup window.
            self.table.release_key(task.key, task.id)
        return task

    def kill_copy(self, task: Task, error: dict[str, Any] | None) -> None:
        if task.state == DEAD:
            return
        task.error = error
        self._kill(task)

    def forget(self, task: Task) -> None:
        """Drop a copy this node no longer holds (handed off): no tombstone."""
        self.timers.cancel(task)
        counts = self._count(task.queue)
        counts[task.state] -= 1
        if task.state == READY:
            self.ready.lane(task.lane).count -= 1
        self._detach(task)
        task.state = "moved"
        self.table.remove(task)
        if task.key is not None and self.table.keys.get(task.key) == task.id:
            del self.table.keys[task.key]
        for listener in self.listeners:
            listener.task_forgotten(task)
        task.body = b""     # handed off: a stale timer or lane entry must not hold it (see _finish)

    def revive_copy(self, task_id: str, when: float, revived: int | None = None) -> Task | None:
        """Another holder revived a dead task: this copy comes back as a
        standby waiting until ``when`` (only the reviving holder runs it),
        its revivals counted (:func:`~miyaq.store.task.revivals`) -- up to
        ``revived``, the other holder's count, when known -- and written to
        the log like a retry here (before 2026-12-05 it was not: a restart
        brought the copy back dead)."""
        task = self.table.revive(task_id)
        if task is None:
            return None
        task.attempt = 0
        task.standby = True
        count_revival(task, revived)
        self._move(task, SCHEDULED)
        self.timers.arm(task, when)
        for listener in self.listeners:
            listener.task_revived(task)
        return task
