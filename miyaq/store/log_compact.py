"""Compaction of an append log into a snapshot (a part of :class:`~miyaq.store.log.AppendLog`).

A snapshot ``snap-<seqno>.mq`` holds the live state as of record ``seqno``;
it is written to ``*.tmp``, fsynced, renamed and the directory fsynced before
the segments it covers are deleted, so a crash at any step replays to the
same state (replay removes the leftovers of an interrupted compaction).

Constraints: the records are encoded without yielding to other greenlets,
so a generator over the live table sees one consistent state; only the
fsyncs are offloaded. One compaction at a time.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from miyaq.errors import MiyaqError
from miyaq.store.log_format import (
    KIND_SNAP_BEGIN,
    KIND_SNAP_END,
    KIND_SNAP_RECORD,
    encode,
    snapshot_name,
)
from miyaq.store.log_state import LogState, MiB, Segment, fsync_dir, write_all

# A child of miyaq.store.log's logger: one object, one logging tree to configure.
logger = logging.getLogger("miyaq.store.log.compact")

_SNAPSHOT_CHUNK = 1 * MiB


class Compaction(LogState):
    """Replacing the records logged so far by a snapshot of the live state."""

    # Defined by AppendLog and GroupCommit.
    _retire: Callable[[Segment], None]
    _mark_durable: Callable[[int], None]

    def should_compact(self) -> bool:
        """True when the records or bytes since the snapshot passed their thresholds."""
        return (self._records_since_snapshot >= self.compact_after_records
                or self._segment_bytes_total() >= self.compact_after_bytes)

    def compact(self, snapshot_records: Iterable[dict[Any, Any]]) -> int:
        """Replace everything logged so far by ``snapshot_records`` (the live state as of
        :attr:`last_seqno`); returns the snapshot's seqno.

        The iterable is consumed without yielding to other greenlets, so a
        generator over the live table sees the state at :attr:`last_seqno`
        (the event loop is blocked while it is encoded and written; the
        fsyncs are offloaded). Appends made meanwhile go to a new segment and
        survive. On error nothing changes but the active segment is rolled."""
        self._check_writable()
        if self._compacting:
            raise MiyaqError("append log: a compaction is already running")
        self._compacting = True
        seqno = self._last_seqno
        if self._active is not None:
            self._retire(self._active)  # the next append starts log-<seqno+1>
        covered = [seg for seg in self._segments if seg.first <= seqno]
        final = os.path.join(self.directory, snapshot_name(seqno))
        tmp = final + ".tmp"
        try:
            size = self._write_snapshot(tmp, seqno, snapshot_records)
            os.replace(tmp, final)
            self._blocking(fsync_dir, self.directory)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            self._compacting = False
            raise
        old = self._snapshot_path
        self._snapshot_seqno, self._snapshot_path, self._snapshot_bytes = seqno, final, size
        self._mark_durable(seqno)  # the snapshot holds every record up to seqno
        for seg in covered:
            os.unlink(seg.path)
            self._segments.remove(seg)
        if old is not None and old != final:
            os.unlink(old)
        self._records_since_snapshot = self._last_seqno - seqno
        self._compacting = False
        logger.info("append log %s: compacted %d segments into %s (%d bytes)",
                    self.directory, len(covered), final, size)
        return seqno

    def _write_snapshot(self, path: str, seqno: int, records: Iterable[dict[Any, Any]]) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            chunk = [encode(KIND_SNAP_BEGIN, seqno, {"format": 1, "created": time.time()})]
            pending = count = total = 0
            for record in records:
                data = self._encode(KIND_SNAP_RECORD, seqno, record)
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
            self._blocking(os.fsync, fd)
            return total + len(data)
        finally:
            os.close(fd)
