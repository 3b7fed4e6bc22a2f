"""Outcomes move with a ring change too (:class:`OutcomeHandoff`).

A task that finished before the ring change is a tombstone, not a copy,
and its new holders may never have heard of it -- one joining the ring, one
back after its session expired. After a ring change each old holder of a
tombstone sends it (REPLICATE ``stones``) to the task's new holders that
were not holders before, so that status, result and dedup still answer
when the old holders are gone (a chaos run wiped the one node that held
260 such outcomes). Sent after the handoff pass that follows the change
(:mod:`miyaq.cluster.handoff`), to each holder in chunks, and again up to
:data:`OUTCOME_ATTEMPTS` times in all to a holder that did not answer, at
the handoff's retries. A resync's tombstones (the source's newest
``RESYNC_STONES``) cover only the last seconds of a busy node.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable

from miyaq.cluster.peer_requests import REPLICATE
from miyaq.cluster.ring_view import RingView
from miyaq.cluster.sizes import EVENT_ALLOWANCE, outcome_size, peer_chunks
from miyaq.constants import HANDOFF_CHUNK, HANDOFF_CONFIRM_TIMEOUT
from miyaq.store.table import Tombstone

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger("miyaq.cluster.handoff")    # the handoff's lines: one logger to follow it

OUTCOME_ATTEMPTS = 3
"""Times a chunk of handed-off outcomes is sent to a holder that does not answer."""

StoneRow = list[Any]
"""A tombstone as it travels: ``[id, state, result, error, key]`` (the SYNC answer's form)."""


class OutcomeHandoff:
    """Sends tombstones to their new holders. ``slices`` cuts a list into
    the handoff's slices, yielding to the hub between them; ``on_unanswered``
    is told when a chunk went unanswered (the handoff then retries soon)."""

    def __init__(self, role: ClusterRole, slices: Callable[[list[Tombstone]], Iterator[list[Tombstone]]],
                 on_unanswered: Callable[[], None]) -> None:
        self.role = role
        self._slices = slices
        self._on_unanswered = on_unanswered
        # Chunks of outcomes a holder did not answer: (holder, stones, attempts made).
        self.unanswered: list[tuple[str, list[StoneRow], int]] = []

    def hand(self, before: RingView) -> int:
        """Send each tombstone this node held as a holder of ``before`` to
        the task's holders now that ``before`` did not have, a slice at a
        time (yielding between slices); returns how many tombstones were sent.
        Tombstones keep no replica count: the node's ``replicas`` is used."""
        role = self.role
        me = role.node_id
        replicas = role.config.replicas
        was = min(replicas, len(before.members))
        stones = list(role.engine.table.tombstones.snapshot())
        sent = 0
        for chunk in self._slices(stones):
            outbox: dict[str, list[StoneRow]] = {}
            for stone in chunk:
                routing_key = stone.key if stone.key is not None else stone.id
                old = before.holder_ids(routing_key, was)
                if me not in old:
                    continue
                targets = [h for h in role.holders(routing_key, replicas) if h not in old]
                if targets:
                    row = _stone_row(stone)
                    for h in targets:
                        outbox.setdefault(h, []).append(row)
                    sent += 1
            for holder, rows in outbox.items():
                self._send(holder, rows, 0)
        if sent:
            logger.info("handoff: sent the outcome of %d finished task(s) to their new holders", sent)
        return sent

    def resend(self) -> None:
        """Send again each unanswered chunk to its holder, if still a member."""
        unanswered, self.unanswered = self.unanswered, []
        for holder, rows, attempts in unanswered:
            if holder in self.role.view.members:
                self._send(holder, rows, attempts)

    def _send(self, holder: str, rows: list[StoneRow], attempts: int) -> None:
        for chunk in peer_chunks(rows, HANDOFF_CHUNK, self.role.config.max_message, _stone_size, EVENT_ALLOWANCE):
            self.role.peer.request(holder, REPLICATE, {"stones": chunk}, HANDOFF_CONFIRM_TIMEOUT,
                                   self._callback(holder, chunk, attempts + 1))

    def _callback(self, holder: str, rows: list[StoneRow],
                  attempts: int) -> Callable[[dict[str, Any] | None], None]:
        def answered(answer: dict[str, Any] | None) -> None:
            if answer is None and attempts < OUTCOME_ATTEMPTS:
                self.unanswered.append((holder, rows, attempts))
                self._on_unanswered()
        return answered


def _stone_row(stone: Tombstone) -> StoneRow:
    return [stone.id, stone.state, stone.result, stone.error, stone.key]


def _stone_size(row: StoneRow) -> int:
    return outcome_size(row[2], row[3])
