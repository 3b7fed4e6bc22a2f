"""Append-only log of a node's state changes, so a restarted node can rebuild its task table.

Files, all in one ``directory`` (framing: :mod:`miyaq.store.log_format`):

- ``log-<first_seqno:020d>.mq``: segments of records, seqnos consecutive; a
  new segment starts before a write would take the current one past
  ``segment_bytes`` (a segment is larger only when one batch or record alone
  is larger).
- ``snap-<seqno:020d>.mq``: the live state as of record ``seqno``, written by
  :meth:`AppendLog.compact` to ``*.tmp`` + fsync + rename + directory fsync.
- ``LOCK``: ``flock``-ed while open, so two processes never share a log.

Each record gets a sequence number (1, 2, ...). Replay yields the newest
valid snapshot's records, then every segment record after it, in order.

Durability -- what survives:

- ``kill -9`` of the process, any mode: every record whose ``append`` returned.
  ``append`` hands the frame to the kernel with write(2) before returning;
  nothing is buffered in the process.
- Power loss or kernel crash:
  ``always``: every record whose ``append`` returned (write + fsync first).
  ``interval`` (group commit): every record that :meth:`wait_durable` or
  :meth:`on_durable` confirmed; of the rest, at most the records appended
  since the last fsync (about ``interval_ms``, plus one fsync's duration)
  are lost. The first fsync after a quiet period runs at once; after that at
  most one fsync per ``interval_ms``.
  ``never``: whatever the kernel had written back (Linux: dirty pages older
  than ~30 s). ``flush()`` and ``close()`` still fsync the active segment;
  ``wait_durable``/``on_durable`` confirm at once in this mode.
- A new segment or snapshot counts as durable only after its directory is
  fsynced, which is part of the next fsync.

Damage found by replay is reported (``logger.warning``/``error`` with path
and offset, counters ``corrupt_records`` and ``truncated_bytes``), never fatal:

- Last segment: a torn or corrupt tail (short header, short payload, bad
  crc, bad msgpack, wrong seqno) is cut off at the last good record and
  appending continues there. If good frames follow the damage (media
  corruption rather than a torn write), the cut bytes are first saved to
  ``<segment>.damaged-<offset>``; if they cannot be (a full disk), nothing
  is cut: the segment is kept whole and treated as an older one (below).
- Older segment: replay of that segment stops at the bad record and
  continues with the next segment; the file is left as it is. Records between
  the damage and the next segment are lost (a "gap" warning says which
  seqnos). Stopping, not skipping, keeps replay to records we can prove are
  in order. Such a segment never takes appends again; one damaged at its
  first record with nothing logged after it is renamed whole to
  ``<segment>.damaged-0`` (the next record takes its name).
- Snapshot: a snapshot that fails validation (checked fully before any of
  it is yielded) is renamed ``*.bad`` and the next older one is used; if none
  is valid, the valid prefix of the newest one is replayed.
- ``snap-*.mq.tmp`` files (a compaction that crashed before its rename) and
  the writer's ``probe.tmp`` are deleted (any other file is left alone);
  segments and snapshots left behind by a compaction that crashed before
  deleting them are deleted after replay. A crash at any point of
  compaction therefore replays to the same state.
- A file that cannot be opened or read at all (a read-only directory, a
  segment replaced by a directory, an I/O error) is not repaired: replay
  raises MiyaqError naming it, and the node does not start.

gevent: fsyncs run on the gevent hub's native threadpool when the calling
thread has a hub (``offload_fsync=None``, the default), so only the calling
greenlet waits and the event loop keeps serving; without a hub they run
inline. ``interval`` mode commits from a greenlet spawned through the
:class:`~miyaq.runtime.Supervisor` the owner hands in (the log makes its
own when none is given); in a program that never runs the hub, records
become durable on ``wait_durable``, ``flush`` or ``close``. In ``always``
mode ``append`` may yield to other greenlets while its fsync runs
(concurrent appends share one fsync); in the other modes it never yields.
Writes run inline; ``compact`` encodes and writes its snapshot in slices
and yields to the hub between them (at most ``green.HUB_SLICE``, 20 ms, of
encoding at a time), so its records must be a copy that does not change.

Failures (each logged and counted in :meth:`AppendLog.stats`):

- A write that fails (ENOSPC, EIO) is undone -- the segment is truncated
  back -- and ``append`` raises :class:`LogWriteError`: those records are
  not logged, the log stays usable (``write_errors``).
- An fsync that fails, or a write that cannot be undone, *fails* the log
  (``fsync_errors``, :attr:`AppendLog.failure`): waiters and ``on_durable``
  callbacks get the error, never a "durable", and appends, flushes and waits
  raise :class:`LogFailed` -- the page cache can no longer be trusted.
  :meth:`AppendLog.compact` with the owner's live state recovers it: the
  snapshot is written from memory, the failed segments are deleted, appends
  resume. Replaying the directory (a restart) also starts afresh.

The log is composed of parts with their own state, each tested alone:
:class:`~miyaq.store.log_replay.Scanner` (opening: lock, scan, replay,
repair), :class:`~miyaq.store.log_segments.Segments` (the files, appending,
rotation), :class:`~miyaq.store.log_commit.Committer` (fsync policy, group
commit, durable callbacks, the failed state) and
:class:`~miyaq.store.log_compact.Snapshotter` (compaction). Each logs to a
child of this module's logger. :class:`AppendLog` composes them.

Constraints: not thread-safe -- use an instance from one thread (any number
of its greenlets).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

from miyaq.errors import ConfigError, MiyaqError
from miyaq.runtime import Supervisor
from miyaq.store.log_commit import FSYNC_MODES, Committer, DurableCallback, LogFailed
from miyaq.store.log_compact import Snapshotter
from miyaq.store.log_files import Blocking, MiB, fsync_dir
from miyaq.store.log_format import KIND_RECORD, encode_record
from miyaq.store.log_replay import LogEntry, Scanner, unusable
from miyaq.store.log_segments import LogWriteError, Segments

__all__ = ["FSYNC_MODES", "AppendLog", "DurableCallback", "LogEntry", "LogFailed", "LogWriteError"]

logger = logging.getLogger(__name__)


class AppendLog:
    """Segmented, checksummed, append-only record log with snapshots. See the module docstring.

    ``supervisor`` spawns the ``interval`` mode's committer greenlet (a
    ``CRITICAL`` one: a bug in it stops the process loudly); pass the owner's."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fsync: str = "interval",
        interval_ms: float = 10,
        segment_bytes: int = 64 * MiB,
        max_record_bytes: int = 16 * MiB,
        compact_after_records: int = 1_000_000,
        compact_after_bytes: int = 1024 * MiB,
        offload_fsync: bool | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ConfigError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        for name, value in (("segment_bytes", segment_bytes), ("max_record_bytes", max_record_bytes),
                            ("compact_after_records", compact_after_records),
                            ("compact_after_bytes", compact_after_bytes)):
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, not {value!r}")
        if not interval_ms >= 0:
            raise ConfigError(f"interval_ms must be >= 0, not {interval_ms!r}")
        self.directory = os.fspath(directory)
        self.fsync_mode = fsync
        self.max_record_bytes = max_record_bytes
        self.write_errors = 0
        self._own_supervisor = supervisor is None
        self._supervisor = supervisor or Supervisor(f"log {self.directory}")
        blocking = Blocking(offload_fsync)
        self._blocking = blocking
        self._state = "new"  # new -> replaying -> ready -> closed
        self._scanner = Scanner(self.directory, blocking=blocking)
        self._segments = Segments(self.directory, segment_bytes, close_retired_at_once=fsync == "never")
        self._committer = Committer(self._segments, self.directory, fsync, interval_ms / 1000.0, blocking=blocking)
        self._snapshotter = Snapshotter(self.directory, self._segments, self._committer,
                                        max_record_bytes=max_record_bytes, after_records=compact_after_records,
                                        after_bytes=compact_after_bytes, blocking=blocking)

    # -- opening -------------------------------------------------------------
    def replay(self) -> Iterator[dict[Any, Any]]:
        """Yield every record (snapshot first); when exhausted the log is ready to append."""
        for entry in self.replay_entries():
            yield entry.record

    def replay_entries(self) -> Iterator[LogEntry]:
        """Like :meth:`replay`, with seqnos and whether a record came from the snapshot."""
        if self._state != "new":
            raise MiyaqError(f"replay() runs once per AppendLog; this one is {self._state}")
        self._state = "replaying"
        yield from self._scanner.entries()
        opened = self._scanner.opened
        try:
            self._segments.adopt(opened.segments, opened.last_seqno)   # opens the last segment to append
            self._snapshotter.adopt(opened.snapshot)
            if self._segments.active is not None:  # a killed process may have left it in the page cache only
                self._blocking(os.fsync, self._segments.active.fd)
            self._blocking(fsync_dir, self.directory)
        except OSError as exc:     # its last segment readable, not writable: one line, not a traceback
            raise unusable(self.directory, exc) from exc
        self._committer.start(self._supervisor, opened.last_seqno)
        self._state = "ready"

    @property
    def truncated_bytes(self) -> int:
        """Bytes cut off torn or corrupt tails during replay."""
        return self._scanner.truncated_bytes

    @property
    def corrupt_records(self) -> int:
        """Damaged records and snapshots found during replay."""
        return self._scanner.corrupt_records

    # -- appending -----------------------------------------------------------
    def append(self, record: dict[Any, Any]) -> int:
        """Log one record; returns its seqno (durable already in ``always`` mode)."""
        return self.append_many((record,))

    def append_many(self, records: Iterable[dict[Any, Any]]) -> int:
        """Log records with one write (per segment) and one fsync; returns the last seqno.

        Nothing is written if any record is refused (not a dict, not msgpack,
        too big: :class:`MiyaqError`). A failed write raises
        :class:`LogWriteError`; if a batch spans segments, the part written to
        earlier ones stays logged (``details["logged"]`` records)."""
        self._check_writable()
        first = self._segments.last_seqno + 1
        frames = [encode_record(KIND_RECORD, seqno, rec, self.max_record_bytes)
                  for seqno, rec in enumerate(records, first)]
        if not frames:
            return self._segments.last_seqno
        try:
            last = self._segments.write(first, frames)
        except LogWriteError as exc:
            self.write_errors += 1
            logger.error("append log %s: %s", self.directory, exc.message)
            if not exc.details.get("undone", True):
                self._committer.fail(exc)
            if self._segments.last_seqno >= first:
                self._committer.kick()   # the part that was written
            raise
        if self.fsync_mode == "always":
            self._committer.sync(upto=last)
        else:
            self._committer.kick()
        return last

    def _check_writable(self) -> None:
        self._committer.check()
        self._check_open()

    def _check_open(self) -> None:
        if self._state == "closed":
            raise MiyaqError(f"append log {self.directory} is closed")
        if self._state != "ready":
            raise MiyaqError(f"append log {self.directory} is {self._state}; consume replay() before appending")

    @property
    def writable(self) -> bool:
        """True when appends are taken: replayed, not closed, not failed."""
        return self._state == "ready" and self._committer.failed is None

    @property
    def failure(self) -> BaseException | None:
        """Why the log failed (the first cause), or None."""
        return self._committer.failed

    # -- durability ---------------------------------------------------------------
    @property
    def last_seqno(self) -> int:
        return self._segments.last_seqno

    @property
    def durable_seqno(self) -> int:
        """Highest seqno known to be on stable storage (fsynced, or in a durable snapshot)."""
        return self._committer.durable_seqno

    def flush(self) -> int:
        """fsync now (any mode); returns the durable seqno."""
        self._check_writable()
        self._committer.sync()
        return self._committer.durable_seqno

    def wait_durable(self, seqno: int, timeout: float | None = None) -> bool:
        """Block this greenlet until ``seqno`` is durable; False on timeout.

        Raises :class:`LogFailed` if the log failed first, MiyaqError if it
        closed first. In ``never`` mode it returns True at once (the mode
        promises nothing more)."""
        if seqno > self._segments.last_seqno:
            raise MiyaqError(f"seqno {seqno} was never appended (last is {self._segments.last_seqno})")
        return self._committer.wait_durable(seqno, timeout)

    def on_durable(self, seqno: int, callback: DurableCallback) -> None:
        """Call ``callback(seqno, None)`` once ``seqno`` is durable, or ``callback(seqno, error)``
        if the log fails first. Runs inline if already durable, else in the committing greenlet."""
        self._committer.on_durable(seqno, callback)

    # -- compaction -------------------------------------------------------------------
    def should_compact(self) -> bool:
        """True when the records or bytes since the snapshot passed their thresholds."""
        return self._snapshotter.should_compact()

    def compact(self, snapshot_records: Iterable[dict[Any, Any]],
                between: Callable[[], None] | None = None) -> int:
        """Replace everything logged so far by ``snapshot_records`` (the live state as of
        :attr:`last_seqno`); returns the snapshot's seqno. On a failed log this is
        the recovery: the state is rewritten from memory and appends resume.

        ``snapshot_records`` must be the state at :attr:`last_seqno` and must
        not change as it is read: other greenlets run while it is encoded and
        written (the compaction yields to the hub between slices of at most
        ``green.HUB_SLICE``; the fsyncs are offloaded), so pass a copy taken
        before the call (:meth:`miyaq.store.table.TaskTable.snapshot`), never a
        generator over live state. Appends made meanwhile go to a new segment
        and survive. On error nothing changes but the active segment is
        rolled; a :meth:`close` meanwhile stops it (MiyaqError). ``between``
        runs after each yield, in the compacting greenlet: the owner appends
        what it buffered meanwhile (:mod:`miyaq.store.log_compact`)."""
        self._check_open()
        return self._snapshotter.compact(snapshot_records, between)

    # -- introspection and shutdown ------------------------------------------
    def stats(self) -> dict[str, Any]:
        segments, snapshot, committer = self._segments, self._snapshotter, self._committer
        segment_bytes = segments.total_bytes()
        return {
            "fsync": self.fsync_mode,
            "bytes": segment_bytes + snapshot.current.size,
            "segments": len(segments.files),
            "segment_bytes": segment_bytes,
            "snapshot_seqno": snapshot.current.seqno,
            "snapshot_bytes": snapshot.current.size,
            "records_since_snapshot": snapshot.records_since,
            "last_seqno": segments.last_seqno,
            "durable_seqno": committer.durable_seqno,
            "fsyncs": committer.fsyncs,
            "last_fsync": committer.last_fsync,
            "write_errors": self.write_errors,
            "fsync_errors": committer.fsync_errors,
            "compactions": snapshot.compactions,
            "compaction_errors": snapshot.errors,
            "failed": None if committer.failed is None else str(committer.failed),
            "truncated_bytes": self.truncated_bytes,
            "corrupt_records": self.corrupt_records,
        }

    def close(self) -> None:
        """fsync (every mode, unless failed) and close; idempotent."""
        if self._state == "closed":
            return
        was_ready = self._state == "ready"
        self._state = "closed"
        self._snapshotter.close()     # a compaction in progress stops at its next slice
        try:
            if was_ready and self._committer.failed is None:
                self._committer.sync()
        finally:
            self._committer.close()
            self._committer.wait_idle()   # an fsync still on the thread pool must not see its fd closed
            self._segments.close()
            self._scanner.unlock()
            if self._own_supervisor:
                self._supervisor.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
