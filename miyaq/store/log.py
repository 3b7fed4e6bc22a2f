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
  ``<segment>.damaged-<offset>``.
- Older segment: replay of that segment stops at the bad record and
  continues with the next segment; the file is left as it is. Records between
  the damage and the next segment are lost (a "gap" warning says which
  seqnos). Stopping, not skipping, keeps replay to records we can prove are
  in order.
- Snapshot: a snapshot that fails validation (checked fully before any of
  it is yielded) is renamed ``*.bad`` and the next older one is used; if none
  is valid, the valid prefix of the newest one is replayed.
- ``*.tmp`` files (a compaction that crashed before its rename) are deleted;
  segments and snapshots left behind by a compaction that crashed before
  deleting them are deleted after replay. A crash at any point of
  compaction therefore replays to the same state.

gevent: fsyncs run on the gevent hub's native threadpool when the calling
thread has a hub (``offload_fsync=None``, the default), so only the calling
greenlet waits and the event loop keeps serving; without a hub they run
inline. ``interval`` mode commits from a greenlet; in a program that never
runs the hub, records become durable on ``wait_durable``, ``flush`` or
``close``. In ``always`` mode ``append`` may yield to other greenlets while
its fsync runs (concurrent appends share one fsync); in the other modes it
never yields. Writes (and ``compact``'s snapshot encoding) run inline.

The class is written in parts: appending and lifecycle here, opening in
:mod:`~miyaq.store.log_replay`, fsync in :mod:`~miyaq.store.log_commit`,
snapshots in :mod:`~miyaq.store.log_compact` (their shared state in
:mod:`~miyaq.store.log_state`); each part logs to a child of this module's
logger.

Constraints: not thread-safe -- use an instance from one thread (any number
of its greenlets). After a failed fsync (or a write that could not be undone)
the log refuses appends, flushes and waits -- the page cache can no longer be
trusted -- and ``on_durable`` callbacks get the error; restart and replay.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, Self

import gevent
import gevent.event
import gevent.lock

from miyaq.errors import ConfigError, MiyaqError
from miyaq.store.log_commit import GroupCommit
from miyaq.store.log_compact import Compaction
from miyaq.store.log_format import (  # re-exported: these were importable from here
    KIND_RECORD,
    KIND_SNAP_BEGIN,
    KIND_SNAP_END,
    KIND_SNAP_RECORD,
    SEGMENT_RE,
    SNAPSHOT_RE,
    Buffer,
    FrameError,
    encode,
    find_next_frame,
    frame,
    iter_frames,
    pack_payload,
    segment_name,
    snapshot_name,
    walk_snapshot,
)
from miyaq.store.log_replay import LogEntry, LogReplay
from miyaq.store.log_state import DurableCallback, MiB, Segment, write_all

__all__ = [
    "FSYNC_MODES",
    "KIND_RECORD",
    "KIND_SNAP_BEGIN",
    "KIND_SNAP_END",
    "KIND_SNAP_RECORD",
    "SEGMENT_RE",
    "SNAPSHOT_RE",
    "AppendLog",
    "Buffer",
    "DurableCallback",
    "FrameError",
    "LogEntry",
    "MiB",
    "encode",
    "find_next_frame",
    "frame",
    "iter_frames",
    "pack_payload",
    "segment_name",
    "snapshot_name",
    "walk_snapshot",
]

logger = logging.getLogger(__name__)

FSYNC_MODES = ("always", "interval", "never")


class AppendLog(LogReplay, GroupCommit, Compaction):
    """Segmented, checksummed, append-only record log with snapshots. See the module docstring."""

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
        self.interval = interval_ms / 1000.0
        self.segment_bytes = segment_bytes
        self.max_record_bytes = max_record_bytes
        self.compact_after_records = compact_after_records
        self.compact_after_bytes = compact_after_bytes
        self.offload_fsync = offload_fsync
        self.truncated_bytes = 0
        self.corrupt_records = 0
        self._clock: Callable[[], float] = time.monotonic
        self._state = "new"  # new -> replaying -> ready -> closed
        self._lock_fd = -1
        self._segments: list[Segment] = []  # after the snapshot, in order; last may be active
        self._active: Segment | None = None
        self._retired: list[Segment] = []  # still open: fsync then close at the next sync
        self._snapshot_seqno = 0
        self._snapshot_bytes = 0
        self._snapshot_path: str | None = None
        self._snapshot_valid = True
        self._bad_snapshots: list[str] = []
        self._last_seqno = 0
        self._durable_seqno = 0
        self._records_since_snapshot = 0
        self._dir_dirty = False
        self._failed: BaseException | None = None
        self._fsyncs = 0
        self._last_fsync: float | None = None
        self._sync_lock = gevent.lock.Semaphore(1)
        self._durable_changed = gevent.event.Event()
        self._callbacks: list[tuple[int, int, DurableCallback]] = []
        self._callback_order = itertools.count()
        self._wake = gevent.event.Event()
        self._committer: gevent.Greenlet | None = None
        self._committer_syncing = False
        self._next_sync_at = 0.0
        self._compacting = False

    # -- appending -----------------------------------------------------------

    def append(self, record: dict[Any, Any]) -> int:
        """Log one record; returns its seqno (durable already in ``always`` mode)."""
        return self.append_many((record,))

    def append_many(self, records: Iterable[dict[Any, Any]]) -> int:
        """Log records with one write (per segment) and one fsync; returns the last seqno.

        Nothing is written if any record is refused. If a batch spans segments
        and a later write fails, the earlier part stays logged."""
        self._check_writable()
        first = self._last_seqno + 1
        frames = [self._encode(KIND_RECORD, seqno, rec) for seqno, rec in enumerate(records, first)]
        if not frames:
            return self._last_seqno
        i = 0
        while i < len(frames):
            seg = self._active
            if seg is None or (seg.size > 0 and seg.size + len(frames[i]) > self.segment_bytes):
                seg = self._roll(first + i)
            j, size = i + 1, seg.size + len(frames[i])
            while j < len(frames) and size + len(frames[j]) <= self.segment_bytes:
                size += len(frames[j])
                j += 1
            self._write(seg, frames[i] if j == i + 1 else b"".join(frames[i:j]))
            self._last_seqno = first + j - 1
            self._records_since_snapshot += j - i
            i = j
        last = self._last_seqno  # other greenlets may append while this one waits for its fsync
        if self.fsync_mode == "always":
            self._sync(upto=last)
        elif self.fsync_mode == "interval":
            self._kick_committer()
        return last

    def _write(self, seg: Segment, data: bytes) -> None:
        try:
            write_all(seg.fd, data)
        except OSError as exc:
            try:
                os.ftruncate(seg.fd, seg.size)
            except OSError:
                self._fail(exc)
            raise MiyaqError(f"append log write to {seg.path} failed ({exc}); the records were not logged") from exc
        seg.size += len(data)

    def _roll(self, first: int) -> Segment:
        if self._active is not None:
            self._retire(self._active)
        path = os.path.join(self.directory, segment_name(first))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise MiyaqError(f"append log segment {path} already exists; refusing to overwrite it") from None
        seg = Segment(first, path, 0, fd)
        self._segments.append(seg)
        self._active = seg
        self._dir_dirty = True
        return seg

    def _retire(self, seg: Segment) -> None:
        self._active = None
        if self.fsync_mode == "never" and not self._sync_lock.locked():
            os.close(seg.fd)
            seg.fd = -1
        else:
            self._retired.append(seg)

    # -- introspection and shutdown ------------------------------------------

    def stats(self) -> dict[str, Any]:
        segment_bytes = self._segment_bytes_total()
        return {
            "fsync": self.fsync_mode,
            "bytes": segment_bytes + self._snapshot_bytes,
            "segments": len(self._segments),
            "segment_bytes": segment_bytes,
            "snapshot_seqno": self._snapshot_seqno,
            "snapshot_bytes": self._snapshot_bytes,
            "records_since_snapshot": self._records_since_snapshot,
            "last_seqno": self._last_seqno,
            "durable_seqno": self._durable_seqno,
            "fsyncs": self._fsyncs,
            "last_fsync": self._last_fsync,
            "truncated_bytes": self.truncated_bytes,
            "corrupt_records": self.corrupt_records,
        }

    def close(self) -> None:
        """fsync (every mode) and close; idempotent."""
        if self._state == "closed":
            return
        was_ready = self._state == "ready"
        self._state = "closed"
        self._wake.set()
        if self._committer is not None and not self._committer_syncing:
            self._committer.kill(block=False)
        try:
            if was_ready and self._failed is None:
                self._sync()
        finally:
            with self._sync_lock:  # an fsync still running on the threadpool must not see its fd closed
                pass
            for seg in self._retired + ([self._active] if self._active else []):
                if seg.fd >= 0:
                    os.close(seg.fd)
                    seg.fd = -1
            self._retired, self._active = [], None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
            self._durable_changed.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
