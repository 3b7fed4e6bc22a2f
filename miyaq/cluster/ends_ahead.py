"""Ends heard ahead of their copy: a tombstone made on a peer's word for a
task this node has no trace of (no live or dead copy, no tombstone).

Another holder's ``F`` event may reach a holder before the task's copy
does (the REPLICATE still on its way), and a handoff or a resync brings the outcomes of tasks that
ended before this node held them (:mod:`miyaq.cluster.outcome_handoff`).
Each leaves a tombstone here, so a late copy is not stored and status,
result and dedup answer here too. Such tombstones are counted apart from
``max_tombstones`` (:attr:`TaskTable.ends_ahead
<miyaq.store.table.TaskTable.ends_ahead>`, at most ``max_ends_ahead``: as
many as ``max_tombstones``), so they never push a finished task's tombstone
out. Before 2026-12-06 they shared that bound: a peer (without
``--secure``, anyone who claims to be a member; with it, a buggy member)
that sent ``F`` events, REPLICATE ``stones`` or a SYNC answer's stones of
ids nobody had pushed every finished task's tombstone out -- its result,
its key, and a second submit of that key ran it again (200 of them with
``max_tombstones`` 50: 40 of 40 finished tasks' tombstones lost on each
path).

One leaves the count when the task's copy comes (:meth:`Copies.on_replicate
<miyaq.cluster.copies.Copies.on_replicate>`: the tombstone is then a
finished task's this node holds, as when the copy comes first), when it
ages out, or when finished tasks push it out as the oldest of all. Past
the bound, one more is refused: nothing is kept, and the copy, if it
comes, is stored as if the end had not been heard -- a standby copy asks
the task's holders before it runs, a first holder's runs it: a second
run, at worst, never a finished task's tombstone lost. Refusals are counted (``TaskTable.ends_ahead_refused``,
STATUS ``tombstones_apart``) and logged at most once a minute, with the
count. One whose result and error would take the results the node keeps
(``result_bytes``) past ``max_result_bytes`` is refused too: past twice
that the table forgets the oldest tombstones of all, finished tasks'
too, and a flood of ends carrying results (each up to ``max_payload``)
reaches that long before ``max_ends_ahead`` (before 2026-12-06, 200
ends of 10,000 bytes with ``max_result_bytes`` 100,000 pushed out 40 of
40 finished tasks' tombstones in one engine). A compaction's snapshot marks their ``F`` records ``"end_ahead":
true`` (:data:`miyaq.core.cancels_ahead.END_AHEAD`) so a replay counts
them apart again; outside a compaction they are not written to the log.

Its own bound, not the cancels kept ahead's: a flood of one kind must not
refuse the other (a refused cancel ahead is answered ``unconfirmed`` to a
caller), and the two leave differently (a cancel ahead stays when its copy
comes). As many as ``max_tombstones``, not capped at 20,000: a node that
joins a busy cluster is handed the outcomes of most of its finished tasks,
up to ``max_tombstones``, and none of them ever sees a copy.
"""
from __future__ import annotations

import logging
from typing import Any

from miyaq.core.engine import Engine
from miyaq.logs import LogLimiter
from miyaq.store.table import stone_bytes

logger = logging.getLogger(__name__)
_log = LogLimiter(logger, burst=1, per=60.0)    # a flood of refusals: one line a minute, with the count


def finish_unknown(engine: Engine, task_id: str, state: str, result: bytes | None,
                   error: dict[str, Any] | None, now: float, key: str | None = None) -> bool:
    """Keep a peer's end of ``task_id`` -- checked by the caller, for a task
    this node has no trace of (no live or dead copy, no tombstone) -- as a
    tombstone counted apart (module doc), through
    :meth:`Engine.finish_copy <miyaq.core.replicas.ReplicaCopies.finish_copy>`.
    Returns False, nothing kept, when the table holds ``max_ends_ahead``
    of them already, or when the end's result and error would take the
    table's ``result_bytes`` past ``max_result_bytes`` (counted, logged
    at a bounded rate)."""
    table = engine.table
    size = stone_bytes(result, error) if result or error else 0
    ceiling = table.result_ceiling      # twice max_result_bytes: past it the oldest of all are dropped
    if len(table.ends_ahead) >= table.max_ends_ahead or (
            size and ceiling is not None and table.result_bytes + size > ceiling // 2):
        table.ends_ahead_refused += 1
        _log.warning("full", "%d end(s) of tasks this node has no trace of, heard from peers, refused so far: "
                     "%d are kept (at most max_tombstones, and none that would take the results kept, "
                     "%d bytes, past max_result_bytes); their copies, if they come, are stored. Right after "
                     "this node joined the ring (a handoff's share, docs/operations.md), or a peer that reports "
                     "tasks that never come here?", table.ends_ahead_refused, len(table.ends_ahead),
                     table.result_bytes)
        return False
    table.hold_end_ahead(task_id)       # first: its tombstone does not push a finished task's out
    engine.finish_copy(task_id, state, result, error, now, key=key)
    return True

