"""Resync over the peer link: the snapshot half of the Clone pattern.

When a replication stream from node S shows a gap, goes silent, or comes
from a new incarnation of S, this node asks S for the state of every task
they both hold (SYNC, in chunks of ``RESYNC_CHUNK`` with a cursor) plus S's newest
tombstones, and reconciles its copies: tasks it lacks are installed, copies
S runs are pushed out past S's lease, and tasks S finished or dead-lettered
are finished or dead-lettered here.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from miyaq.cluster.peer import SYNC
from miyaq.constants import RESYNC_CHUNK, RESYNC_STONES, RESYNC_TIMEOUT
from miyaq.runtime import wall
from miyaq.store.records import transfer_record
from miyaq.store.task import DEAD, RUNNING

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)



class Resync:
    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.completed = 0

    def start(self, src: str) -> None:
        self._ask(src, 0)

    def _ask(self, src: str, cursor: int) -> None:
        self.role.peer.request(src, SYNC, {"cursor": cursor}, RESYNC_TIMEOUT,
                               lambda answer: self._apply(src, answer))

    def _holds(self, task_id: str, key: Any) -> bool:
        routing_key = key if isinstance(key, str) else task_id
        return self.role.node_id in self.role.holders(routing_key, self.role.config.replicas)

    def serve(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        cursor = body.get("cursor")
        if not isinstance(cursor, int) or cursor < 0:
            cursor = 0
        table = self.role.engine.table
        shared = [t for t in list(table.live.values()) + list(table.dead.values()) if sender in t.holders]
        chunk = shared[cursor:cursor + RESYNC_CHUNK]
        answer: dict[str, Any] = {"tasks": [transfer_record(t) for t in chunk],
                                  "next": cursor + RESYNC_CHUNK if cursor + RESYNC_CHUNK < len(shared) else None}
        if cursor == 0:
            stones = list(table.tombstones.values())[-RESYNC_STONES:]
            answer["stones"] = [[s.id, s.state, s.result, s.error, s.key] for s in stones]
        return answer

    def _apply(self, src: str, answer: dict[str, Any] | None) -> None:
        role = self.role
        if answer is None:
            role.subscriber.resync_done(src)    # asked again when the stream stays suspect
            return
        engine = role.engine
        table = engine.table
        now = wall()
        with role.events.applying_remote():
            for stone in answer.get("stones") or ():
                if not (isinstance(stone, list) and len(stone) >= 4 and isinstance(stone[0], str)):
                    continue
                if stone[0] in table.live or stone[0] in table.dead:
                    engine.finish_copy(stone[0], stone[1], stone[2], stone[3], now)
                elif table.tombstone(stone[0]) is None and self._holds(stone[0], stone[4] if len(stone) > 4 else None):
                    # We should hold it but lost it (e.g. restarted with an empty
                    # data dir): keep its outcome, so status, result and dedup by
                    # id and key still answer and a resubmit does not run it again.
                    key = stone[4] if len(stone) > 4 and isinstance(stone[4], str) else None
                    engine.finish_copy(stone[0], stone[1], stone[2], stone[3], now, key=key)
            for record in answer.get("tasks") or ():
                if not isinstance(record, dict):
                    continue
                record_id = record.get("id")
                if not isinstance(record_id, str):
                    continue
                mine = table.live.get(record_id) or table.dead.get(record_id)
                if mine is None:
                    role.install(record, now)
                elif record.get("state") == DEAD and mine.state != DEAD:
                    engine.kill_copy(mine, record.get("error"))
                elif record.get("state") == RUNNING and mine.standby and mine.state != RUNNING:
                    engine.defer(mine, record.get("lease_end", now) + role.offset_for(mine, minimum=1))
        if answer.get("next"):
            self._ask(src, answer["next"])
        else:
            self.completed += 1
            role.subscriber.resync_done(src)
