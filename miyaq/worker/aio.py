"""``async def`` handlers: one asyncio event loop in a native thread of the worker.

Each async task is a coroutine on that loop, awaited by the runner greenlet
that took it, so at most ``--concurrency`` run at once, mixed freely with
the module's sync handlers. A cancel or a timeout cancels the coroutine's
asyncio task (``asyncio.CancelledError`` at its current ``await``); the
handler may catch it to clean up, and its run ends as aborted or timed
out. The loop's thread reaches the hub only through the worker's
:class:`~miyaq.runtime.green.HubInbox`. In a gevent-patched worker the loop
uses gevent's selector, which works from its own thread. A handler that
stops the loop (``loop.stop()``) does not end it: only the worker's stop
does (before 2026-12-04 the loop thread ended, and every later async task
killed the runner that took it, unreported, until the worker took no work).
The loop marks each ``HUB_TICK`` that it turned (:attr:`AsyncLoop.seen`), for
the heartbeat thread to tell a handler that blocks it
(:mod:`miyaq.worker.loop_watch`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from ..runtime import green
from .config import HUB_TICK
from .context import bind, unbind
from .execute import Interrupted, Outcome, interrupted, run_async
from .jobs import Job, Touch

logger = logging.getLogger(__name__)

START_WAIT = 10.0   # seconds to wait for the loop thread to be running
STOP_WAIT = 5.0
FLUSH_WAIT = 3.0    # of STOP_WAIT: for app.aio's unacknowledged submits, before the loop's tasks are cancelled


class AsyncLoop:
    name = "asyncio"

    def __init__(self, inbox: green.HubInbox, touch: Touch, on_exit: Callable[[], None],
                 before_exit: Callable[[], Awaitable[None]] | None = None) -> None:
        self.inbox = inbox
        self.hub_touch = touch
        self.on_exit = on_exit
        # Awaited in the loop before its tasks are cancelled (at most
        # FLUSH_WAIT): the app's miyaq.aio client flushes what handlers
        # submitted with it, while its reader still runs.
        self.before_exit = before_exit
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = green.Event()
        self._exited = green.Event()
        self._stopping = False      # set (in the hub) before stop() stops the loop
        # When the loop last turned (time.monotonic(), real time), marked every
        # HUB_TICK by a timer of its own; None while it does not run. Read by
        # the heartbeat thread (miyaq.worker.loop_watch).
        self.seen: float | None = None

    def start(self) -> None:
        green.start_native_thread(self._main)
        if not self._ready.wait(START_WAIT) or self.loop is None:
            raise RuntimeError("the asyncio loop thread did not start")

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            self.loop = loop
            self.inbox.call(self._ready.set)
            loop.call_soon(self._tick)
            self._run_until_stopping(loop)
            self._flush(loop)
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except Exception:
            logger.exception("the asyncio loop of the worker failed")
        finally:
            self.seen = None
            try:
                self.on_exit()      # in this thread: what handlers opened here (the app's client)
            except Exception:
                logger.exception("cleaning up the asyncio thread failed")
            loop.close()
            self.inbox.call(self._exited.set)

    def _tick(self) -> None:
        """On the loop, every ``HUB_TICK`` until the worker stops it: it turned."""
        if self._stopping or self.loop is None:
            self.seen = None
            return
        self.seen = time.monotonic()
        self.loop.call_later(HUB_TICK, self._tick)

    def _run_until_stopping(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the loop until the worker stops it. A handler that stops it
        (``loop.stop()``), or a task or callback of one raising ``SystemExit``
        or ``KeyboardInterrupt`` -- asyncio lets those two out of
        ``run_forever`` -- does not end it: the worker's other coroutines, and
        every later async task, still need it. Before 2026-12-05 such a raise
        closed the loop: the handlers running on it were never reported and
        their runners blocked for good, until the worker ran nothing."""
        while True:
            try:
                loop.run_forever()
            except (SystemExit, KeyboardInterrupt) as exc:
                logger.error("a task or callback of an async handler raised %s out of the worker's asyncio "
                             "loop; the loop runs on", type(exc).__name__)
                continue
            if self._stopping:
                return
            logger.warning("an async handler stopped the worker's asyncio loop; it runs on")

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let ``before_exit`` send what async handlers submitted (app.aio).
        Before 2026-12-05 the loop cancelled the client's reader with the
        other tasks, and submits still waiting for their acknowledgement (a
        busy node, a reconnect) were dropped without a word."""
        if self.before_exit is None:
            return
        try:
            loop.run_until_complete(asyncio.wait_for(self.before_exit(), FLUSH_WAIT))
        except Exception as exc:    # a Timeout, Busy, the node gone: said once, the worker stops anyway
            logger.error("submits made by async handlers may be lost: flushing them at stop failed (%s: %s)",
                         type(exc).__name__, exc)

    # -- running -----------------------------------------------------------------------
    def run(self, job: Job) -> Outcome:
        assert self.loop is not None
        result = green.AsyncResult()
        future = asyncio.run_coroutine_threadsafe(self._run(job), self.loop)
        future.add_done_callback(lambda f: self.inbox.call(result.set, f))
        finished = result.get()
        if finished.cancelled():
            return interrupted(job.stop_reason or Interrupted)
        outcome: Outcome = finished.result()
        return outcome

    def _touch(self, task_id: str) -> None:
        self.inbox.call(self.hub_touch, task_id)

    async def _run(self, job: Job) -> Outcome:
        """On the loop: the asyncio task is the job's handle while it runs."""
        if job.stop_reason is not None:      # cancelled before it started
            return interrupted(job.stop_reason)
        job.handle = asyncio.current_task()
        token = bind(job.context(self._touch))
        try:
            return await run_async(job.fn, job.body, lambda: job.stop_reason)
        finally:
            unbind(token)
            job.handle = None

    def interrupt(self, job: Job) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._cancel, job)

    @staticmethod
    def _cancel(job: Job) -> None:
        task: Any = job.handle
        if task is not None:
            task.cancel()

    def stop(self) -> None:
        """Cancel what still runs and end the loop thread (bounded wait). Never raises."""
        if self.loop is None:
            return
        self._stopping = True
        self.seen = None       # its last handlers may block it as it stops: no stall to tell
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:    # already closed
            return
        if not self._exited.wait(STOP_WAIT):
            logger.warning("the asyncio loop did not stop within %.0fs", STOP_WAIT)
