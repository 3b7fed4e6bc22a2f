"""When a new holder that has not confirmed its copies is sent them again
(:class:`HolderRetry`, one per holder, kept by
:class:`~miyaq.cluster.handoff.Handoff`).

A holder that lets its chunks time out (``HANDOFF_CONFIRM_TIMEOUT``: down,
or busy installing), or stays unreachable past the handoff's quick tries
(:meth:`~miyaq.cluster.handoff.Handoff._soon`), is sent nothing while a
chunk to it still awaits its answer, and each resend to it waits twice as
long as the one before, up to ``HANDOFF_RETRY_MAX`` (a ring change starts
the waits afresh). Its answer still counts when it comes after the deadline
(``late`` of :meth:`~miyaq.cluster.transport.PeerLink.request`): it lists
the ids the holder stored, true whenever it arrives. Before 2026-12-05, an
answer past the 5 s deadline was dropped and every unconfirmed copy sent
again every 5 s, without end: a new holder answering in 6 s got its whole
share again every 5 s, and the old holders never dropped their copies.
Before 2026-12-06 a chunk that could not be sent counted as one that timed
out: the pass that follows a node's joining sends before the link to it is
made (its DEALER is IMMEDIATE: nothing queues until the handshake ends, a
few ms), and its copies went again only 10 to 15 s later (the doubled
wait, and a sweep pass pushing the retry), the old holders keeping theirs.
Until later on 2026-12-06 every handoff pass started the quick tries afresh,
the sweeps of the minute after a ring change too: a joiner never reachable
was tried in bursts of seven, 35 times in 600 s (11 before the quick tries;
each try rebuilds the record of every copy waiting for it), and a sweep pass
falling on a due resend still pushed it back by ``HANDOFF_RETRY``. The quick
tries are now counted per ring change, and a pass keeps the resend planned
before it. Before 2026-12-07 a retry round planned the next
``HANDOFF_RETRY`` after itself, whatever the time of a holder it did not
send to: a holder whose quick try was asked for 0.2 s after another's got
its copies 5.5 s later, not 0.7 s. A round now plans the next at the
earliest ``not_before`` of such a holder (with nothing on its way), and the
quick tries are counted a holder.
"""
from __future__ import annotations

from miyaq.constants import HANDOFF_RETRY, HANDOFF_RETRY_MAX


class HolderRetry:
    """When copies a new holder has not confirmed may be sent to it again.

    ``awaiting``: chunks sent to it whose answer neither came nor timed out
    (none is sent again meanwhile). ``wait``: how long after a resend the
    next may go, ``HANDOFF_RETRY`` while it answers, doubled at each resend
    up to ``HANDOFF_RETRY_MAX`` while it does not. ``not_before``
    (monotonic): no resend before then. ``wait_before``: ``wait`` before the
    last send doubled it (a send that could not go does not count)."""

    __slots__ = ("awaiting", "not_before", "wait", "wait_before")

    def __init__(self) -> None:
        self.awaiting = 0
        self.wait = self.wait_before = HANDOFF_RETRY
        self.not_before = 0.0

    def due(self, now: float) -> bool:
        return not self.awaiting and now >= self.not_before

    def sent(self, now: float) -> None:
        """Copies went to it (a pass or a resend)."""
        self.not_before = now + self.wait
        self.wait_before = self.wait
        self.wait = min(2 * self.wait, HANDOFF_RETRY_MAX)

    def unsent(self) -> None:
        """A chunk could not be sent (no connection now): nothing is on the
        way, and the send does not double the wait (the caller plans a quick
        retry: :meth:`~miyaq.cluster.handoff.Handoff._soon`)."""
        self.awaiting = max(0, self.awaiting - 1)
        self.wait = self.wait_before

    def silent(self, now: float) -> None:
        """A chunk's deadline passed without its answer (or it could not be sent)."""
        self.awaiting = max(0, self.awaiting - 1)
        self.not_before = max(self.not_before, now + self.wait)

    def heard(self) -> None:
        """It answered: it is up, and is sent what it did not confirm at the usual pace."""
        self.wait = HANDOFF_RETRY
