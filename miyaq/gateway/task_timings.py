"""Latency histograms per queue (:class:`TaskTimings`), observed inline in
the engine as tasks start and finish: a dict operation and a bisect a task
(:mod:`miyaq.gateway.histograms`), read when ``/metrics`` is scraped. Part
of the node's metrics (:mod:`miyaq.gateway.metrics`). The starts it keeps
of running attempts also date a running task in its info
(:meth:`TaskTimings.start_of`)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from miyaq.core.listener import EngineListener
from miyaq.gateway.histograms import QueueHistogram
from miyaq.runtime import green, wall
from miyaq.store.table import Tombstone
from miyaq.store.task import DONE, Task, revivals

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0, 900.0, 3600.0)


class TaskTimings(EngineListener, Collector):
    """Latency histograms per queue: how late tasks start (their first
    lease, against their eta), how long a successful run takes, and submit
    to done. Observed inline in the engine
    (:class:`~miyaq.gateway.histograms.QueueHistogram`: a bisect, no lock),
    collected when ``/metrics`` is scraped.

    What it keeps per task, all bounded: the start of each running task's
    attempt; for up to ``MAX_KEPT`` tasks whose attempt ended without a DONE
    (its lease ran out, its worker was lost, it failed) that attempt's start,
    so a late DONE of it, taken while a later attempt runs, is measured from
    its own start (the engine's ``duplicate_run`` names the attempt it
    reports, just before the task finishes); and up to ``MAX_KEPT`` tasks
    given back unstarted after their first lease (a worker's RETURN at its
    stop), whose start delay was observed already. Past a bound the oldest
    entry goes: at worst one task's run is not observed, or its start delay
    is observed twice.

    The start delay is observed once per task: at its first lease (a task
    given back unstarted and leased again, or retried from the dead letters,
    is not observed again). A successful run is observed when the attempt
    that reported DONE is known and its start was seen here: not for a DONE
    taken while the task waits for its next attempt, nor for one that
    finishes a dead letter (which attempt it reports is not known then)."""

    MAX_KEPT = 10_000
    #: Most entries :meth:`oldest_running` drops in one call.
    MAX_STALE = 1_000

    def __init__(self, registry: CollectorRegistry) -> None:
        self.delay = QueueHistogram("miyaq_task_start_delay_seconds", "Time from a task's eta to its first start",
                                    LATENCY_BUCKETS)
        self.run = QueueHistogram("miyaq_task_run_seconds", "Time from start to done of successful attempts",
                                  LATENCY_BUCKETS)
        self.total = QueueHistogram("miyaq_task_latency_seconds", "Time from submit to done", LATENCY_BUCKETS)
        self.duplicates = Counter("miyaq_duplicate_runs", "Tasks seen running more than once",
                                  ["queue"], registry=registry)
        self._started: dict[str, tuple[int, float]] = {}    # running task -> (its attempt, its start)
        self._ended: dict[str, tuple[int, float]] = {}      # last attempt that ended without DONE -> its start
        self._released: dict[str, bool] = {}                # given back after its first lease: delay observed
        self._reporting: tuple[str, int] | None = None      # (task, attempt) of a DONE while another runs
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        share = green.FairShare()
        for histogram in (self.delay, self.run, self.total):
            yield histogram.family(share.check)

    def _keep(self, kept: dict[str, Any], task_id: str, value: Any) -> None:
        """``kept[task_id] = value``, the oldest entry dropped past ``MAX_KEPT``."""
        kept.pop(task_id, None)
        if len(kept) >= self.MAX_KEPT:
            del kept[next(iter(kept))]
        kept[task_id] = value

    def _forget(self, task_id: str) -> None:
        self._started.pop(task_id, None)
        if self._ended:
            self._ended.pop(task_id, None)
        if self._released:
            self._released.pop(task_id, None)

    def oldest_running(self, running: Callable[[str, int], bool]) -> float | None:
        """The start (wall clock) of the oldest attempt that still runs, or
        None when none does. ``_started`` is in start order, so that is its
        first entry whose attempt ``running(task_id, attempt)`` confirms; an
        entry it denies (an attempt that ended by a way no hook here saw) is
        dropped, so it is never asked twice nor kept for ever. A call drops
        at most ``MAX_STALE`` and then answers with the next entry's start:
        its cost is bounded whatever the number of running tasks, one entry
        looked at in the usual case."""
        started = self._started
        stale: list[str] = []
        oldest: float | None = None
        # One pass of one iterator: a fresh one per entry dropped would walk
        # again the slots the dict keeps for what finished before (74 ms for
        # 1,000 stale entries behind 99,000 finished, review 2026-12-06).
        for task_id, (attempt, start) in started.items():
            if len(stale) >= self.MAX_STALE or running(task_id, attempt):
                oldest = start
                break
            stale.append(task_id)
        for task_id in stale:
            del started[task_id]
        return oldest

    def start_of(self, task_id: str, attempt: int) -> float | None:
        """When ``attempt`` of ``task_id`` was leased (wall clock), if that
        is the attempt whose start is kept for it, else None: a task's
        ``started`` in its info (:class:`miyaq.core.task_views.RunStarts`),
        one dict lookup when a view asks, nothing on the task's path."""
        kept = self._started.get(task_id)
        return kept[1] if kept is not None and kept[0] == attempt else None

    def task_started(self, task: Task) -> None:
        now = wall()
        started = self._started
        started.pop(task.id, None)      # a new start goes last: the dict stays in start order (oldest_running)
        started[task.id] = (task.attempt, now)
        if task.attempt == 1 and not revivals(task):
            if self._released and self._released.pop(task.id, False):
                return         # its first lease was observed, then given back unstarted
            self.delay.observe(task.queue, max(0.0, now - task.eta))

    def task_ready(self, task: Task) -> None:
        started = self._started.pop(task.id, None)
        if started is None:
            return
        if task.attempt < started[0]:
            # Released unstarted (the attempt was given back): nothing ran.
            if task.attempt == 0:
                self._keep(self._released, task.id, True)
        else:
            self._keep(self._ended, task.id, started)    # lost or failed, retried at once

    def task_retrying(self, task: Task, reason: str) -> None:
        started = self._started.pop(task.id, None)
        if started is not None:
            self._keep(self._ended, task.id, started)

    def task_dead(self, task: Task) -> None:
        self._forget(task.id)

    def task_forgotten(self, task: Task) -> None:
        self._forget(task.id)

    def task_finished(self, task: Task, stone: Tombstone) -> None:
        started = self._started.pop(task.id, None)
        ended = self._ended.pop(task.id, None) if self._ended else None
        if self._released:
            self._released.pop(task.id, None)
        reporting, self._reporting = self._reporting, None
        if stone.state == DONE:
            now = stone.finished
            if reporting is not None and reporting[0] == task.id:
                # An earlier attempt's DONE while a later one ran: that attempt's own start, if seen.
                started = ended if ended is not None and ended[0] == reporting[1] else None
            if started is not None:
                self.run.observe(task.queue, max(0.0, now - started[1]))
            self.total.observe(task.queue, max(0.0, now - task.created))

    def duplicate_run(self, task: Task, info: dict[str, Any]) -> None:
        self.duplicates.labels(task.queue).inc()
        attempt = info.get("attempt")
        if "running" in info and isinstance(attempt, int):
            # engine.complete: the DONE of ``attempt`` finishes the task next, while another attempt runs.
            self._reporting = (task.id, attempt)

    def queue_forgotten(self, queue: str) -> None:
        """The queue's series go with it (queue names are the producers': bounded only by use)."""
        for histogram in (self.delay, self.run, self.total):
            histogram.forget(queue)
        drop_series(self.duplicates, queue)


def drop_series(metric: Any, *labels: str) -> None:
    """Remove ``metric``'s series of ``labels``, if it has one."""
    try:
        metric.remove(*labels)
    except KeyError:
        pass       # never observed with these labels
