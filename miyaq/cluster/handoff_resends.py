"""Handoff's resends (:class:`HandoffResends`, a base of
:class:`~miyaq.cluster.handoff.Handoff`): the copies a new holder did not
confirm -- it was down, or behind on the ring -- sent again once
``next_retry`` came, a slice at a time, to each holder whose resend is due
(:class:`~miyaq.cluster.holder_retry.HolderRetry`, one per holder, kept
while copies to it are on the way or unconfirmed). The pass that sends them
first, and the confirmations, are :mod:`miyaq.cluster.handoff`'s.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from miyaq.cluster.handoff_slices import _slices
from miyaq.cluster.holder_retry import HolderRetry
from miyaq.cluster.outcome_handoff import OutcomeHandoff
from miyaq.constants import CLUSTER_TICK, HANDOFF_RETRY
from miyaq.store.records import transfer_record

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

__all__ = ["HandoffResends"]


class HandoffResends:
    """The resends of a :class:`~miyaq.cluster.handoff.Handoff` (its base).
    The handoff sets the attributes below; :meth:`_send` is its own (it
    sends a holder its copies, in chunks)."""

    role: ClusterRole
    leaving: dict[str, set[str]]
    next_retry: float
    outcomes: OutcomeHandoff
    retries: dict[str, HolderRetry]
    _send: Callable[[dict[str, list[dict[str, Any]]]], None]

    def _retry_of(self, holder: str) -> HolderRetry:
        retry = self.retries.get(holder)
        if retry is None:
            retry = self.retries[holder] = HolderRetry()
        return retry

    def retry(self, now: float) -> None:
        """Send again what was not confirmed (a new holder that was down, or
        behind on the ring) once ``next_retry`` came, a slice at a time, to
        each holder whose resend is due (:class:`HolderRetry`).
        ``now``: monotonic. The next round comes ``HANDOFF_RETRY`` later, or
        at the time of its own of a holder not due yet, if sooner
        (:meth:`_plan_next_round`)."""
        if not (self.leaving or self.outcomes.unanswered) or now < self.next_retry:
            return
        self.next_retry = now + HANDOFF_RETRY
        self.outcomes.resend()
        due = {h for h, r in self.retries.items() if r.due(now)}
        if not due and self.retries:
            self._plan_next_round(now)
            return      # every holder owed copies has some on the way, or waits its turn
        seen: set[str] = set()
        resent: set[str] = set()
        leaving = list(self.leaving)
        for chunk in _slices(leaving):
            self._retry_slice(chunk, due, seen, resent, now)
        self._forget_holders(seen)
        self._plan_next_round(now)

    def _plan_next_round(self, now: float) -> None:
        """After the round at ``now``: the next comes no later than the
        earliest time of its own (``not_before``) of a holder not due at
        ``now`` with nothing on the way (a quick retry asked for after the
        one this round was for; one with a chunk on its way is planned
        when that chunk is answered), and never sooner than
        ``CLUSTER_TICK`` after ``now`` (that holder is due at the next
        round, which sends to it and moves its time on). Before 2026-12-07
        the next round came ``HANDOFF_RETRY`` after this one whatever: a
        holder that refused its copies on an older ring 0.2 s after another
        got them again 5.5 s later, not 0.7 s (audit review29)."""
        own = [r.not_before for r in self.retries.values() if not r.awaiting and r.not_before > now]
        if own:
            self.next_retry = min(self.next_retry, max(min(own), now + CLUSTER_TICK))

    def _retry_slice(self, ids: list[str], due: set[str], seen: set[str], resent: set[str], now: float) -> None:
        """Send the copies of ``ids`` to each of their unconfirming holders
        that is ``due`` (or that has no retry of its own yet: it is added to
        ``due``); every holder still waiting for a copy of ``ids`` is added
        to ``seen``, due or not, and every holder sent copies to ``resent``
        (its next resend is planned at its first, :meth:`HolderRetry.sent`)."""
        table = self.role.engine.table
        outbox: dict[str, list[dict[str, Any]]] = {}
        for task_id in ids:
            waiting = self.leaving.get(task_id)
            if waiting is None:
                continue        # confirmed while the retry yielded
            task = table.live.get(task_id) or table.dead.get(task_id)
            if task is None or not waiting:
                del self.leaving[task_id]
                continue
            seen |= waiting
            record = None
            for h in waiting:
                if h not in due:
                    if h in self.retries:
                        continue        # not its turn
                    due.add(h)
                    self._retry_of(h)
                if record is None:
                    record = transfer_record(task)
                outbox.setdefault(h, []).append(record)
        for holder in outbox:
            if holder not in resent:
                resent.add(holder)
                self.retries[holder].sent(now)
        self._send(outbox)

    def _forget_holders(self, keep: set[str]) -> None:
        """Forget the retries of holders not in ``keep`` with nothing on the way."""
        for holder in [h for h, r in self.retries.items() if h not in keep and not r.awaiting]:
            del self.retries[holder]
