"""The node's log writer: batches records into the append log, gates
acknowledgements on the write, and rides out disk faults.

Records are buffered by :meth:`LogWriter.add`; one writer greenlet appends
them in batches (``append_many``: one write, and with ``fsync=always`` one
fsync, per batch -- group commit). :meth:`LogWriter.after_written` runs a
release (a SUBMITTED reply, a replica's confirmation) once every record
added before it is written as the fsync policy promises; never earlier,
and never for a write that failed.

Disk faults (a full data dir, failing writes or fsyncs) put the writer in
the *refusing* state instead of stopping the node:

- :attr:`LogWriter.writable` turns False and :meth:`LogWriter.admit` raises
  :class:`~miyaq.errors.Busy` (``reason="storage"``, retryable: the client
  library retries it on another node) -- the node takes no new task;
- everything else goes on from memory: dispatch, results, status. Changes
  are not buffered meanwhile (memory stays bounded): the recovery rewrites
  the whole state;
- releases wait (at most ``max_held``; past that the oldest is dropped --
  an acknowledgement never sent only makes its sender resend; an
  at-most-once task's held DISPATCH (:meth:`~miyaq.core.dispatcher.Dispatcher.send_leased`)
  is never sent, and the task ends ``Lost`` at its lease's end, unrun);
- a probe (write and fsync a small file) runs with backoff, from
  ``PROBE_BACKOFF[0]`` to ``PROBE_BACKOFF[-1]`` seconds apart; once it
  succeeds the state is rewritten from memory as a snapshot
  (:meth:`~miyaq.store.log.AppendLog.compact`), held releases go out, and
  new tasks are taken again.

Counted in :meth:`LogWriter.stats` (``faults``, ``recoveries``,
``write_errors``, ``fsync_errors``, ...) and logged: one ERROR when the
fault starts, one WARNING when it ends.

Constraints: one thread; ``add`` and ``after_written`` never block or yield.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from miyaq.errors import Busy, MiyaqError, ShuttingDown
from miyaq.runtime import green, monotonic, wall
from miyaq.store.log import AppendLog, LogFailed, LogWriteError
from miyaq.store.log_files import write_all
from miyaq.store.log_format import PROBE_NAME

logger = logging.getLogger("miyaq.store.log.writer")

__all__ = ["LogWriter", "PROBE_BACKOFF"]

MAX_BATCH = 4096
MAX_HELD = 100_000
PROBE_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0)
PROBE_BYTES = 4096
HEALTH_CHECK = 1.0          # an idle writer still notices a background fsync failure this often
COMPACT_RETRY = 30.0        # after a failed compaction (the log itself is fine)

Release = Callable[[], None]
Refuse = Callable[[str], None]


class LogWriter:
    """Buffers a node's records and writes them; see the module docstring."""

    def __init__(self, log: AppendLog, snapshot: Callable[[], Iterable[dict[str, Any]]], *,
                 max_batch: int = MAX_BATCH, max_held: int = MAX_HELD, node_id: str = "") -> None:
        self.log = log
        # Who "cannot write its log" in a refusal: a client tries several nodes,
        # and its last try's error is the one its caller reads.
        self.who = f"node {node_id}" if node_id else "this node"
        self.snapshot = snapshot
        self.max_batch = max_batch
        self.max_held = max_held
        self.buffer: list[dict[str, Any]] = []
        self.batches = 0
        self.faults = 0
        self.recoveries = 0
        self.dropped_releases = 0
        self.fault: BaseException | None = None
        self.fault_since: float | None = None       # wall clock, for status pages
        self._added = 0                             # records ever added
        self._written = 0                           # ... of which written (or in a durable snapshot)
        # (records added before it, release, what to call instead when a fault starts: None, wait)
        self._waiting: deque[tuple[int, Release, Refuse | None]] = deque()
        self._wake = green.Event()
        self._closed = False
        self._late = False          # a record came after close (logged once)
        self._recovering = False
        self._probe_step = 0
        self._next_probe = 0.0
        self._next_compact = 0.0

    # -- what the node calls (never blocks) -------------------------------------------
    def add(self, record: dict[str, Any]) -> None:
        """Buffer one record for the next batch."""
        self._added += 1
        if self._closed:
            # Nothing changes state once the log closed (the node's core stops
            # first); a change that still comes is a bug, said once.
            if not self._late:
                self._late = True
                logger.error("a change came after the log closed; it is not on disk: %r", record)
            return
        if self.fault is not None and not self._recovering:
            return          # the recovery snapshot will hold this change
        self.buffer.append(record)
        self._wake.set()

    def after_written(self, release: Release, refuse: Refuse | None = None) -> None:
        """Run ``release`` once every record added so far is written. With
        ``refuse``, a write that fails first calls ``refuse(why)`` instead,
        at once (``why``: the cause in a few words), and ``release`` never:
        for an answer better given now than after the disk is back (a
        peer's REPLICATE: :meth:`miyaq.cluster.copies.Copies.on_replicate`)."""
        if self.fault is None and self._written >= self._added:
            release()
            return
        if len(self._waiting) >= self.max_held:
            self._waiting.popleft()
            self.dropped_releases += 1
        self._waiting.append((self._added, release, refuse))
        self._wake.set()

    @property
    def writable(self) -> bool:
        """False while a disk fault lasts: the node must take no new task."""
        return self.fault is None and self.log.writable and not self._closed

    def why_not_writable(self) -> str:
        """Why the log cannot be written now, in a few words ("No space left
        on device"); "" while it can. Never blocks (a peer's REPLICATE is
        refused with it at once: :meth:`miyaq.cluster.copies.Copies.on_replicate`)."""
        if self.writable:
            return ""
        if self._closed:
            return "its log is closed: the node is stopping"
        self._wake.set()         # a background fsync failure: let the writer see it now
        return _describe(self.fault or self.log.failure)

    def admit(self) -> None:
        """Raise :class:`~miyaq.errors.Busy` (retryable, ``reason="storage"``) unless writable
        (:class:`~miyaq.errors.ShuttingDown` once closed)."""
        if self.writable:
            return
        if self._closed:
            raise ShuttingDown("the node is stopping: its log is closed")
        self._wake.set()         # a background fsync failure: let the writer see it now
        cause = _describe(self.fault or self.log.failure)
        raise Busy(f"{self.who} cannot write its log ({cause}); it takes no new tasks until a write "
                   "succeeds -- retry on another node or later", reason="storage")

    # -- the writer greenlet ------------------------------------------------------------------
    def run(self) -> None:
        """The writer loop (spawn it through the node's supervisor)."""
        while not self._closed:
            self._wake.wait(self._idle_timeout())
            self._wake.clear()
            if self._closed:
                return
            if self.fault is None and not self.log.writable:
                self._enter_fault(self.log.failure or LogFailed("the log is not writable"))
            if self.fault is not None:
                if monotonic() >= self._next_probe:
                    self.recover()
                continue
            self.write_pending()
            if self.fault is None and self.log.should_compact() and monotonic() >= self._next_compact:
                self.compact()

    def _idle_timeout(self) -> float:
        if self.fault is not None:
            return max(0.0, self._next_probe - monotonic())
        return HEALTH_CHECK

    def write_pending(self) -> bool:
        """Append everything buffered and run the releases it unblocks; False
        if a disk fault stopped it (the writer is then refusing)."""
        while self.buffer and self.fault is None:
            batch, self.buffer = self.buffer[:self.max_batch], self.buffer[self.max_batch:]
            upto = self._added - len(self.buffer)
            try:
                self.log.append_many(batch)
            except (LogWriteError, LogFailed) as exc:
                self._enter_fault(exc)
                return False
            except BaseException:
                # Not a disk fault: a bug, and the writer dies with it (the node
                # stops). The batch goes back first: it was not written, and
                # nothing after this -- the node's close() as it stops -- may
                # take it for written and acknowledge it (before 2026-12-05 it did).
                self.buffer[:0] = batch
                raise
            self.batches += 1
            self._written = max(self._written, upto)
            self._release_upto(self._written)
        if self.fault is None and not self.buffer:
            self._written = max(self._written, self._added - len(self.buffer))
            self._release_upto(self._written)
        return self.fault is None

    def _release_upto(self, written: int) -> None:
        while self._waiting and self._waiting[0][0] <= written:
            _, release, _ = self._waiting.popleft()
            try:
                release()
            except Exception:
                logger.exception("a release after the log write failed (a bug: please report this traceback); the "
                                 "answer it was to send for records now written may not have gone: a client "
                                 "resends, an HTTP caller sees a timeout")

    # -- compaction -------------------------------------------------------------------------------
    def compact(self) -> bool:
        """Write what is buffered, then replace the log by a snapshot of the state.
        A failure is logged and retried after ``COMPACT_RETRY`` (the log stays usable).

        The state is copied at once (:meth:`~miyaq.store.table.TaskTable.snapshot`,
        about 0.4 µs a task, the only time the hub is held for the whole
        state); the snapshot is then encoded and written in slices of at most
        20 ms, the other greenlets running between them, and what they change
        meanwhile is appended between the slices, after the snapshot's seqno
        (acknowledgements keep going out). A disk fault meanwhile stops the
        compaction (the recovery rewrites the state)."""
        if not self.write_pending():
            return False
        while self.buffer:      # a release changed state: the snapshot's seqno must cover its record
            if not self.write_pending():
                return False
        started = monotonic()
        try:
            records = self.snapshot()       # the state now, copied without yielding
            copied = monotonic()
            seqno = self.log.compact(records, between=self._write_during_compaction)
        except (OSError, MiyaqError) as exc:
            self._next_compact = monotonic() + COMPACT_RETRY
            if self.fault is not None:
                logger.info("log compaction stopped by the disk fault (%s)", exc)
                return False
            if self._closed:    # the node stops: a clean stop, not a failure (before 2026-12-05 a WARNING)
                logger.info("log compaction stopped with the node (its log closed meanwhile); nothing is "
                            "lost: the log it would have replaced is replayed at the next start")
                return False
            logger.warning("log compaction failed (%s); the log keeps growing, next try in %.0fs",
                           exc, COMPACT_RETRY)
            return False
        logger.info("log compacted at record %d in %.2fs (the state copied in %.3fs; the node served "
                    "meanwhile)", seqno, monotonic() - started, copied - started)
        return True

    def _write_during_compaction(self) -> None:
        """Between two slices of a compaction: append what was buffered meanwhile
        (to the segment after the snapshot) and send the releases it unblocks,
        so acknowledgements do not wait for the whole compaction. A disk fault
        stops the compaction: the recovery rewrites the whole state anyway."""
        if not self.write_pending():
            raise MiyaqError("a disk fault stopped the compaction")

    # -- faults -----------------------------------------------------------------------------------
    def _enter_fault(self, exc: BaseException) -> None:
        if self.fault is None:
            self.fault = exc
            self.fault_since = wall()
            self.faults += 1
            logger.error("the node's log cannot be written (%s): refusing new tasks and serving the ones it "
                         "holds; retrying with backoff (%d acknowledgements wait for the write)",
                         exc, len(self._waiting))
        self.buffer = []
        self._probe_step = 0
        self._next_probe = monotonic() + PROBE_BACKOFF[0]
        self._refuse_waiting(_describe(self.fault))

    def _refuse_waiting(self, why: str) -> None:
        """A fault started: the releases given a ``refuse`` are refused now
        (the others wait for the recovery)."""
        if not any(refuse is not None for _, _, refuse in self._waiting):
            return
        kept: deque[tuple[int, Release, Refuse | None]] = deque()
        refused: list[Refuse] = []
        for held in self._waiting:
            if held[2] is None:
                kept.append(held)
            else:
                refused.append(held[2])
        self._waiting = kept
        for refuse in refused:
            try:
                refuse(why)
            except Exception:
                logger.exception("refusing an answer held for the log failed (a bug: please report this "
                                 "traceback); its asker hears silence")

    def recover(self) -> bool:
        """Probe the disk; if it takes a write, rewrite the state from memory and
        resume. Returns True when the writer is no longer refusing."""
        if self.fault is None:
            return True
        try:
            self._probe()
            mark = self._added
            self._recovering = True
            self.buffer = []
            self.log.compact(self.snapshot())
        except (OSError, MiyaqError) as exc:
            delay = PROBE_BACKOFF[min(self._probe_step, len(PROBE_BACKOFF) - 1)]
            self._probe_step += 1
            self._next_probe = monotonic() + delay
            logger.debug("log still not writable (%s); next try in %.2fs", exc, delay)
            return False
        finally:
            self._recovering = False
        logger.warning("the node's log is writable again (fault: %s, since %.1fs ago): state rewritten, "
                       "taking new tasks", self.fault, wall() - (self.fault_since or wall()))
        self.fault = None
        self.fault_since = None
        self.recoveries += 1
        self._written = max(self._written, mark)
        self._release_upto(self._written)
        if self.buffer:
            self._wake.set()
        return True

    def _probe(self) -> None:
        path = os.path.join(self.log.directory, PROBE_NAME)   # replay deletes a leftover one
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)

    # -- shutdown and views -----------------------------------------------------------------------
    def close(self) -> None:
        """Write what is buffered (rewriting the state if a fault lasts), then close the log."""
        try:
            if not self.write_pending():
                self.recover()
                self.write_pending()
            if self.fault is not None:
                logger.error("stopping with a log that cannot be written (%s): changes since the fault are "
                             "not on disk (acknowledgements for them were never sent)", self.fault)
        finally:
            self._closed = True
            self._wake.set()
            self.log.close()

    def stats(self) -> dict[str, Any]:
        log = self.log.stats()
        return {"writable": self.writable, "error": None if self.fault is None else str(self.fault),
                "fault_since": self.fault_since, "faults": self.faults, "recoveries": self.recoveries,
                "held_releases": len(self._waiting), "dropped_releases": self.dropped_releases,
                "batches": self.batches, "write_errors": log["write_errors"], "fsync_errors": log["fsync_errors"],
                "compaction_errors": log["compaction_errors"], "bytes": log["bytes"], "fsync": log["fsync"]}


def _describe(exc: BaseException | None) -> str:
    """The OS error behind a log failure, in a few words ("No space left on device")."""
    seen = exc
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror
    return "closed" if exc is None else str(exc)
