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

import logging
from collections import OrderedDict
from typing import Any

from miyaq.config import NodeConfig
from miyaq.constants import MAX_QUEUES
from miyaq.core.placeholders import Placeholders
from miyaq.logs import LogLimiter
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.protocol.taskspec import is_id
from miyaq.store.task import DEAD, READY, RETRYING, RUNNING, SCHEDULED, Task, args_lost, count_revival
from miyaq.store.task_bytes import let_go


# The engine's logger (as miyaq.core.transitions): a take-over's dead letter is
# logged under the name the engine's are; a lost holder can dead-letter many
# copies at once: a few lines a minute name examples.
_log = LogLimiter(logging.getLogger("miyaq.core.engine"))

#: The error ``type`` of a copy ended because another task holds its key
#: (its key's first holder took that one first: miyaq.cluster.copies).
DUPLICATE_ERROR = "Duplicate"

#: The name, in such an error, of the task that holds the key (since
#: 2026-12-06): a resubmit of the ended id is answered ``duplicate`` of it.
HELD_BY = "held_by"

#: Ids of tasks this node heard the end of before it had their copy (their
#: tombstone is a ghost), kept so the copy, when it comes, is counted
#: (:meth:`ReplicaCopies.count_late_copy`): at most this many, the oldest
#: dropped first (a copy comes within seconds of its task's end, if at all).
MAX_UNCOUNTED = 10_000


def lost_key_error(key: str | None, holder: str, where: str = "which its first holder took first") -> dict[str, Any]:
    """The error of a copy ended because task ``holder`` holds its key
    ``key`` (type :data:`DUPLICATE_ERROR`, naming ``holder`` under
    :data:`HELD_BY`); ``where`` completes the message."""
    return {"type": DUPLICATE_ERROR, "message": f"its key {key!r} is held by task {holder}, {where}",
            "retry": False, HELD_BY: holder}


def key_winner(task_id: str, error: Any) -> str | None:
    """The task that holds the key of ``task_id``, a task ended because its
    key's first holder took that other task first (``error``: its end's
    error, type :data:`DUPLICATE_ERROR`, naming it under :data:`HELD_BY`);
    None for any other end, and for an error written before the name was
    (it says who only in its message). A submit of ``task_id`` again -- a
    client's resend -- is a duplicate of that task, not of the id that never
    ran."""
    if not isinstance(error, dict) or error.get("type") != DUPLICATE_ERROR:
        return None
    winner = error.get(HELD_BY)
    if not isinstance(winner, str) or winner == task_id or not is_id(winner):
        return None
    return winner


