"""Durability of an append log: the fsync policy, group commit, durable callbacks, failure.

A :class:`Committer` makes the records :class:`~miyaq.store.log_segments.Segments`
wrote durable. One fsync runs at a time and covers everything written when it
starts (segments retired since the last one, the active one, the directory if
a file was created); callers that arrive meanwhile wait for it and then share
the next one. In ``interval`` mode a committer greenlet, spawned through the
owner's :class:`~miyaq.runtime.Supervisor`, fsyncs when there is something
to sync, at most once per ``interval`` (the first fsync after a quiet period
runs at once). What each mode promises is in :mod:`miyaq.store.log`.

Failure: an fsync that raises ``OSError`` (EIO, ENOSPC) *fails* the log. It
is logged, counted (``fsync_errors``), every waiter and every ``on_durable``
callback gets the error -- never a "durable" -- and the log refuses appends,
flushes and waits until its owner rewrites the state (a snapshot:
:meth:`recovered`). An fsync is never simply retried: after a failed
writeback Linux may mark the lost pages clean, so a second fsync can succeed
without the data being on disk ("fsyncgate"). Any other exception in the
committer greenlet (a bug) also fails the log, then propagates to the
supervisor, whose ``CRITICAL`` policy stops the process loudly.

Constraints: one thread, any number of its greenlets. fsyncs run on the hub's
thread pool when there is a hub (:class:`~miyaq.store.log_files.Blocking`),
so only the waiting greenlet waits. Callbacks run in the greenlet that
completed the fsync and may append.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from miyaq.errors import MiyaqError
from miyaq.runtime import CRITICAL, Supervisor, green, monotonic, wall
from miyaq.store.log_files import Blocking, fsync_dir
from miyaq.store.log_segments import SyncBatch

# A child of miyaq.store.log's logger: one object, one logging tree to configure.
logger = logging.getLogger("miyaq.store.log.commit")

__all__ = ["FSYNC_MODES", "Committer", "DurableCallback", "LogFailed", "SyncSource"]

FSYNC_MODES = ("always", "interval", "never")

DurableCallback = Callable[[int, "BaseException | None"], None]


class LogFailed(MiyaqError):
    """The log could not make its records durable (a failed fsync, or a write
    that could not be undone); it refuses appends until its state is rewritten."""

    code = "storage"


class SyncSource(Protocol):
    """What the committer needs from the files (:class:`~miyaq.store.log_segments.Segments`)."""

    last_seqno: int

    def sync_batch(self) -> SyncBatch: ...

    def synced(self, batch: SyncBatch, ok: bool) -> None: ...


class Committer:
    """fsync scheduling, waiting for a seqno, durable callbacks and the failed state."""

    def __init__(self, files: SyncSource, directory: str, mode: str, interval: float, *,
                 blocking: Blocking | None = None, clock: Callable[[], float] = monotonic) -> None:
        self.files = files
        self.directory = directory
        self.mode = mode
        self.interval = interval
        self.blocking = blocking or Blocking()
        self.clock = clock
        self.durable_seqno = 0
        self.fsyncs = 0
        self.fsync_errors = 0
        self.last_fsync: float | None = None   # wall clock, for status pages
        self.failed: BaseException | None = None
        self.closed = False
        self._syncing = False                    # an fsync is in flight (on the thread pool)
        self._changed = green.Event()            # replaced each time durable_seqno moves or the log fails
        self._callbacks: list[tuple[int, int, DurableCallback]] = []
        self._order = itertools.count()
        self._wake = green.Event()
        self._supervisor: Supervisor | None = None
        self._loop: Any = None
        self._loop_syncing = False
        self._next_sync_at = 0.0

    # -- lifecycle -------------------------------------------------------------
    def start(self, supervisor: Supervisor | None, durable_seqno: int) -> None:
        """Everything up to ``durable_seqno`` is on disk (replay fsynced it). In
        ``interval`` mode the commit loop is spawned through ``supervisor``
        the first time something needs syncing (``None``: no loop; records
        become durable only on an explicit :meth:`sync`)."""
        self.durable_seqno = durable_seqno
        self._supervisor = supervisor

    def close(self) -> None:
        """Stop the commit loop (never in the middle of an fsync) and wake every
        waiter; callbacks still pending get an error. The caller fsyncs first."""
        self.closed = True
        self._wake.set()
        if self._loop is not None and not self._loop_syncing:
            self._loop.kill(block=False)
        self._notify()
        self._fail_callbacks(MiyaqError(f"append log {self.directory} closed before the record was durable"))

    def wait_idle(self) -> None:
        """Return once no fsync is in flight (so its fds may be closed)."""
        while self._syncing:
            self._changed.wait()

    # -- the public waits --------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`LogFailed` if the log failed."""
        if self.failed is not None:
            raise self.failure()

    def failure(self) -> LogFailed:
        return LogFailed(f"append log {self.directory} failed ({self.failed}); it refuses appends until "
                         f"its state is rewritten (compact) or it is replayed",
                         reason=str(self.failed))

    def wait_durable(self, seqno: int, timeout: float | None = None) -> bool:
        """Block this greenlet until ``seqno`` is durable; False on timeout.
        Raises if the log fails or closes first. ``never`` mode: True at once."""
        deadline = None if timeout is None else self.clock() + timeout
        while True:
            self.check()
            if self.durable_seqno >= seqno or self.mode == "never":
                return True
            if self.closed:
                raise MiyaqError(f"append log {self.directory} closed before seqno {seqno} was durable")
            remaining = None if deadline is None else deadline - self.clock()
            if remaining is not None and remaining <= 0:
                return False
            self.kick()
            self._changed.wait(remaining)

    def on_durable(self, seqno: int, callback: DurableCallback) -> None:
        """``callback(seqno, None)`` once ``seqno`` is durable, ``callback(seqno, error)``
        if the log fails (or closes) first. Inline if already decided."""
        if self.failed is not None:
            self._run_callback(callback, seqno, self.failure())
        elif self.durable_seqno >= seqno or self.mode == "never":
            self._run_callback(callback, seqno, None)
        elif self.closed:
            self._run_callback(callback, seqno, MiyaqError(f"append log {self.directory} is closed"))
        else:
            heapq.heappush(self._callbacks, (seqno, next(self._order), callback))
            self.kick()

    # -- fsync ---------------------------------------------------------------------
    def sync(self, upto: int | None = None) -> None:
        """Return once every record up to ``upto`` (default: all written) is durable.

        Callers that arrive while an fsync runs wait for it, not for a lock,
        then start the next one together: no convoy, shared fsyncs."""
        upto = self.files.last_seqno if upto is None else upto
        while True:
            self.check()
            if self.durable_seqno >= upto:
                return
            if not self._syncing:
                break
            self._changed.wait()       # set when the running fsync ends, or fails
        self._syncing = True
        batch = self.files.sync_batch()
        try:
            self.blocking(self._fsync_all, batch.fds, batch.directory)
        except OSError as exc:
            self.files.synced(batch, ok=False)
            self._syncing = False
            self.fsync_errors += 1
            self.fail(exc)
            raise self.failure() from exc
        except BaseException:
            self.files.synced(batch, ok=False)
            self._syncing = False
            self._notify()
            raise
        self.files.synced(batch, ok=True)
        self._syncing = False
        self.fsyncs += 1
        self.last_fsync = wall()
        self.mark_durable(batch.upto)   # callbacks may append

    def _fsync_all(self, fds: list[int], directory: bool) -> None:
        for fd in fds:
            os.fsync(fd)
        if directory:
            fsync_dir(self.directory)

    def mark_durable(self, seqno: int) -> None:
        """Everything up to ``seqno`` is durable (an fsync or a snapshot): run its callbacks."""
        self.durable_seqno = max(self.durable_seqno, seqno)
        self._notify()
        while self._callbacks and self._callbacks[0][0] <= self.durable_seqno:
            ready, _, callback = heapq.heappop(self._callbacks)
            self._run_callback(callback, ready, None)

    # -- failure and recovery ------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        """Enter the failed state (first cause wins): log it, wake every waiter,
        give every pending callback the error."""
        if self.failed is None:
            self.failed = exc
            logger.error("append log %s: %s; refusing appends until the state is rewritten",
                         self.directory, exc)
        self._notify()
        self._fail_callbacks(self.failure())

    def recovered(self, seqno: int) -> None:
        """A durable snapshot now holds every record up to ``seqno``: leave the failed state."""
        if self.failed is not None:
            logger.warning("append log %s: recovered (state rewritten up to seqno %d)", self.directory, seqno)
        self.failed = None
        self.mark_durable(seqno)

    def _notify(self) -> None:
        changed, self._changed = self._changed, green.Event()
        changed.set()

    def _fail_callbacks(self, error: BaseException) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for seqno, _, callback in sorted(callbacks):
            self._run_callback(callback, seqno, error)

    @staticmethod
    def _run_callback(callback: DurableCallback, seqno: int, error: BaseException | None) -> None:
        try:
            callback(seqno, error)
        except Exception:
            logger.exception("append log: on_durable callback for seqno %s raised", seqno)

    # -- group commit ----------------------------------------------------------------------
    def kick(self) -> None:
        """Something was written: in ``interval`` mode, make sure the loop will fsync it."""
        if self.mode != "interval" or self.closed or self.failed is not None or self._supervisor is None:
            return
        if not self._wake.is_set():
            self._wake.set()
        if self._loop is None:
            self._loop = self._supervisor.spawn("log-committer", self._commit_loop, policy=CRITICAL)

    def _commit_loop(self) -> None:
        """Group commit: fsync when there is something to sync, at most once per interval.
        A failed fsync was handled by :meth:`sync`: the loop waits for the next kick
        (after recovery). Anything else fails the log and reaches the supervisor."""
        try:
            while not self.closed:
                self._wake.wait()
                self._wake.clear()
                delay = self._next_sync_at - self.clock()
                if delay > 0:
                    green.sleep(delay)
                if self.closed:
                    return
                if self.failed is not None:
                    continue
                self._loop_syncing = True
                try:
                    self.sync()
                except LogFailed:
                    pass         # logged, counted, waiters told; wait for recovery
                finally:
                    self._loop_syncing = False
                self._next_sync_at = self.clock() + self.interval
        except green.GreenletExit:
            raise
        except BaseException as exc:
            self.fail(exc)
            raise
        finally:
            self._loop = None
