"""The default prefetch: as many tasks held as a few milliseconds of work.

A worker grants each node credit: the tasks it may hold, running and
waiting. With ``--prefetch P`` that is ``concurrency + P``, fixed. Without
it (the default) the worker starts at ``2 × concurrency`` -- what it always
held -- and grants more while its tasks are short: a worker whose backlog
runs dry waits a round trip to its node for the next batch, and for tasks
of a few microseconds that round trip, not the tasks, sets the pace. So
when its backlog runs out, it grants enough extra credit that the tasks it
holds would take it about :data:`PREFETCH_TIME` to run and their bodies
come to about :data:`PREFETCH_BYTES` at most, and never more than
:data:`MAX_PREFETCH_FACTOR` × concurrency in all. When its tasks grow
longer it takes the extra back: the next reports to that node say
``"credit": false`` until the extra is down to what the new run time
allows. Long tasks therefore never wait in a busy worker's backlog beyond
the ``2 × concurrency`` of before, and short ones never leave the worker
idle between batches. (docs/configuration.md, ``--prefetch``.)

The extra is granted with ``CREDIT`` (docs/protocol.md, 7.6) and counted
only once that message was sent; a READY (a new or re-registered
connection) sets the node's credit again and starts the count afresh.
"""
from __future__ import annotations

PREFETCH_TIME = 0.005
"""Seconds of work a worker may hold, by its recent run time per task, when
it grants extra credit (default prefetch only)."""
PREFETCH_BYTES = 8 * 1024 * 1024
"""Task bodies a worker may hold per node, by their mean size, when it grants
extra credit (default prefetch only; the base ``2 × concurrency`` is not
bound by it)."""
MAX_PREFETCH_FACTOR = 16
"""With the default prefetch, a worker holds at most this many times its
concurrency per node (its ``capacity``)."""
MARGIN = 0.99
"""How far below the limits a mean must be for :meth:`ExtraCredit.at_most`
to take it as within them without working out the target."""
RUN_TIME_WEIGHT = 0.2
"""Weight of the latest task in the running mean of run times."""


class RunTimes:
    """Running means of how long this worker's tasks take (seconds each, from
    when a runner starts a task to when it has its outcome) and of how large
    their bodies are (bytes)."""

    __slots__ = ("mean", "mean_bytes")

    def __init__(self) -> None:
        self.mean: float | None = None
        self.mean_bytes = 0.0

    def add(self, seconds: float, body_bytes: int = 0) -> None:
        mean = self.mean
        if mean is None:
            self.mean, self.mean_bytes = seconds, float(body_bytes)
        else:
            self.mean = mean + RUN_TIME_WEIGHT * (seconds - mean)
            self.mean_bytes += RUN_TIME_WEIGHT * (body_bytes - self.mean_bytes)


class ExtraCredit:
    """Credit granted to one node beyond the worker's base (``2 ×
    concurrency``), with the default prefetch.

    ``extra`` is what the node's credit plus the tasks it gave us will add
    up to beyond the base once every pending withhold is spent; ``withhold``
    counts reports that still must give no slot back.
    """

    __slots__ = ("slots", "base", "most", "extra", "withhold", "_short", "_small")

    def __init__(self, slots: int, base: int, capacity: int) -> None:
        self.slots = slots
        self.base = base
        self.most = capacity - base     # 0: a fixed --prefetch, nothing to adapt
        self.extra = 0
        self.withhold = 0
        # Means below these give the most extra (what :meth:`target` works out,
        # with a margin for rounding): :meth:`at_most` needs no more.
        # (Only when the most is whole multiples of the slots, as the target is.)
        whole = self.most > 0 and self.most % slots == 0
        self._short = MARGIN * PREFETCH_TIME * slots / capacity if whole else -1.0
        self._small = MARGIN * PREFETCH_BYTES / capacity

    def registered(self, held: int) -> None:
        """A READY set the node's credit to ``base - held`` (never below 0):
        tasks held beyond the base are extra already."""
        self.extra = min(self.most, max(0, held - self.base))
        self.withhold = 0

    def at_most(self, run_times: RunTimes) -> bool:
        """The extra is all there may be and the tasks are still short and
        small enough for it: :meth:`adjust` would do nothing. The check a
        worker of short tasks makes after each of them, in place of working
        out the target (docs/performance-log.md, "A lone task in a worker")."""
        mean = run_times.mean
        return (self.extra == self.most and mean is not None and mean <= self._short
                and run_times.mean_bytes <= self._small)

    def target(self, run_times: RunTimes) -> int:
        """The extra that holds about PREFETCH_TIME of work at the mean run
        time and at most PREFETCH_BYTES of bodies at their mean size, in
        whole multiples of the concurrency (so that a mean that wavers does
        not send a grant and a withhold by turns)."""
        mean = run_times.mean
        if not self.most or mean is None:
            return 0
        held = min(PREFETCH_TIME * self.slots / max(mean, 1e-6),
                   PREFETCH_BYTES / max(run_times.mean_bytes, 1.0))
        extra = (int(held) - self.base) // self.slots * self.slots
        return max(0, min(self.most, extra))

    def adjust(self, target: int, may_grow: bool) -> int:
        """Move toward ``target``: returns the credit to grant now (0: none).
        Shrinking schedules withholds; growing (only when ``may_grow``: the
        backlog ran dry) first cancels pending withholds. Call
        :meth:`granted` once a grant was sent."""
        if target < self.extra:
            self.withhold += self.extra - target
            self.extra = target
            return 0
        if not may_grow or target == self.extra:
            return 0
        more = target - self.extra
        cancelled = min(self.withhold, more)
        self.withhold -= cancelled
        self.extra += cancelled
        return more - cancelled

    def granted(self, n: int) -> None:
        self.extra += n

    def take_withhold(self) -> bool:
        """True (and one less to withhold) if the next report must give no slot back."""
        if self.withhold:
            self.withhold -= 1
            return True
        return False
