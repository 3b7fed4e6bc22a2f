"""What the engine tells the rest of the node about task state changes.

Every hook is a documented no-op; a listener overrides the ones it needs.
Hooks run inline in the engine's greenlet and must not block. The
dispatcher, result waiters, metrics, the append-only log and replication
are all listeners, so the engine knows none of them.
"""
from __future__ import annotations

from typing import Any

from miyaq.store.table import Tombstone
from miyaq.store.task import Task


class EngineListener:
    def task_accepted(self, task: Task) -> None:
        """A new task is stored (scheduled or ready)."""

    def task_ready(self, task: Task) -> None:
        """A task entered its ready queue."""

    def task_started(self, task: Task) -> None:
        """A task was leased to a consumer; ``task.lease_end`` is set."""

    def task_touched(self, task: Task) -> None:
        """A running task's lease was extended."""

    def task_retrying(self, task: Task, reason: str) -> None:
        """A task failed or was lost and waits for its next attempt."""

    def task_given_back(self, task: Task) -> None:
        """A consumer gave back, unstarted, the attempt it was leased
        (:meth:`~miyaq.core.engine.Engine.release`): the task is ready
        again, its attempt one less (``task_ready`` came first)."""

    def task_dead(self, task: Task) -> None:
        """A task moved to the dead-letter queue."""

    def task_finished(self, task: Task, stone: Tombstone) -> None:
        """A task ended: done, cancelled or expired (``stone.state``)."""

    def tombstone_kept(self, stone: Tombstone, takes_key: bool) -> None:
        """A tombstone was made, or took a key, for a task this node holds no
        copy of: a cancel kept ahead of its copy (:mod:`miyaq.core.cancels_ahead`).
        ``takes_key``: it has no key and may take its copy's later."""

    def task_revived(self, task: Task) -> None:
        """A dead task was put back in its queue."""

    def copy_retrying(self, task: Task) -> None:
        """Another holder's retry or put-back of the task was applied to
        this standby copy (:meth:`~miyaq.core.replicas.ReplicaCopies.retry_copy`:
        its attempt, error and, retrying, ``eta`` changed), or a resync
        taught it a later attempt (:meth:`~miyaq.core.replicas.ReplicaCopies.adopt_attempt`).
        Not a retry here: no attempt ran or failed on this node."""

    def task_purged(self, task: Task) -> None:
        """A dead task was dropped for good."""

    def dead_evicted(self, task: Task) -> None:
        """The dead-letter queue was full: its oldest task was dropped to make
        room (this node's own bound: other holders keep theirs)."""

    def task_forgotten(self, task: Task) -> None:
        """This node dropped its copy: the task was handed to other holders."""

    def task_due_elsewhere(self, task: Task) -> None:
        """A replica's timer fired (rank > 0): the cluster decides whether it runs."""

    def duplicate_run(self, task: Task, info: dict[str, Any]) -> None:
        """Evidence that a task ran more than once (counted, never silent)."""

    def queue_forgotten(self, queue: str) -> None:
        """``queue`` holds nothing any more and its counters were dropped (a
        node that saw many queues keeps only those in use): drop what is
        kept per queue."""
