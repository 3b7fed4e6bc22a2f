"""This node's copies of replicated tasks: storing one another holder sent,
and answering the peer requests about them.

* REPLICATE (a submit's copy, or a handed-off task): :meth:`Copies.install`
  each record, answer with the ids stored -- once they are in this node's
  log, as on the node that took the submit -- and with the outcome of those
  this node already saw finish (the sender must not run them again);
* QUERY (a standby copy asking before it runs): how this node holds each id.

A copy is placed by this node's own view of the ring, which may be older or
newer than the sender's: a node that is not a holder there refuses it (the
sender keeps its copy and asks again later). Installing is idempotent and
never brings back a finished task.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from miyaq.cluster.holder_events import apply_early_start
from miyaq.cluster.replicated_intake import is_resent
from miyaq.cluster.standby import describe
from miyaq.constants import MAX_QUERY
from miyaq.runtime import wall
from miyaq.store.records import task_from_record
from miyaq.store.task import DEAD, SCHEDULED

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)



class Copies:
    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.engine = role.engine

    # -- peer requests --------------------------------------------------------------
    def on_replicate(self, sender: str, body: dict[str, Any]) -> dict[str, Any] | None:
        records = body.get("tasks")
        if not isinstance(records, list):
            return {"ids": []}
        now = wall()
        stored = [r["id"] for r in records if isinstance(r, dict) and self.install(r, now)]
        table = self.engine.table
        finished = {}
        for task_id in stored:
            stone = table.tombstone(task_id)
            if stone is not None and task_id not in table.live:
                finished[task_id] = [stone.state, stone.result, stone.error]
        answer: dict[str, Any] = {"ids": stored}
        if finished:
            answer["finished"] = finished     # the sender must not run these again
        # A copy counts as stored once it is in this node's log, as on the
        # node that took the submit: answer only after the write.
        reply = self.role.peer.later()
        self.role.barrier.after_written(lambda: reply(answer))
        return None

    def on_query(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        ids = body.get("ids")
        if not isinstance(ids, list):
            return {"states": {}}
        return {"states": {i: describe(self.role, i) for i in ids[:MAX_QUERY] if isinstance(i, str)}}

    # -- copies -----------------------------------------------------------------------
    def finish_known(self, finished: dict[str, Any]) -> None:
        """Another holder already finished these tasks: finish our copies."""
        now = wall()
        with self.role.events.applying_remote():
            for task_id, outcome in finished.items():
                if isinstance(outcome, list) and len(outcome) == 3 and task_id in self.engine.table.live:
                    self.engine.finish_copy(task_id, outcome[0], outcome[1], outcome[2], now)

    def install(self, record: dict[str, Any], now: float) -> bool:
        """Store (or update) this node's copy of a replicated or handed-off
        task. Idempotent; never resurrects a finished task."""
        role = self.role
        holders = record.get("holders")
        if not isinstance(holders, list) or not isinstance(record.get("id"), str):
            return False
        senders = list(holders)
        if role.view.members:
            # The sender's view of the ring may be older or newer than ours:
            # place the copy by our own view, and refuse it if we are not a
            # holder there (the sender keeps its copy and asks again later).
            key = record.get("key")
            replicas = int(record.get("replicas", len(holders)) or len(holders))
            holders = role.holders(key if key is not None else record["id"], replicas)
        if role.node_id not in holders:
            return False
        engine = self.engine
        table = engine.table
        existing = table.live.get(record["id"]) or table.dead.get(record["id"])
        if existing is not None:
            existing.holders = tuple(holders)
            existing.rank = holders.index(role.node_id)
            return True
        if table.tombstone(record["id"]) is not None:
            return True
        try:
            task = task_from_record(record)
        except (KeyError, TypeError):
            return False
        task.holders = tuple(holders)
        state = record.get("state", SCHEDULED)
        task.state = SCHEDULED
        task.rank = holders.index(role.node_id)
        if state == DEAD:
            task.state = DEAD
            engine.restore(task, now)
            return True
        if "state" in record:    # a handed-off copy of a task under way elsewhere
            task.standby = True
            base = max(task.eta, record.get("lease_end", 0.0), now)
            task.eta = base + role.offset_for(task, minimum=1)
        else:
            # Views that disagree (a ring change under way) can make two nodes
            # rank 0 of one task: a copy the sender placed differently waits an
            # offset (the views converge, handoff re-ranks it) and asks first.
            disagree = senders != holders
            task.standby = task.rank > 0 or is_resent(task) or disagree
            task.eta += role.offset_for(task, minimum=1 if disagree else 0)
            if task.standby:
                # A REPLICATE that arrives late (a link that stalled) must not make
                # its copy ask at once: the other holders may not have theirs yet.
                task.eta = max(task.eta, now + role.offset_for(task, minimum=1))
        try:
            status, _ = engine.submit(task, now)
        except Exception as exc:   # Busy, ShuttingDown, or a malformed record from a peer: not stored
            logger.warning("could not store a copy of %s: %s", task.id, exc)
            return False
        if status == "accepted":
            apply_early_start(role, task)    # its runner's STARTED event came first
        return status == "accepted" or record["id"] in table.live
