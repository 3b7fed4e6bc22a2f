"""Which submits a holder's REPLICATE answer shows to be duplicates by key,
and what a member answers a copy that asks about its key.

The node coordinating a submit sends its copies to the task's holders; a
holder may answer that the copy is a duplicate of another task holding the
task's key (docs/cluster.md, "Dedup by key" and "Dedup by key while the ring
changes"). :func:`key_duplicates` reads such an answer for the coordinator
(:class:`~miyaq.cluster.replicated_intake.ReplicatedIntake`), which answers
those submits ``duplicate`` of that task. :func:`held_elsewhere` answers
a QUERY's key check (:class:`KeyChecks`): a copy of rank 0 on a node new
to its key asks the others whether one of them holds the key by another
task. No I/O here.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from miyaq.core.replicas import key_winner, lost_key_error
from miyaq.protocol.taskspec import MAX_KEY, is_id
from miyaq.store.table import TaskTable
from miyaq.runtime import monotonic
from miyaq.store.task import CANCELLED, RETRYING, SCHEDULED, Task

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

MAX_KEY_CHECKS = 100_000
"""Most copies marked to ask about their key (:class:`KeyChecks`); past it
the marks are forgotten, and those copies ask as any standby copy does."""


def key_duplicates(holder: str, sent: dict[str, list[str]], answer: dict[str, Any], epoch: int) -> dict[str, str]:
    """Task id -> the task holding its key, for the copies ``sent`` (id ->
    the holders the coordinator's record named, first holder first) that
    ``holder``'s ``answer`` shows to be duplicates; ``epoch``: the
    coordinator's ring epoch. Ids not sent, malformed entries, and a
    "winner" that is not an id or is the task itself are left out.

    ``duplicates`` (id -> task): ``holder``, the key's first holder by its
    own ring, refused the copy because that task holds the key there. Only
    the first holder's word counts (the holders may disagree while two
    submits of one key race; its order decides): the first by the
    coordinator's ring, or by the holder's own when that ring is newer (the
    answer's ``epoch``) -- a ring change under way, the coordinator's view
    lagging, and the first holder it names stopped.

    ``finished`` (id -> [state, result, error]): ``holder`` already ended
    the id as such a duplicate, its error naming the task under ``held_by``
    (:func:`~miyaq.core.replicas.key_winner`; a resend of a submit rejected
    meanwhile): believed whatever its rank, since the id will not run and
    that task is the one that does.

    Before 2026-12-06 a lagging coordinator took neither: the submit was
    rejected ``not_enough_replicas``, and the client's resend, meeting the
    id ended, was answered ``duplicate`` of its own id -- ``accepted`` to
    the client -- for a task that never runs."""
    found: dict[str, str] = {}
    newer = type(answer.get("epoch")) is int and answer["epoch"] > epoch
    duplicates = answer.get("duplicates")
    if isinstance(duplicates, dict):
        for task_id, winner in duplicates.items():
            names = sent.get(task_id)
            if names and (names[0] == holder or newer) and isinstance(winner, str):
                found[task_id] = winner
    finished = answer.get("finished")
    if isinstance(finished, dict):
        for task_id, outcome in finished.items():
            if task_id in sent and isinstance(outcome, list) and len(outcome) == 3:
                winner = key_winner(task_id, outcome[2])
                if winner is not None:
                    found[task_id] = winner
    return {t: w for t, w in found.items() if w != t and is_id(w)}


def held_elsewhere(table: TaskTable, task_id: str, key: Any, now: float, window: float,
                   asking: Collection[str] = ()) -> list[Any] | None:
    """The QUERY answer for ``task_id``, an id this node does not know,
    whose copy asks about its ``key`` (the QUERY's ``keys``): ``[cancelled,
    None, error]`` when another task holds that key here -- live, dead, or
    finished less than ``window`` (``dedup_window``) seconds before ``now``
    --, the error of type ``Duplicate`` naming that task under ``held_by``,
    as a copy ended by its key's first holder does. None when no other task
    holds it, or ``key`` is not a string of at most ``MAX_KEY`` characters
    (a peer's field: ignored). A task holding it that is itself a copy here
    still asking about its key (``asking``) counts only if its id sorts
    before ``task_id``: two such copies asking each other (two submits of
    the key through nodes whose rings disagree) must not both end. The asker ends its copy so; the key's tasks
    then run once (docs/cluster.md, "Dedup by key while the ring changes")."""
    if not isinstance(key, str) or len(key) > MAX_KEY:
        return None
    holder = table.holder_of_key(key, now, window)
    if holder is None or holder == task_id or (holder in asking and holder > task_id):
        return None
    return [CANCELLED, None, lost_key_error(key, holder, "on another holder, whose handoff had not reached its "
                                                          "first holder")]


class KeyChecks:
    """The copies of rank 0 that ask the other members about their key
    before they run (``ids``), as standby copies
    (:class:`~miyaq.cluster.standby.StandbyChecker` sends the key in their
    QUERY and reads the answers)."""

    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.ids: set[str] = set()

    def mark(self, task: Task) -> bool:
        """Make ``task``'s new copy -- keyed, rank 0 here, not a standby
        copy -- ask about its key at its eta, before it runs, if this node
        became a holder of the key by a ring change less than
        ``HANDOFF_SWEEP_AFTER_CHANGE`` ago, or since it started
        (:meth:`~miyaq.cluster.ring_follower.RingFollower.gained`). True if
        so. What the old holders know of the key (a task holding it, live
        or finished) comes in their handoff, which may not have come yet:
        before 2026-12-07 such a copy ran at once, and the key's task ran
        twice (a restarted first holder whose ring lagged, in a rolling
        restart). Call before the copy is stored: its timer is set from
        ``standby``."""
        if task.key is None or task.rank != 0 or task.standby or not self.role.others():
            return False     # (alone in its ring: nobody to ask, nobody to hand it the key)
        if not self.role.ring_follower.gained(task.key, task.replicas, monotonic()):
            return False
        if len(self.ids) >= MAX_KEY_CHECKS:
            self.ids.clear()
        task.standby = True
        self.ids.add(task.id)
        return True

    def yield_to(self, copy_id: str, winner: str, now: float) -> bool:
        """A copy of ``winner`` handed off from an older ring's holders (a task
        of the key accepted there and under way) came while ``copy_id``, a
        copy here that holds the same key, still asks about its key: that
        copy ends as a duplicate of ``winner`` (its other holders are told),
        and the key is free for the handed-off copy. True if it did; False
        if ``copy_id`` is no such copy (the key's first holder decided: the
        handed-off copy ends as the duplicate). Before 2026-12-07 the
        handed-off copy ended so here, and was cancelled on every holder,
        the one running it too."""
        role = self.role
        task = role.engine.table.live.get(copy_id)
        if (copy_id not in self.ids or task is None or task.key is None or task.state not in (SCHEDULED, RETRYING)
                or task.attempt):
            return False
        self.ids.discard(copy_id)
        error = lost_key_error(task.key, winner, "on the holders of an older ring, which handed it off here")
        with role.events.applying_remote():
            role.engine.finish_copy(copy_id, CANCELLED, None, error, now)
        role.events.forward_finished(copy_id, (CANCELLED, None, error), [h for h in task.holders if h != role.node_id])
        return True

    def lost_here(self, winner: str | None, task_id: str) -> bool:
        """True if ``winner``, the task another member says holds the key of
        ``task_id``, ended here as a duplicate of ``task_id``: this node,
        the key's first holder, stored ``task_id`` first and decided (two
        submits of one key at once: docs/cluster.md, "Dedup by key"); the
        other member had not heard so yet. That answer does not count."""
        if winner is None:
            return False
        stone = self.role.engine.table.tombstone(winner)
        return stone is not None and key_winner(winner, stone.error) == task_id
