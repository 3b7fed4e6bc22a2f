"""A resync's purge marks: served in a SYNC answer's pages, applied by the asker.

A node that purges dead letters remembers each purge
(:class:`~miyaq.store.purge_marks.PurgeMarks`). A resync's snapshot
(:mod:`miyaq.cluster.sync`) holds the ids of the ``RESYNC_PURGED`` newest
marks, sent ``[id, at]`` in the pages past the tasks (``purged``), as many as
fit a quarter of the message, at least one on a page that carries no
tombstone (:func:`page_marks`): the cursor past the tasks counts the
tombstones and the marks sent or skipped. The asker drops its dead copy of a
marked id made before that purge -- its ``P`` event was lost (a holder cut
off or down while another purged) -- and remembers the purge
(:func:`apply_purge_marks`). Before 2026-12-07 a resync did not repair a
lost purge: the holder kept its dead copy, listed it and could hand it back.
An asker of an older build ignores the field (its pages of marks only are
empty to it); a source of an older build sends none.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from miyaq.cluster.peer_clock import moved
from miyaq.errors import InvalidField
from miyaq.protocol.recordspec import check_purge_mark
from miyaq.store.purge_marks import PurgeMarks
from miyaq.store.task import DEAD

if TYPE_CHECKING:
    from miyaq.core.engine import Engine
    from miyaq.core.refusals import Refusals

# The asker's line keeps the logger it had when this lived in sync.py:
# operators and tests filter on it.
logger = logging.getLogger("miyaq.cluster.sync")


def page_marks(purged: PurgeMarks, marks: list[str], start: int | None, room: int,
               alone: bool) -> tuple[list[list[Any]], int]:
    """The purge marks of one SYNC page (``[id, at]``): from ``start``, the
    position in the snapshot's ``marks`` where the page before it stopped
    (None: no snapshot kept, so none), as many as fit ``room`` bytes -- at
    least one when ``alone`` (no tombstone on the page). A mark forgotten
    since the snapshot (its ttl, its id used again) is skipped. Returns them
    and the position the next page starts from."""
    if start is None:
        return [], len(marks)
    page: list[list[Any]] = []
    size = 0
    position = start
    while position < len(marks):
        task_id = marks[position]
        at = purged.get(task_id)
        if at is not None:
            weight = len(task_id) + 14      # ids are ASCII (check_id); the pair's headers and the float
            if size + weight > room and (page or not alone):
                break
            size += weight
            page.append([task_id, at])
        position += 1
    return page, position


def apply_purge_marks(engine: Engine, refusals: Refusals, src: str, marks: list[Any], shift: float,
                      now: float) -> None:
    """``src`` purged these dead letters (``[id, at]``, each checked
    first; a bad one is refused, counted and skipped): a dead copy here
    made before that purge is purged too, its purge remembered from
    ``at`` (on this node's clock: ``shift`` is ``src``'s clock against
    ours, ``now`` the latest it may be). Only a dead copy: a live one of that
    id, or a dead one made after the purge, is a task submitted again
    with the same id. A bad mark is counted in ``refusals``; a copy is
    purged by ``engine``. Under :meth:`~miyaq.cluster.holder_events.EventPublisher.applying_remote`."""
    dead = engine.table.dead
    purged = 0
    for mark in marks:
        try:
            task_id, at = check_purge_mark(mark)
        except InvalidField as err:
            refusals.refuse("sync", src, err)
            continue
        mine = dead.get(task_id)
        if mine is None or mine.state != DEAD:
            continue
        at = min(moved(at, shift), now)
        if mine.created <= at:
            purged += engine.dead_purge(None, [task_id], at=at)
    if purged:
        logger.info("resync from %s: purged %d dead letter(s) it had purged (their P events did not reach "
                    "this node)", src, purged)