class ReplicaCopies(Placeholders):
    """The engine's operations on the copies of replicated tasks (an
    at-most-once task's placeholder: :class:`~miyaq.core.placeholders.Placeholders`)."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        # Ghost tombstones not counted yet (id -> None, oldest first): see
        # finish_copy and count_late_copy.
        self.uncounted: OrderedDict[str, None] = OrderedDict()

    def defer(self, task: Task, when: float, state: str | None = None) -> None:
        """(Re-)arm a standby copy's timer; it stays waiting until ``when``."""
        if task.state == RUNNING or task.state not in (SCHEDULED, READY, RETRYING):
            return
        target = state or (SCHEDULED if task.state == READY else task.state)
        self._schedule(task, when, target)

    def retry_copy(self, task: Task, attempt: int, error: dict[str, Any] | None, eta: float,
                   when: float) -> None:
        """Another holder retries the task (an ``R`` event): ``eta``, when its
        next attempt is due (0.0: put back, ready there at once). This copy
        takes its attempt and error and waits as a standby until ``when``;
        a retry also takes its ``eta``. Both are written to the log
        (:meth:`~miyaq.core.listener.EngineListener.copy_retrying`), so a
        restart brings the copy back retrying -- or, put back, ready, and
        a standby that asks first (the restart's ``ask_first``) --, its
        attempt and error kept (before 2026-12-07 it came back
        ``scheduled`` at attempt 0, without its error: review38; a put-back
        until review39). A running copy is left alone."""
        if task.state == RUNNING:
            return
        task.attempt = attempt
        self.keep_error(task, error)
        task.standby = True
        if task.state not in (SCHEDULED, READY, RETRYING):
            return      # dead here: the attempt and error only, as ever
        if eta:
            task.eta = eta
        self.defer(task, when, RETRYING if eta else SCHEDULED)
        for listener in self.listeners:
            listener.copy_retrying(task)

    def take_over(self, task: Task, now: float) -> bool:
        """A standby copy found no earlier holder running it: run it here --
        unless the attempt it heard started elsewhere (an ``S`` event, or a
        resync: :meth:`adopt_attempt`) may not run again: the last
        (``attempt > max_retries``), or any of an at-most-once task's. Its
        holder was lost while it ran, and the copy is dead-lettered ``Lost``
        (the ``D`` event tells the other holders), as a lost lease on the
        last attempt ends on a single node (``Engine.lose``) and a task that
        ran when its node restarted (:meth:`~miyaq.core.restore.Restore.restore`).
        Before 2026-12-07 it ran once more: ``max_retries + 2`` starts
        (review39). Returns whether the task runs here."""
        task.standby = False
        if task.state not in (SCHEDULED, RETRYING):
            return False
        if task.attempt > task.max_retries or (task.at_most_once and task.attempt > 0):
            ran = ("an at-most-once task" if task.at_most_once
                   else f"this task's last attempt ({task.attempt} of {task.max_retries + 1})")
            self.keep_error(task, {"type": "Lost", "message": f"the holder running {ran} was lost, "
                                   "and no other holder runs it"})
            self.outcomes[(task.queue, "lost")] += 1
            self._kill(task)
            _log.log(logging.WARNING, "dead letter", "task %s in queue %s dead-lettered: the holder running %s "
                     "was lost (`miyaq dead list`, `miyaq dead retry ID`)", task.id, task.queue, ran)
            return False
        self._make_ready(task, now)
        return True

    def adopt_attempt(self, task: Task, attempt: int, error: dict[str, Any] | None) -> None:
        """Another holder's copy, in a resync, says the task started
        ``attempt`` (greater than this copy's, both of the same revival):
        this live, not running copy takes it, and its error, and writes them
        to its log as an ``R`` record
        (:meth:`~miyaq.core.listener.EngineListener.copy_retrying`), so a
        take-over here counts from there, after a second restart too. An
        ``S`` event changes a copy's attempt in memory only (a log write per
        start per holder would cost the cluster's throughput): a copy
        restored from its log is back at its last logged attempt, and this
        is where it learns the rest (before 2026-12-07 it did not, and a
        take-over after the restart ran more than ``max_retries + 1``
        attempts: review39). Its state and timer are left as they are."""
        if task.state not in (SCHEDULED, READY, RETRYING) or attempt <= task.attempt:
            return
        task.attempt = attempt
        if error is not None:
            self.keep_error(task, error)
        for listener in self.listeners:
            listener.copy_retrying(task)

    def finish_copy(self, task_id: str, state: str, result: bytes | None, error: dict[str, Any] | None,
                    now: float, key: str | None = None) -> Task | None:
        """Another holder finished the task: finish this copy the same way.
        An unknown id still gets a tombstone (a ghost), so a late copy cannot
        come back. A ghost is not counted here -- the end does not say the
        task's queue -- but when its copy comes (:meth:`count_late_copy`)."""
        task = self.table.live.get(task_id) or self.table.dead.get(task_id)
        if task is None:
            stone = self.table.tombstone(task_id)
            # A copy dropped as "started elsewhere" (at most once) takes the
            # outcome when it comes: it is what the task's status should say,
            # and it is counted here as every holder counts a task's end (the
            # placeholder was not: see _finish) -- unless the placeholder is
            # itself a ghost, whose copy counts the task when it comes.
            replaces = stone is not None and stone.state == STARTED_ELSEWHERE and state != STARTED_ELSEWHERE
            if replaces:
                self.drop_placeholder_lease(task_id)
            if stone is None or replaces:
                ghost = Task(task_id, stone.queue if stone is not None else "default", None, b"",
                             key=key if key is not None or stone is None else stone.key)
                ghost.error = error
                if stone is not None:
                    ghost.attempt = stone.attempt     # the attempt that started elsewhere (S event)
                self.table.bury(ghost, state, result, now)
                if stone is None:
                    self._note_uncounted(task_id)
                elif task_id not in self.uncounted:
                    self._count(ghost.queue)      # a queue pruned meanwhile is known again, prunable again
                    self.outcomes[(ghost.queue, state)] += 1
                if key is not None:
                    self.table.key_finished(key, task_id)
            return None
        consumer = task.consumer
        if error is not None:
            self.keep_error(task, error)
        self._finish(task, state, result, now)   # dead tasks too: bury() takes them off the dead list
        if consumer is not None:
            consumer.abort([task.id])
        if task.key is not None and isinstance(error, dict) and error.get("type") == DUPLICATE_ERROR:
            # Ended because another task holds its key (cluster.copies): it
            # must not hold that key here for the dedup window.
            self.table.release_key(task.key, task.id)
        return task

    def _note_uncounted(self, task_id: str) -> None:
        uncounted = self.uncounted
        uncounted[task_id] = None
        while len(uncounted) > MAX_UNCOUNTED:
            uncounted.popitem(last=False)

    def count_late_copy(self, task: Task) -> bool:
        """``task``'s copy came to this node, a holder of it, after its end
        did (:meth:`finish_copy` left a ghost tombstone): the copy is not
        stored -- the task is over -- but it is counted now, once, as a copy
        stored and ended here is: ``submitted`` and the end's outcome (none
        for an at-most-once ``started-elsewhere`` placeholder, whose end is
        counted when it replaces it). The ghost takes the copy's queue (it
        had none). Returns whether it counted: False for any other tombstone
        (counted when its copy ended here, or restored), for a ghost
        forgotten past ``MAX_UNCOUNTED``, and for a new queue past
        ``MAX_QUEUES`` (as the copy would have been refused). Before
        2026-12-06 nothing counted such a task: a holder whose REPLICATE
        came after the runner's finish counted neither ``submitted`` nor
        ``done`` (80 to 96 of 100 tasks per holder on a dev cluster)."""
        if task.id not in self.uncounted:
            return False
        stone = self.table.tombstone(task.id)
        if stone is None or (task.queue not in self.counts and len(self.counts) >= MAX_QUEUES):
            return False
        del self.uncounted[task.id]
        queue = task.queue
        if stone.queue != queue:
            ghost = Task(task.id, queue, None, b"", key=stone.key)
            ghost.error, ghost.attempt = stone.error, stone.attempt
            self.table.bury(ghost, stone.state, stone.result, stone.finished)
        self._count(queue)      # a queue pruned meanwhile is known again, prunable again
        self.outcomes[(queue, "submitted")] += 1
        if stone.state != STARTED_ELSEWHERE:
            self.outcomes[(queue, stone.state)] += 1
        return True

    def kill_copy(self, task: Task, error: dict[str, Any] | None) -> None:
        if task.state == DEAD:
            return
        self.keep_error(task, error)
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
        let_go(task)     # handed off: a stale timer or lane entry must not hold it (see _finish)

    def revive_copy(self, task_id: str, when: float, revived: int | None = None) -> Task | None:
        """Another holder revived a dead task: this copy comes back as a
        standby waiting until ``when`` (only the reviving holder runs it),
        its revivals counted (:func:`~miyaq.store.task.revivals`) -- up to
        ``revived``, the other holder's count, when known -- and written to
        the log like a retry here (before 2026-12-05 it was not: a restart
        brought the copy back dead). A copy whose arguments were lost
        (:data:`~miyaq.store.task.ARGS_LOST`) is not revived: it stays dead
        here, never run with an empty payload -- the holder that revived
        it has them."""
        dead = self.table.dead.get(task_id)
        if dead is not None and args_lost(dead) is not None:
            _log.log(logging.WARNING, "not revived", "task %s revived by another holder stays dead here: %s",
                     task_id, "its arguments were lost with node " + str(args_lost(dead)))
            return None
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
