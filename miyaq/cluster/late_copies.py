"""The copies a coordinator could not send to a holder (no connection: it is
down and the ring still lists it, or the link to it is being made): sent
again every ``CLUSTER_TICK`` until the submit's deadline, marked ``resent``
(:func:`late_copy`). :class:`LateCopies` is a base of
:class:`~miyaq.cluster.replicated_intake.ReplicatedIntake`, which keeps the
submits waiting for their replicas (``pending``) and sends REPLICATE
(``_send``); docs/cluster.md, "What a holder's trouble costs the submit".

A tick reads a bounded number of the copies waiting for a holder that stays
unreachable (``UNSENT_PROBE`` tried, ``UNSENT_SCAN`` more read in turns),
whatever waits.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable

from miyaq.constants import CLUSTER_TICK
from miyaq.runtime import monotonic

if TYPE_CHECKING:
    from miyaq.cluster.replicated_intake import Outgoing, _Pending
    from miyaq.core.engine import Engine


def late_copy(record: dict[str, Any]) -> dict[str, Any]:
    """A copy for a holder its first try could not reach, marked ``resent``
    (the record is shared by the task's holders: this is a new one). The
    holder may come back after the task's other holders gave up on it and
    a standby copy of theirs ran the task, so its copy must ask them before
    it runs, whatever its rank -- as every copy of a resent submit does."""
    meta = record.get("meta") or {}
    if meta.get("resent"):
        return record
    return dict(record, meta={**meta, "resent": True})


UNSENT_PROBE = 64
"""Copies that could not be sent to a holder are tried again this many first:
while it stays unreachable, a tick costs one small request, whatever waits."""
UNSENT_SCAN = 4096
"""Copies beyond the probe a tick reads, in turns, of a holder that stays
unreachable: for those whose submit was answered (dropped) or whose task is
over here (not sent, the submit acknowledged: :meth:`LateCopies._over_here`)."""


class LateCopies:
    """Holder -> the copies that could not be sent to it (``unsent``), and
    their tries again: the part of a cluster's intake that handles them."""

    if TYPE_CHECKING:   # what the intake provides
        pending: dict[str, _Pending]
        engine: Engine
        release: Callable[[], None]

        def _send(self, holder: str, copies: list[Outgoing]) -> list[Outgoing]: ...

        def _answer(self, entry: _Pending, result: list[Any]) -> None: ...

    def __init__(self) -> None:
        self.unsent: dict[str, list[Outgoing]] = {}    # holder -> copies it could not be sent (no connection)
        self._unsent_due = 0.0
        self._scan_at: dict[str, int] = {}     # holder -> where the next tick's scan of its unsent copies starts

    def _send_unsent(self) -> None:
        """Try each holder again with its first ``UNSENT_PROBE`` copies still
        wanted (whose submit waits for them); if they go, with the rest. Only
        wanted copies are kept: at most one per submit waiting, per holder.
        A copy of a task that is over here is not sent (:meth:`_over_here`).

        While a holder stays unreachable a tick reads its probe and at most
        ``UNSENT_SCAN`` more of its copies, in turns (:meth:`_scan`): before
        2026-12-06 it read them all, 12.5 ms of CPU a tick (every 50 ms) with
        20,000 waiting and 257 ms with 100,000 -- a holder down under load
        kept its coordinator's loop busy."""
        unsent, self.unsent = self.unsent, {}
        scan_at, self._scan_at = self._scan_at, {}
        acknowledged = False
        for holder, copies in unsent.items():
            probe: list[Outgoing] = []
            read = 0
            while read < len(copies) and len(probe) < UNSENT_PROBE:
                copy = copies[read]
                read += 1
                wanted = self._wanted(copy)
                if wanted:
                    probe.append(copy)
                elif wanted is None:
                    acknowledged = True
            del copies[:read]       # in place: a list of 100,000 is moved, not copied
            if probe and self._send(holder, probe):     # still no connection: next tick
                acknowledged |= self._scan(holder, copies, scan_at.get(holder, 0))
                copies[:0] = probe
                self._keep_late(holder, copies)
                continue
            sendable, over = self._still_wanted(copies)
            acknowledged |= over
            self._keep_late(holder, self._send(holder, sendable))
        if acknowledged:
            self.release()

    def _wanted(self, copy: Outgoing) -> bool | None:
        """Whether a copy that could not be sent is still wanted: True; False
        when its submit was answered meanwhile; None when its task is over
        here, and its submit was acknowledged now (:meth:`_over_here`)."""
        entry, record = copy
        task_id = record["id"]
        if self.pending.get(task_id) is not entry:
            return False
        return None if self._over_here(task_id, entry) else True

    def _still_wanted(self, copies: Iterable[Outgoing]) -> tuple[list[Outgoing], bool]:
        """The copies of ``copies`` still wanted (:meth:`_wanted`), and True
        if a submit was acknowledged meanwhile (its task over here)."""
        kept: list[Outgoing] = []
        acknowledged = False
        for copy in copies:
            wanted = self._wanted(copy)
            if wanted:
                kept.append(copy)
            elif wanted is None:
                acknowledged = True
        return kept, acknowledged

    def _scan(self, holder: str, copies: list[Outgoing], start: int) -> bool:
        """Drop from ``copies`` (in place) those no longer wanted among the
        ``UNSENT_SCAN`` from ``start`` (from 0 past the end) and remember
        where the next tick goes on; True if a submit was acknowledged."""
        if start >= len(copies):
            start = 0
        kept, acknowledged = self._still_wanted(copies[start:start + UNSENT_SCAN])
        copies[start:start + UNSENT_SCAN] = kept
        self._scan_at[holder] = start + len(kept)
        return acknowledged

    def _over_here(self, task_id: str, entry: _Pending) -> bool:
        """True, and the submit acknowledged, if this node stored the task
        and it is no longer live here: its standby copy ran it while the
        holders still missing were out of reach, or it was dead-lettered,
        cancelled or handed off. Such a task is no longer one to store: its
        record, sent now, would be a live copy of a task that is over, and
        that copy would run if this node were silent when it asks. The
        client is told the task was accepted (it was stored, and it ran)."""
        if not entry.mine or task_id in self.engine.table.live:
            return False
        del self.pending[task_id]
        self._answer(entry, [task_id, entry.status, entry.detail])
        return True

    def _keep(self, holder: str, copies: list[Outgoing]) -> None:
        """Send ``copies`` at the next tick, each marked as a late copy."""
        self._keep_late(holder, [(entry, late_copy(record)) for entry, record in copies])

    def _keep_late(self, holder: str, copies: list[Outgoing]) -> None:
        """Send ``copies``, marked as late copies already, at the next tick."""
        if copies:
            if not self.unsent:
                self._unsent_due = monotonic() + CLUSTER_TICK
            kept = self.unsent.get(holder)
            if kept is None:
                self.unsent[holder] = copies
            else:
                kept.extend(copies)
