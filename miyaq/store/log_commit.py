"""Durability of an append log: fsync, group commit, waiting for a seqno
(a part of :class:`~miyaq.store.log.AppendLog`).

One fsync runs at a time and covers everything written when it starts
(segments retired since the last one, the active one, the directory if a file
was created); callers that arrive meanwhile wait for it and then share the
next one. In ``interval`` mode one committer greenlet fsyncs when there is
something to sync, at most once per ``interval_ms`` (the first fsync after a
quiet period runs at once). What each mode promises is in the module
docstring of :mod:`miyaq.store.log`.

Constraints: fsyncs run on the gevent hub's threadpool when there is a hub,
so only the waiting greenlet waits. After a failed fsync the log refuses
appends, flushes and waits (the page cache can no longer be trusted) and
``on_durable`` callbacks get the error. Callbacks run in the greenlet that
completed the fsync and may append.
"""
from __future__ import annotations

import heapq
import logging
import os
import time

import gevent
import gevent.event

from miyaq.errors import MiyaqError
from miyaq.store.log_state import DurableCallback, LogState, fsync_dir

# A child of miyaq.store.log's logger: one object, one logging tree to configure.
logger = logging.getLogger("miyaq.store.log.commit")


class GroupCommit(LogState):
    """fsync scheduling and durability notifications."""

    @property
    def last_seqno(self) -> int:
        return self._last_seqno

    @property
    def durable_seqno(self) -> int:
        """Highest seqno known to be on stable storage (fsynced)."""
        return self._durable_seqno

    def flush(self) -> int:
        """fsync now (any mode); returns the durable seqno."""
        self._check_writable()
        self._sync()
        return self._durable_seqno

    def wait_durable(self, seqno: int, timeout: float | None = None) -> bool:
        """Block this greenlet until ``seqno`` is durable; False on timeout.

        Raises MiyaqError if the log failed or closed first. In ``never`` mode
        it returns True at once (the mode promises nothing more)."""
        if seqno > self._last_seqno:
            raise MiyaqError(f"seqno {seqno} was never appended (last is {self._last_seqno})")
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            if self._failed is not None:
                raise self._failure()
            if self._durable_seqno >= seqno or self.fsync_mode == "never":
                return True
            if self._state == "closed":
                raise MiyaqError(f"append log {self.directory} closed before seqno {seqno} was durable")
            remaining = None if deadline is None else deadline - self._clock()
            if remaining is not None and remaining <= 0:
                return False
            self._kick_committer()
            self._durable_changed.wait(remaining)

    def on_durable(self, seqno: int, callback: DurableCallback) -> None:
        """Call ``callback(seqno, None)`` once ``seqno`` is durable, or ``callback(seqno, error)``
        if the log fails first. Runs inline if already durable, else in the committing greenlet."""
        if self._failed is not None:
            self._run_callback(callback, seqno, self._failure())
        elif self._durable_seqno >= seqno or self.fsync_mode == "never":
            self._run_callback(callback, seqno, None)
        else:
            heapq.heappush(self._callbacks, (seqno, next(self._callback_order), callback))
            self._kick_committer()

    @staticmethod
    def _run_callback(callback: DurableCallback, seqno: int, error: BaseException | None) -> None:
        try:
            callback(seqno, error)
        except Exception:
            logger.exception("append log: on_durable callback for seqno %s raised", seqno)

    def _sync(self, upto: int | None = None) -> None:
        """Return once every record up to ``upto`` (default: all written so far) is durable.

        One fsync runs at a time and covers everything written when it starts
        (segments retired since the last one, the active one, the directory if
        a file was created). Callers that arrive meanwhile wait for it, not for
        a lock, then start the next one together: no convoy, shared fsyncs."""
        upto = self._last_seqno if upto is None else upto
        while True:
            if self._failed is not None:
                raise self._failure()
            if self._durable_seqno >= upto:
                return
            if not self._sync_lock.locked():
                break
            self._durable_changed.wait()  # set when the running fsync ends, or fails
        with self._sync_lock:
            target = self._last_seqno
            retired, self._retired = self._retired, []
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            fds = [seg.fd for seg in retired]
            if self._active is not None:
                fds.append(self._active.fd)
            try:
                self._blocking(self._fsync_all, fds, dir_dirty)
            except OSError as exc:
                self._fail(exc)
                raise self._failure() from exc
            finally:
                for seg in retired:
                    os.close(seg.fd)
                    seg.fd = -1
            self._fsyncs += 1
            self._last_fsync = time.time()
        self._mark_durable(target)  # outside the lock: callbacks may append

    def _fsync_all(self, fds: list[int], directory: bool) -> None:
        for fd in fds:
            os.fsync(fd)
        if directory:
            fsync_dir(self.directory)

    def _mark_durable(self, seqno: int) -> None:
        self._durable_seqno = max(self._durable_seqno, seqno)
        changed, self._durable_changed = self._durable_changed, gevent.event.Event()
        changed.set()
        while self._callbacks and self._callbacks[0][0] <= self._durable_seqno:
            ready, _, callback = heapq.heappop(self._callbacks)
            self._run_callback(callback, ready, None)

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = exc
            logger.error("append log %s: fsync/write failed (%s); refusing further appends -- restart the "
                         "node to replay the log", self.directory, exc)
        self._durable_changed.set()
        callbacks, self._callbacks = self._callbacks, []
        for seqno, _, callback in sorted(callbacks):
            self._run_callback(callback, seqno, self._failure())

    def _kick_committer(self) -> None:
        if self.fsync_mode != "interval" or self._state != "ready":
            return
        if not self._wake.is_set():
            self._wake.set()
        if self._committer is None:
            self._committer = gevent.spawn(self._commit_loop)

    def _commit_loop(self) -> None:
        """Group commit: fsync when there is something to sync, at most once per interval."""
        try:
            while self._state == "ready" and self._failed is None:
                self._wake.wait()
                self._wake.clear()
                delay = self._next_sync_at - self._clock()
                if delay > 0:
                    gevent.sleep(delay)
                if self._state != "ready":
                    return
                self._committer_syncing = True
                try:
                    self._sync()
                except MiyaqError:
                    return  # already reported by _fail; waiters were woken
                finally:
                    self._committer_syncing = False
                self._next_sync_at = self._clock() + self.interval
        except gevent.GreenletExit:
            pass
