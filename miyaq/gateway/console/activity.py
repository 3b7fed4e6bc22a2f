"""What a node did lately, per second: the console's overview chart and the
rates on its queues page.

:class:`Activity` reads the engine's outcome counters (``submitted``,
``started``, ``completed``, ``failed``, ``lost``: the same numbers as
``miyaq_tasks_total``), with what the counters of the queues the engine
pruned counted (the node's totals, which never go back), when
:meth:`Activity.sample` is called, once a second, and keeps the
differences in a ring buffer: ``history`` samples (600: ten minutes) of
four rates, and every ``QUEUE_EVERY`` samples a copy of the per-queue
totals (``QUEUE_SNAPSHOTS`` of them) for per-queue rates over the last
minute. Memory is bounded by those sizes and by the number of queues the
engine keeps (it prunes empty ones).

Constraints: no I/O, never blocks; ``sample`` is O(queues × outcomes) and
costs nothing on the task path (the engine counts anyway).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

SERIES = ("submitted", "started", "completed", "failed")
# each series from the engine's outcome counters: failures are reported failures and lost runs
SOURCES = {"submitted": ("submitted",), "started": ("started",), "completed": ("completed",),
           "failed": ("failed", "lost")}
HISTORY = 600          # samples kept: ten minutes at one a second
QUEUE_EVERY = 10       # samples between two copies of the per-queue totals
QUEUE_SNAPSHOTS = 7    # copies kept: rates over the last minute
MAX_GAP = 5.0          # seconds: a longer gap between samples (a frozen process) is not averaged over


class Activity:
    """``outcomes``: the engine's counters per (queue, outcome); ``pruned``:
    what the counters of the queues it pruned counted (outcome -> total), so
    the sums never go back when an empty queue is forgotten (the totals of
    :meth:`~miyaq.core.engine.Engine.outcome_totals`). Before 2026-12-05 only
    ``outcomes`` was read: the second a node forgot empty queues showed no
    activity at all (their counts had left the sum)."""

    def __init__(self, outcomes: Mapping[tuple[str, str], int], history: int = HISTORY,
                 pruned: Mapping[str, int] | None = None) -> None:
        self.outcomes = outcomes
        self.pruned: Mapping[str, int] = pruned if pruned is not None else {}
        self.samples: deque[tuple[float, tuple[float, ...]]] = deque(maxlen=history)
        self._totals: tuple[int, ...] | None = None
        self._at = 0.0
        self._count = 0
        self.queue_snapshots: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=QUEUE_SNAPSHOTS)

    def _sum(self) -> tuple[int, ...]:
        sums = dict.fromkeys(SERIES, 0)
        owner = {source: name for name, sources in SOURCES.items() for source in sources}
        for (_, outcome), n in list(self.outcomes.items()):
            name = owner.get(outcome)
            if name is not None:
                sums[name] += n
        for outcome, n in list(self.pruned.items()):
            name = owner.get(outcome)
            if name is not None:
                sums[name] += n
        return tuple(sums[name] for name in SERIES)

    def sample(self, now: float) -> None:
        """Append the rates since the previous sample (the first sample only sets the baseline)."""
        totals = self._sum()
        previous, at = self._totals, self._at
        self._totals, self._at = totals, now
        if previous is not None and 0 < now - at <= MAX_GAP:
            span = now - at
            self.samples.append((now, tuple(max(0, b - a) / span for a, b in zip(previous, totals))))
        self._count += 1
        if self._count % QUEUE_EVERY == 1:
            self.queue_snapshots.append((now, self._per_queue()))

    def _per_queue(self) -> dict[str, tuple[int, int]]:
        queues: dict[str, list[int]] = {}
        for (queue, outcome), n in list(self.outcomes.items()):
            if outcome == "submitted":
                queues.setdefault(queue, [0, 0])[0] = n
            elif outcome == "completed":
                queues.setdefault(queue, [0, 0])[1] = n
        return {q: (v[0], v[1]) for q, v in queues.items()}

    def series(self, since: float = 0.0) -> dict[str, Any]:
        """The samples after ``since`` as columns: ``{"t": [...], "submitted": [...], ...}``."""
        rows = [(t, rates) for t, rates in self.samples if t > since]
        out: dict[str, Any] = {"t": [round(t, 3) for t, _ in rows]}
        for i, name in enumerate(SERIES):
            out[name] = [round(rates[i], 3) for _, rates in rows]
        return out

    def latest(self) -> dict[str, float]:
        """The most recent rates (zeros before the second sample)."""
        rates = self.samples[-1][1] if self.samples else (0.0,) * len(SERIES)
        return dict(zip(SERIES, rates))

    def queue_rates(self) -> dict[str, tuple[float, float]]:
        """Per queue, (submitted, completed) per second over the last minute or
        so (empty until two snapshots exist)."""
        if len(self.queue_snapshots) < 2:
            return {}
        (t0, first), (t1, last) = self.queue_snapshots[0], self.queue_snapshots[-1]
        span = t1 - t0
        if span <= 0:
            return {}
        rates = {}
        for queue, (sub, done) in last.items():
            sub0, done0 = first.get(queue, (0, 0))
            rates[queue] = (max(0, sub - sub0) / span, max(0, done - done0) / span)
        return rates
