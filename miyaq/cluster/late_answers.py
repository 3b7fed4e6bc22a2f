"""The requests of a peer link that take an answer past their deadline
(:class:`~miyaq.cluster.peer_requests.PeerRequests`, a request sent with
``late``): a REPLICATE's answer lists what the receiver stored, which is
true whenever it arrives. Such a request is remembered for ``window``
seconds (``LATE_ANSWER_WINDOW``) past its deadline, at most ``limit``
(``MAX_LATE_ANSWERS``) of them, the oldest forgotten first; an error
answer, or one past the window, is dropped. Before 2026-12-05 an answer
past its deadline was always dropped, and a new holder slower than the
handoff's 5 s deadline got every copy again every 5 s for ever.

Its times are the link's (monotonic), given by the caller.
"""
from __future__ import annotations

import math
from collections import OrderedDict

from miyaq.cluster.transport import Callback


class LateAnswers:
    """The ``late`` handlers of the requests in flight, and those of the
    requests past their deadline whose answer is still taken."""

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self.limit = limit
        self.handlers: dict[int, Callback] = {}      # req -> what takes its answer past the deadline
        # Past their deadline, awaiting a late answer: req -> (when forgotten, late handler), oldest first.
        self.awaited: OrderedDict[int, tuple[float, Callback]] = OrderedDict()

    def __len__(self) -> int:
        """Requests past their deadline whose late answer is still taken."""
        return len(self.awaited)

    def expect(self, req: int, late: Callback) -> None:
        """Request ``req`` was sent with ``late``."""
        self.handlers[req] = late

    def settled(self, req: int) -> None:
        """``req`` needs no late answer: answered in time, or its connection closed."""
        if self.handlers:
            self.handlers.pop(req, None)

    def expired(self, req: int, now: float) -> None:
        """``req``'s deadline came (``now``): its late handler, if any, waits
        ``window`` more for the answer (the oldest beyond ``limit`` forgotten)."""
        late = self.handlers.pop(req, None) if self.handlers else None
        if late is not None:
            self.awaited[req] = (now + self.window, late)
            while len(self.awaited) > self.limit:
                self.awaited.popitem(last=False)

    def take(self, req: object) -> Callback | None:
        """The late handler of ``req``, an answer past its deadline, now
        forgotten; None if none awaits it."""
        if not self.awaited or not isinstance(req, int):
            return None
        late = self.awaited.pop(req, None)
        return None if late is None else late[1]

    def forget(self, now: float) -> None:
        """Forget the requests whose late answer did not come within
        ``window`` (they are in the order they expired)."""
        awaited = self.awaited
        while awaited:
            req, (until, _) = next(iter(awaited.items()))
            if until > now:
                return
            del awaited[req]

    def next_end(self) -> float:
        """When the oldest late answer awaited stops being taken (inf: none)."""
        return next(iter(self.awaited.values()))[0] if self.awaited else math.inf
