"""Which submits a holder's REPLICATE answer shows to be duplicates by key.

The node coordinating a submit sends its copies to the task's holders; a
holder may answer that the copy is a duplicate of another task holding the
task's key (docs/cluster.md, "Dedup by key" and "Dedup by key while the ring
changes"). :func:`key_duplicates` reads such an answer for the coordinator
(:class:`~miyaq.cluster.replicated_intake.ReplicatedIntake`), which answers
those submits ``duplicate`` of that task. No I/O; nothing here changes state.
"""
from __future__ import annotations

from typing import Any

from miyaq.core.replicas import key_winner
from miyaq.protocol.taskspec import is_id


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
