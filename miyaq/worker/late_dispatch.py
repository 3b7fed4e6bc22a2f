"""The DISPATCHes a link reads late, for a worker's link to one node
(:class:`~miyaq.worker.link.NodeLink`): which of their tasks run and which
are given back.

A DISPATCH the node sent before a silence longer than it waits for a worker
(``heartbeat × liveness``), that reached this worker only after it (the
link's reader tells it by the node's ``sent`` stamp: :mod:`.transit`), may
be stale: the node may have taken this worker for lost meanwhile and
leased its tasks again, here or on another node (a network cut that held
the message in a TCP buffer: a chaos run, 2026-12-07, ran 27 tasks twice
so). Its tasks are given back unstarted (RETURN): a node that still leases
them to this worker leases them again, one that dropped it answers
RECONNECT, and it registers again. Malformed ids are left out; the node's
lease of those runs out.

A task the link gave back as late since the node's last WELCOME, sent
again, runs: the node kept this worker (no RECONNECT, no WELCOME since), so
its lease is this worker's. A DISPATCH that takes longer than the node's
patience to cross a slow link (a 1 MiB task under 2.8 Mbit/s at the default
heartbeat) comes after such a silence each time -- the node's heartbeats
wait behind it -- and was given back for ever (review28). Only the attempt
given back counts (a RETURN spends none): a later attempt of the task -- it
failed since, here or elsewhere -- is late like any other; until 2026-12-07
(review29) the id alone was remembered, and any later attempt ran however
late.
"""
from __future__ import annotations

from typing import Any

from .config import MAX_LATE_IDS


class LateDispatches:
    """One link's book of the tasks it gave back as late (see the module's docstring)."""

    def __init__(self) -> None:
        # The ids given back as late since the node last welcomed this worker, each with the attempt given back
        # (oldest first; at most MAX_LATE_IDS).
        self.ids: dict[str, int | None] = {}
        self.given_back = 0     # tasks given back because their DISPATCH came so late

    def sort(self, deliveries: list[Any]) -> tuple[list[Any], list[Any]]:
        """The deliveries of a late DISPATCH: (those to run -- given back as
        late before, the same attempt: :meth:`ran` once accepted --, those
        to give back: :meth:`gave_back`)."""
        again: list[Any] = []
        late: list[Any] = []
        for d in deliveries:
            known = (isinstance(d, list) and d and isinstance(d[0], str) and d[0] in self.ids
                     and _attempt(d) == self.ids[d[0]])
            (again if known else late).append(d)
        return again, late

    def ran(self, again: list[Any]) -> None:
        """The deliveries :meth:`sort` let run were accepted: forgotten."""
        for d in again:
            self.ids.pop(d[0], None)

    def gave_back(self, deliveries: list[Any], ids: list[str]) -> None:
        """``ids``, those of ``deliveries`` (late: :meth:`sort`) a RETURN may
        name (:func:`~miyaq.worker.jobs.returnable_ids`), are given back:
        counted, and remembered with their attempts."""
        self.given_back += len(ids)
        if ids:
            attempts = {d[0]: _attempt(d) for d in deliveries if isinstance(d, list) and d and isinstance(d[0], str)}
            for task_id in ids:
                self.ids.pop(task_id, None)
                self.ids[task_id] = attempts[task_id]
            while len(self.ids) > MAX_LATE_IDS:
                del self.ids[next(iter(self.ids))]

    def welcomed(self) -> None:
        """The node welcomed this worker: it dropped it (RECONNECT) or is
        another, so the leases of the tasks given back are gone."""
        self.ids.clear()


def _attempt(delivery: list[Any]) -> int | None:
    """A delivery's attempt (its fifth element) if an int, else None."""
    attempt = delivery[4] if len(delivery) > 4 else None
    return attempt if type(attempt) is int else None
