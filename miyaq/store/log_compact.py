"""Compaction of an append log into a snapshot.

A :class:`Snapshotter` owns ``snap-<seqno:020d>.mq``: the live state as of
record ``seqno``. It is written to ``*.tmp``, fsynced, renamed and the
directory fsynced before the segments it covers are deleted, so a crash at
any step replays to the same state (replay removes the leftovers of an
interrupted compaction).

A snapshot is also how a *failed* log recovers: it is written from the
owner's memory, not from the files whose writeback failed, and once it is
durable the failed segments are deleted and appends resume after it.

Other greenlets run while a snapshot is written: the records are encoded
and written in slices, and after each slice that took ``green.HUB_SLICE``
(20 ms) the compaction yields to the hub for one loop iteration (when the
caller runs in a greenlet of a live hub; without one it never yields). The
fsyncs run on the hub's thread pool. So the records handed in must not
change as they are read: they are a copy taken before the call (the node's
is :meth:`miyaq.store.table.TaskTable.snapshot`), never a generator over
live state. Appends made meanwhile (the owner's ``between`` hook runs after
each yield to write what it buffered) go to a new segment
(``log-<seqno+1>``) and survive the compaction; the snapshot holds exactly
the records up to its seqno, so replay (snapshot, then the segments after
it) applies each record once. A log that fails (an fsync) while a snapshot
is written after such appends stays failed: the snapshot cannot vouch for
them.

Constraints: one compaction at a time; :meth:`Snapshotter.close` (the log
closing) stops one in progress at its next slice, before it deletes
anything (replay then finishes or discards it, as after a crash).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from miyaq.errors import MiyaqError
from miyaq.runtime import green, wall
from miyaq.store.log_commit import Committer
from miyaq.store.log_files import Blocking, MiB, fsync_dir, write_all
from miyaq.store.log_format import (
    FORMAT_VERSION,
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
        self._closed = False

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

    def close(self) -> None:
        """The log is closing: a compaction in progress stops at its next slice
        (MiyaqError), and none starts again."""
        self._closed = True

    def compact(self, records: Iterable[dict[Any, Any]], between: Callable[[], None] | None = None) -> int:
        """Replace everything logged so far by ``records`` (the live state as of the
        last seqno); returns the snapshot's seqno.

        The iterable is read while other greenlets run (see the module
        docstring): it must not change meanwhile. Appends made meanwhile go
        to a new segment and survive. On error nothing changes but the active
        segment is rolled, and the error propagates (``errors`` counts it).
        Works on a failed log too: that is its recovery.

        ``between`` runs after each yield (the owner appends what it buffered
        meanwhile); what it raises stops the compaction like any error."""
        if self._running:
            raise MiyaqError("append log: a compaction is already running")
        self._running = True
        try:
            return self._compact(records, between)
        except BaseException:
            self.errors += 1
            raise
        finally:
            self._running = False

    def _compact(self, records: Iterable[dict[Any, Any]], between: Callable[[], None] | None) -> int:
        seqno = self.segments.last_seqno
        failed_before = self.committer.failed
        self.segments.retire_for_snapshot()   # the next append goes to log-<seqno+1>
        final = os.path.join(self.directory, snapshot_name(seqno))
        tmp = final + ".tmp"
        try:
            size = self._write(tmp, seqno, records, between)
            self._check_open()
            os.replace(tmp, final)
            self.blocking(fsync_dir, self.directory)
            self._check_open()    # closed meanwhile: keep the segments (replay deletes them)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        old = self.current.path
        self.current = SnapshotInfo(seqno, final, size)
        failed = self.committer.failed
        if failed is not None and failed is not failed_before and self.segments.last_seqno > seqno:
            # The log failed while the snapshot was written, and records after it were
            # appended meanwhile: their writeback may be lost, so the failure stays
            # (the owner rewrites the state again); only what the snapshot holds is durable.
            self.committer.mark_durable(seqno)
        else:
            self.committer.recovered(seqno)    # the snapshot holds every record up to seqno
        covered = self.segments.remove_covered(seqno)
        if old is not None and old != final:
            os.unlink(old)
        self.compactions += 1
        logger.info("append log %s: compacted %d segments into %s (%d bytes)",
                    self.directory, len(covered), final, size)
        return seqno

    def _check_open(self) -> None:
        if self._closed:
            raise MiyaqError(f"append log {self.directory} closed during a compaction")

    def _write(self, path: str, seqno: int, records: Iterable[dict[Any, Any]],
               between: Callable[[], None] | None) -> int:
        share = green.FairShare() if green.hub_running() else None   # no hub: no one else to run
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # payloads: owner only
        try:
            chunk = [encode(KIND_SNAP_BEGIN, seqno, {"format": FORMAT_VERSION, "created": wall()})]
            pending = count = total = 0
            for record in records:
                if share is not None and share.due():
                    share.check()         # one loop iteration for the others
                    self._check_open()
                    if between is not None:
                        between()
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
