"""Answers and their requests' deadlines on a peer link.

* :class:`ExpiryHold`: the answer reader (:meth:`~miyaq.cluster.peer.PeerEndpoint.serve_answers`)
  expires no request after a burst that ended with answers unread -- one
  waiting in a socket may have come before its request's deadline, and
  expired first it would be silence, which lets a standby copy run a task
  a live holder holds (the path the code had to the seven tasks a chaos
  run under heavy load ran twice, 2026-12-08, seed 87) -- for at most
  ``EXPIRY_HOLD_MAX`` seconds in a row.
* :class:`PastDeadline`: an answer that came after its request had ended
  in silence is counted per peer and logged, five lines a minute. A
  QUERY's silence lets a standby copy run; the line tells a holder that
  was slow from one that was gone (before 2026-12-08 such an answer was
  dropped without a word, and a chaos run's duplicates could not be put
  down to either).
"""
from __future__ import annotations

import logging
from collections import Counter

from miyaq.logs import LogLimiter

EXPIRY_HOLD_MAX = 2.0
"""Seconds in a row the answer reader may hold off expiring requests while
each of its bursts ends with answers still unread: past it, requests due
are expired anyway, so that a reader flooded for good still ends its
requests in silence, this much late at most."""

MAX_COUNTED_PEERS = 1024
"""Peers whose answers past their deadline are counted at most
(:attr:`PastDeadline.counts`); past it the counts begin again."""


class ExpiryHold:
    """Whether the answer reader may expire requests after a burst."""

    __slots__ = ("held_since",)

    def __init__(self) -> None:
        self.held_since: float | None = None     # when bursts began to end with answers unread (monotonic)

    def may_expire(self, unread: bool, now: float) -> bool:
        """After a burst at ``now`` (monotonic) that ended with answers
        ``unread`` or not: True unless it left answers unread and bursts
        have done so for less than ``EXPIRY_HOLD_MAX``."""
        if unread and (self.held_since is None or now - self.held_since < EXPIRY_HOLD_MAX):
            if self.held_since is None:
                self.held_since = now
            return False
        self.held_since = None
        return True


class PastDeadline:
    """Answers that came after their request had ended in silence, per peer."""

    def __init__(self, logger: logging.Logger) -> None:
        self.counts: Counter[str] = Counter()
        self._log = LogLimiter(logger)

    def note(self, peer: str, seconds: float) -> None:
        """An answer from ``peer`` came ``seconds`` after its request was
        sent, once the request had ended in silence: counted and logged."""
        counts = self.counts
        if peer not in counts and len(counts) >= MAX_COUNTED_PEERS:
            counts.clear()      # members long gone: begun again
        counts[peer] += 1
        self._log.log(logging.INFO, "past deadline", "an answer from peer %s came %.2f s after its request was "
                      "sent, after the request had ended in silence (for a QUERY: its standby copies went on as "
                      "if that holder were gone); %d such answer(s) from it so far", peer, seconds, counts[peer])
