"""Compaction of an append log into a snapshot.

A :class:`Snapshotter` owns ``snap-<seqno:020d>.mq``: the live state as of
record ``seqno``. It is written to ``*.tmp``, fsynced, renamed and the
directory fsynced before the segments it covers are deleted, so a crash at
any step replays to the same state (replay removes the leftovers of an
interrupted compaction).

A snapshot is also how a *failed* log recovers: it is written from the
owner's memory, not from the files whose writeback failed, and once it is
durable the failed segments are deleted and appends resume after it.

Constraints: the records are encoded without yielding to other greenlets,
so a generator over the live table sees one consistent state; only the
fsyncs are offloaded. One compaction at a time.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from miyaq.errors import MiyaqError
from miyaq.runtime import wall
from miyaq.store.log_commit import Committer
from miyaq.store.log_files import Blocking, MiB, fsync_dir, write_all
from miyaq.store.log_format import (
    KIND_SNAP_BEGIN,
    KIND_SNAP_END,
    KIND_SNAP_RECORD,
    encode,
    encode_record,
    snapshot_name,
)
from miyaq.store.log_segments import Segments

# A child of miyaq.store.log's logger: one object, one logging tree to configure.
logger = logging.getLogger("miyaq.store.log.compact")

__all__ = ["SnapshotInfo", "Snapshotter"]

_SNAPSHOT_CHUNK = 1 * MiB


@dataclass(slots=True)
class SnapshotInfo:
    """The snapshot replay started from (``path`` None: none, or a damaged one
    whose valid prefix was used and which must stay where it is)."""

    seqno: int = 0
    path: str | None = None
    size: int = 0


class Snapshotter:
    """Replaces the records logged so far by a snapshot of the live state."""

    def __init__(self, directory: str, segments: Segments, committer: Committer, *, max_record_bytes: int,
                 after_records: int, after_bytes: int, blocking: Blocking | None = None) -> None:
        self.directory = directory
        self.segments = segments
        self.committer = committer
        self.max_record_bytes = max_record_bytes
        self.after_records = after_records
        self.after_bytes = after_bytes
        self.blocking = blocking or Blocking()
        self.current = SnapshotInfo()
        self.compactions = 0
        self.errors = 0
        self._running = False

    def adopt(self, info: SnapshotInfo) -> None:
        """The snapshot replay used."""
        self.current = info

    @property
    def records_since(self) -> int:
        """Records logged after the snapshot."""
        return self.segments.last_seqno - self.current.seqno

    def should_compact(self) -> bool:
        """True when the records or bytes since the snapshot passed their thresholds."""
        return self.records_since >= self.after_records or self.segments.total_bytes() >= self.after_bytes

    def compact(self, records: Iterable[dict[Any, Any]]) -> int:
        """Replace everything logged so far by ``records`` (the live state as of the
        last seqno); returns the snapshot's seqno.

        The iterable is consumed without yielding. Appends made meanwhile (while
        an fsync is offloaded) go to a new segment and survive. On error nothing
        changes but the active segment is rolled, and the error propagates
        (``errors`` counts it). Works on a failed log too: that is its recovery."""
        if self._running:
            raise MiyaqError("append log: a compaction is already running")
        self._running = True
        try:
            return self._compact(records)
        except BaseException:
            self.errors += 1
            raise
        finally:
            self._running = False

    def _compact(self, records: Iterable[dict[Any, Any]]) -> int:
        seqno = self.segments.last_seqno
        self.segments.retire_for_snapshot()   # the next append goes to log-<seqno+1>
        final = os.path.join(self.directory, snapshot_name(seqno))
        tmp = final + ".tmp"
        try:
            size = self._write(tmp, seqno, records)
            os.replace(tmp, final)
            self.blocking(fsync_dir, self.directory)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        old = self.current.path
        self.current = SnapshotInfo(seqno, final, size)
        self.committer.recovered(seqno)    # the snapshot holds every record up to seqno
        covered = self.segments.remove_covered(seqno)
        if old is not None and old != final:
            os.unlink(old)
        self.compactions += 1
        logger.info("append log %s: compacted %d segments into %s (%d bytes)",
                    self.directory, len(covered), final, size)
        return seqno

    def _write(self, path: str, seqno: int, records: Iterable[dict[Any, Any]]) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            chunk = [encode(KIND_SNAP_BEGIN, seqno, {"format": 1, "created": wall()})]
            pending = count = total = 0
            for record in records:
                data = encode_record(KIND_SNAP_RECORD, seqno, record, self.max_record_bytes)
                chunk.append(data)
                count += 1
                pending += len(data)
                if pending >= _SNAPSHOT_CHUNK:
                    data = b"".join(chunk)
                    write_all(fd, data)
                    total += len(data)
                    chunk, pending = [], 0
            chunk.append(encode(KIND_SNAP_END, seqno, {"records": count}))
            data = b"".join(chunk)
            write_all(fd, data)
            self.blocking(os.fsync, fd)
            return total + len(data)
        finally:
            os.close(fd)
