"""The threads pool: handlers run in ``--concurrency`` native threads.

For libraries that do not cooperate with gevent (C drivers that block in
their own code): nothing is monkey-patched, the worker's links, heartbeats
and watchdog keep running in the hub while handler threads block. A cancel
or a timeout raises the interruption in the handler's thread at its next
check -- the next Python bytecode it runs (CPython's asynchronous
exception, as Dramatiq's time limits use): a thread inside one long C call
(``time.sleep(60)``, a socket read without a timeout) sees it only when
that call returns.

Python cannot kill a thread. When the worker stops, a handler thread still
running at the end of ``--grace`` (or at a second stop signal) is not
waited for: the worker says BYE (its node puts the task back, attempt
spent), tells its idle threads to end and exits; the handler thread is
abandoned and ends with the process (``miyaq worker`` does not join it). In
a program that runs a ``Worker`` itself, such a thread runs on until its
handler returns or the program exits.
"""
from __future__ import annotations

import ctypes
import logging

from ...runtime import green
from ..context import bind, unbind
from ..execute import Interrupted, Outcome, interrupted, run_sync
from ..jobs import Job
from .base import PoolParts, PoolShortage

logger = logging.getLogger(__name__)

STOP_WAIT = 2.0     # seconds stop() waits for idle threads to end, when no handler runs


def raise_in_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """Make ``exc_type`` raise in the thread ``ident`` at its next bytecode."""
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    if n > 1:   # cannot happen for one ident; undo rather than hit other threads
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
    return n == 1


class ThreadsPool:
    name = "threads"

    def __init__(self, parts: PoolParts) -> None:
        self.parts = parts
        self.threads = green.ThreadPool(parts.concurrency)
        self._count_lock = green.native_lock()
        self.in_handlers = 0      # threads inside a handler now (counted in the threads themselves)
        self.in_pool = 0          # tasks handed to the threads and not returned yet (counted in the hub)
        #: Why the pool runs fewer threads than ``concurrency`` (one could not
        #: be started); None while it may start them all.
        self.shortage: str | None = None

    def start(self) -> None:
        pass

    def ready(self, timeout: float) -> bool:
        return True

    def run(self, job: Job) -> Outcome:
        # Before anything can yield: interrupt() and the pool thread take it.
        job.lock = green.native_lock()
        self._thread_for_one_more()
        self.in_pool += 1
        try:
            outcome: Outcome = self.threads.spawn(self._call, job).get()
        finally:
            self.in_pool -= 1
        return outcome

    def _thread_for_one_more(self) -> None:
        """Have a thread free for one more task, starting one if every thread
        is busy; raise :class:`PoolShortage`, nothing queued, if none can be
        started: the process is at its limit on threads or memory. The pool
        then keeps the threads it has (``shortage`` says why): a task past
        them raises :class:`PoolShortage` too, so the worker runs as many
        handlers at once as it has threads.

        The thread is started here, not by gevent's ``spawn``: that one
        queues the task first and starts a thread after, and when the start
        fails it raises with the task left in its queue, to be run by the
        next thread that is free (before 2026-12-06 the worker reported each
        such task failed -- an attempt spent for each task in hand --, the
        runners crashed, and the supervisor stopped the worker). Called in
        the hub, which alone queues tasks."""
        threads = self.threads
        # A thread that has handed its result back may not have marked its
        # task finished yet: a thread is wanted for the larger of the counts.
        wanted = max(self.in_pool, len(threads)) + 1
        if threads.size >= wanted:
            return
        if self.shortage is not None:
            if self.in_pool < threads.size:
                return      # a thread is free, or about to be
            raise PoolShortage(self.shortage)
        if wanted > threads.maxsize:
            return      # every slot busy: ``spawn`` waits for a thread (one task a runner: never)
        try:
            threads.size = wanted
        except (RuntimeError, MemoryError) as exc:      # "can't start new thread"
            started = threads.size
            why = (f"the threads pool cannot start thread {started + 1} of {threads.maxsize} (--concurrency) "
                   f"({type(exc).__name__}: {exc}): the process is at its limit on threads or memory (ulimit -u, "
                   f"ulimit -v: each thread reserves its stack); it runs on with the {started} it has")
            if started:     # kept (none at all: the next task tries again)
                self.shortage = why
                threads.maxsize = started       # gevent's spawn starts no more threads either
            raise PoolShortage(why) from exc

    def _touch(self, task_id: str) -> None:
        self.parts.inbox.call(self.parts.touch, task_id)

    def _call(self, job: Job) -> Outcome:
        """In a pool thread."""
        with self._count_lock:
            self.in_handlers += 1
        try:
            return self._call_counted(job)
        finally:
            with self._count_lock:
                self.in_handlers -= 1

    def _call_counted(self, job: Job) -> Outcome:
        try:
            with job.lock:
                job.handle = green.native_thread_ident()
            try:
                token = bind(job.context(self._touch))
                try:
                    return run_sync(job.fn, job.body)
                finally:
                    unbind(token)
            finally:
                with job.lock:
                    job.handle = None
        except Interrupted as exc:
            # set just as the handler returned: it was told to stop, so it stopped
            return interrupted(exc)

    def withdraw(self) -> list[Job]:
        return []       # a runner's handler starts at once: none waits here

    def interrupt(self, job: Job) -> None:
        reason = job.stop_reason
        with job.lock:
            ident = job.handle
            if ident is not None and reason is not None:
                raise_in_thread(ident, reason)

    def stop(self) -> None:
        """End the idle threads: wait for them (at most ``STOP_WAIT``) only
        when no thread is inside a handler; otherwise tell them to end and
        wait for none. A thread still inside a handler cannot be ended (its
        task is given back by the worker's BYE) and goes with the process.
        Before 2026-12-05 the stop waited ``STOP_WAIT`` for such a thread
        after the whole grace: the worker exited 2 s past its ``--grace``."""
        with self._count_lock:
            busy = self.in_handlers
        if busy:
            logger.warning("threads pool: %d handler thread(s) still running are abandoned (a thread cannot be "
                           "killed); they end with the process", busy)
        try:
            with green.Timeout(0 if busy else STOP_WAIT, False):
                self.threads.kill()     # asks each idle thread to end, then waits for every thread
        except Exception:
            logger.exception("stopping the handler threads failed")
