"""A Prometheus histogram per queue without locks (the data structure the
latency histograms of :mod:`~miyaq.gateway.task_timings` are observed into).

A ``prometheus_client.Histogram`` takes two locks and scans its buckets in
Python on every ``observe``: 2.5-3 µs, three times per task, on the node's
one thread -- a fifth of a node's CPU per task in bulk
(docs/performance.md). :class:`QueueHistogram` keeps the same figures as
plain counts (one ``bisect`` and two additions per observation, on the
hub's thread only: no lock) and hands them to prometheus_client as a
:class:`~prometheus_client.core.HistogramMetricFamily` when ``/metrics`` is
scraped, so the exposition (names, ``le`` labels, ``_bucket``, ``_count``,
``_sum``) is the library's.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class _Series:
    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)     # per bucket, not cumulative; the last is +Inf
        self.total = 0.0


class QueueHistogram:
    """One histogram with a ``queue`` label. Not thread-safe: observed and
    collected on the node's hub thread."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("histogram buckets must be distinct and increasing")
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        self._labels = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self._series: dict[str, _Series] = {}

    def observe(self, queue: str, seconds: float) -> None:
        series = self._series.get(queue)
        if series is None:
            series = self._series[queue] = _Series(len(self.bounds))
        series.counts[bisect_left(self.bounds, seconds)] += 1    # le: the first bound >= seconds
        series.total += seconds

    def forget(self, queue: str) -> None:
        """Drop the queue's series (a queue the engine forgot)."""
        self._series.pop(queue, None)

    def family(self, between: Callable[[], None] = lambda: None) -> HistogramMetricFamily:
        """The histogram as prometheus_client exposes it (cumulative buckets).
        ``between`` is called after each queue (it may yield to the hub: the
        queues are copied first)."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=["queue"])
        for queue, series in list(self._series.items()):
            between()
            running = 0
            buckets = []
            for label, count in zip(self._labels, series.counts):
                running += count
                buckets.append((label, float(running)))
            family.add_metric([queue], buckets, series.total)
        return family
