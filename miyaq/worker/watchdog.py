"""The worker's watchdog: stops handlers that run past their timeout.

A job's ``deadline`` is when it started plus its timeout, moved on by each
touch. The watchdog looks again at the nearest deadline (at most every
``WATCHDOG_TICK``), and at least every ``WATCHDOG_IDLE``, so that only a job
due before its next look wakes it (:meth:`Watchdog.started`): tasks with the
usual timeouts, one at a time, never do (a wake-up of the watchdog is two
greenlet switches per task). Each look also tells the heartbeat thread
that the hub runs (:meth:`Pulse.hub_runs <miyaq.worker.pulse.Pulse.hub_runs>`):
before 2026-12-07 a greenlet of its own did, a second wake-up a second of
an idle worker.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..logs import LogLimiter
from ..runtime import green, monotonic
from .config import WATCHDOG_IDLE, WATCHDOG_TICK
from .execute import Interrupted, TaskTimeout
from .jobs import Job

logger = logging.getLogger(__name__)
#: Tasks stopped at their timeout are logged one by one up to this many lines
#: a minute, then counted (each is also a FAILED ``TaskTimeout`` at the node,
#: in its metrics); before 2026-12-05 a flood of timeouts logged a line each.
TIMEOUT_LINES_PER_MINUTE = 100
_log = LogLimiter(logger, burst=TIMEOUT_LINES_PER_MINUTE)


class Watchdog:
    """``jobs()``: every job whose handler may run (earlier attempts still
    running included); ``interrupt(job, reason)`` stops one (never blocks)."""

    def __init__(self, wid: str, jobs: Callable[[], Iterable[Job]],
                 interrupt: Callable[[Job, type[Interrupted]], None],
                 looks: Callable[[bool], None] | None = None) -> None:
        self.wid = wid
        self.jobs = jobs
        self.interrupt = interrupt
        # Told True at each look (at least every WATCHDOG_IDLE: the hub runs),
        # False once the loop ends: the heartbeat thread's watch of the hub
        # (Pulse.hub_runs).
        self.looks = looks
        self._wake = green.Event()
        self.next_look = 0.0      # when it means to look again (monotonic)

    def started(self, job: Job) -> None:
        """A job started: wake the watchdog if it is due before its next look."""
        if job.deadline < self.next_look:
            self._wake.set()

    def run(self) -> None:
        """The loop (spawn it through the worker's supervisor)."""
        looks = self.looks
        try:
            self._run(looks)
        finally:
            if looks is not None:
                looks(False)

    def _run(self, looks: Callable[[bool], None] | None) -> None:
        while True:
            if looks is not None:
                looks(True)
            now = monotonic()
            nearest = float("inf")
            for job in list(self.jobs()):
                if job.stop_reason is not None:
                    continue
                if now >= job.deadline:
                    _log.warning("timeout", "worker %s: task %s (%s) ran past its %gs timeout; stopping it "
                                 "(pool %s)", self.wid, job.task_id, job.name, job.timeout, job.executor.name)
                    self.interrupt(job, TaskTimeout)
                elif job.deadline < nearest:
                    nearest = job.deadline    # a touch only moves a deadline later
            self.next_look = max(min(nearest, now + WATCHDOG_IDLE), now + WATCHDOG_TICK)
            self._wake.clear()
            self._wake.wait(self.next_look - now)
