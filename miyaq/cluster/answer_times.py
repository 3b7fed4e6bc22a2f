"""How long each peer has lately taken to answer this node's requests, so
that a standby copy's QUERY waits for a slow holder instead of taking its
slowness for silence.

A standby copy runs only if the holders it asks are silent
(docs/cluster.md, "Before a standby copy runs"); silence is a QUERY
unanswered after ``QUERY_TIMEOUT`` (1 s). On a narrow link between nodes
(2-5 Mbit/s, tasks of a few hundred KB) a QUERY's answer waited behind
megabytes of copies on the same connection and came seconds later: the
network audit of 2026-12-06 saw 19 of 30 tasks taken over by a standby
copy with no failure at all, and tasks run two or three times after a
clean ``miyaq leave``. A QUERY now has a connection of its own
(:mod:`miyaq.cluster.peer_channels`), but its packets still share the
link, and its queue, with the copies'. So a QUERY to a holder waits at least
``QUERY_TIMEOUT`` and at least twice the slowest answer that holder gave
to any request of this node in the last ``ANSWER_TIMES_WINDOW`` seconds --
late ones included -- and at most ``QUERY_PATIENCE_MAX`` (a holder that is
really gone is still taken for silent, later).

Bounded: at most ``MAX_TRACKED`` requests are remembered (the oldest
forgotten first), ``SAMPLES`` answer times a peer, ``MAX_PEERS`` peers
(the one heard from longest ago forgotten first: members that left).
"""
from __future__ import annotations

from collections import OrderedDict, deque

from miyaq.constants import ANSWER_TIMES_WINDOW, QUERY_PATIENCE_MAX

MAX_TRACKED = 10_000
"""Requests whose sending time is remembered, at most (oldest forgotten first)."""
SAMPLES = 32
"""Answer times kept a peer (the newest)."""
MAX_PEERS = 1024
"""Peers whose answer times are kept, at most."""


class AnswerTimes:
    """Sending times of requests and the answer times of each peer (module
    doc). Every method runs in the node's loop; times are monotonic."""

    def __init__(self) -> None:
        self._sent: OrderedDict[int, tuple[str, float]] = OrderedDict()   # req -> (peer, sent at)
        self._times: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()   # peer -> (answered at, s)

    def sent(self, req: int, peer: str, now: float) -> None:
        sent = self._sent
        sent[req] = (peer, now)
        while len(sent) > MAX_TRACKED:
            sent.popitem(last=False)

    def answered(self, req: object, now: float) -> tuple[str, float] | None:
        """An answer to ``req`` came, in time or late: the peer asked and the
        seconds it took (None for a request this node did not make, or
        forgot, which is ignored)."""
        if not isinstance(req, int):
            return None
        entry = self._sent.pop(req, None)
        if entry is None:
            return None
        peer, sent_at = entry
        times = self._times.pop(peer, None)
        if times is None:
            times = deque(maxlen=SAMPLES)
            while len(self._times) >= MAX_PEERS:
                self._times.popitem(last=False)
        self._times[peer] = times       # the newest heard last
        times.append((now, now - sent_at))
        return peer, now - sent_at

    def patience(self, peer: str, least: float, now: float) -> float:
        """How long a request to ``peer`` should wait for its answer: at least
        ``least``, twice the slowest answer of the last ANSWER_TIMES_WINDOW
        seconds, at most QUERY_PATIENCE_MAX (module doc)."""
        times = self._times.get(peer)
        if not times:
            return least
        slowest = max((seconds for at, seconds in times if now - at <= ANSWER_TIMES_WINDOW), default=0.0)
        return max(least, min(2.0 * slowest, QUERY_PATIENCE_MAX))
