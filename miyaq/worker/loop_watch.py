"""The heartbeat thread's watch on the worker's asyncio loop (``async def``
handlers, :mod:`miyaq.worker.aio`): an ``async def`` handler that blocks
-- ``time.sleep``, a blocking client, CPU work -- holds the loop, and every
other async task of the worker waits for it, its cancels and timeouts too.

The loop marks each second that it turned (:meth:`AsyncLoop._tick
<miyaq.worker.aio.AsyncLoop>`, a timer of its own: nothing per task); the
heartbeat thread, from outside the loop, looks at each beat
(:meth:`LoopWatch.look`). A loop that has not turned for
:data:`~miyaq.worker.config.HUB_STALL_WARN` seconds -- the threshold of the
gevent hub's warning (:mod:`miyaq.worker.pulse`) -- is said at WARNING,
once for each such stall, naming the handler running on it (the asyncio
task the loop is in, read from this thread; if that is not one of the
worker's tasks, the async tasks running), and again at INFO once it turns.
It stops nothing. Before 2026-12-06 nothing was said: a 0.1 s async task
beside a handler that called ``time.sleep(7)`` took 7.1 s, silently.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable, Iterable

from .config import HUB_STALL_WARN, HUB_TICK

if TYPE_CHECKING:
    from .aio import AsyncLoop
    from .jobs import Job

logger = logging.getLogger("miyaq.worker.aio")


class StallWatch:
    """One stall at a time of a loop another thread watches (the gevent hub,
    :mod:`miyaq.worker.pulse`; the asyncio loop, :class:`LoopWatch`): from
    the time the loop last turned (``seen``) and the clock (``now``, both
    ``time.monotonic()``), whether to warn -- once a stall, past ``after``
    seconds -- and whether to say it turns again."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since: float | None = None     # the loop's last turn, while a stall was reported

    def look(self, seen: float, now: float, after: float) -> tuple[bool, float] | None:
        """``(True, seconds stalled)`` when a stall is to be warned of,
        ``(False, seconds it held)`` when a reported stall has ended, else None."""
        since = self.since
        if since is not None:
            if seen == since:
                return None
            self.since = None
            return False, seen - since
        stalled = now - seen
        if stalled <= after:
            return None
        self.since = seen
        return True, stalled


class LoopWatch:
    """``jobs()``: the worker's running jobs (read from the heartbeat thread
    while the hub may run: it must only read)."""

    def __init__(self, wid: str, aio: AsyncLoop, jobs: Callable[[], Iterable[Job]]) -> None:
        self.wid = wid
        self.aio = aio
        self.jobs = jobs
        self.stall = StallWatch()

    def look(self, now: float) -> None:
        """In the heartbeat thread, at a beat (``now``: ``time.monotonic()``):
        warn once if the loop has not turned for ``HUB_STALL_WARN`` seconds,
        and say when it turns again. Never raises."""
        seen = self.aio.seen
        if seen is None:        # not running (not started yet, or stopping): not watched
            self.stall.since = None
            return
        said = self.stall.look(seen, now, HUB_STALL_WARN + HUB_TICK)
        if said is None:
            return
        stalled, seconds = said
        if not stalled:
            logger.info("worker %s: its asyncio loop runs again, after %.0fs held by a handler", self.wid, seconds)
            return
        logger.warning("worker %s: its asyncio loop has not run for %.0fs: an async def handler blocks it (a "
                       "blocking call -- time.sleep, a blocking client, CPU work -- not awaited?; running: %s). No "
                       "other async handler runs, nor a cancel or timeout of one, until it returns; await the "
                       "asyncio form (asyncio.sleep, an async client) or run the call with asyncio.to_thread",
                       self.wid, seconds, self._culprits() or "none known")

    def _culprits(self) -> str:
        """The task whose handler the loop is in, else the async tasks running."""
        try:
            jobs = [job for job in list(self.jobs()) if job.is_async]
            loop = self.aio.loop
            current = asyncio.current_task(loop) if loop is not None else None
        except Exception:   # noqa: BLE001 - the hub may change what it reads as it runs
            return ""
        held = [job for job in jobs if current is not None and job.handle is current]
        return ", ".join(f"{job.task_id} ({job.name})" for job in (held or jobs))
