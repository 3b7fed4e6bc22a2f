"""The segment files of an append log: which exist, which one takes appends, rotation.

A :class:`Segments` owns the ``log-<first_seqno:020d>.mq`` files that follow
the snapshot and the last seqno written to them. It writes frames, starting a
new segment before a write would take the current one past
``segment_bytes`` (a segment is larger only when one frame alone is), and
hands the committer what one fsync must cover (:meth:`sync_batch`).

Constraints: one thread. Writes never yield to other greenlets. A segment
that stops taking appends (rotation, compaction) is *retired*: it stays open
until the next fsync covers it, then it is closed -- except in ``never`` mode
where, when no fsync is in flight, it is closed at once (no fsync would come
for a long time). An fd handed to an fsync in flight is never closed under it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from miyaq.errors import MiyaqError
from miyaq.store.log_files import Segment, write_all
from miyaq.store.log_format import segment_name

logger = logging.getLogger("miyaq.store.log.segments")

__all__ = ["LogWriteError", "Segments", "SyncBatch"]


class LogWriteError(MiyaqError):
    """write(2) to the log failed (ENOSPC, EIO, ...): the records were not logged.

    ``details["logged"]`` is how many records of the batch *were* logged
    before the failure (earlier segments of a batch that spans several);
    ``details["errno"]`` is the OS error number."""

    code = "storage"


@dataclass(slots=True)
class SyncBatch:
    """What one fsync covers: taken by :meth:`Segments.sync_batch`, given back
    to :meth:`Segments.synced` once the fsync returned (or failed)."""

    upto: int                    # every record up to this seqno is in these files
    fds: list[int]               # segment files to fsync, oldest first
    directory: bool              # fsync the directory too (a file was created)
    retired: list[Segment] = field(default_factory=list)  # close these afterwards


class Segments:
    """The files after the snapshot, in order; the last may be the active one."""

    def __init__(self, directory: str, segment_bytes: int, *, close_retired_at_once: bool = False) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.close_retired_at_once = close_retired_at_once
        self.files: list[Segment] = []
        self.active: Segment | None = None
        self.last_seqno = 0
        self.dir_dirty = False
        self._retired: list[Segment] = []
        self._in_flight: SyncBatch | None = None

    # -- opening --------------------------------------------------------------
    def adopt(self, files: list[Segment], last_seqno: int) -> None:
        """Take over the segments replay found. The last one takes appends
        again if it has room and no damage (its fd is opened here; the caller
        fsyncs it); otherwise the next append starts a new file."""
        self.files = list(files)
        self.last_seqno = last_seqno
        if self.files and self.files[-1].size < self.segment_bytes and not self.files[-1].damaged:
            seg = self.files[-1]
            seg.fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
            self.active = seg

    # -- writing ---------------------------------------------------------------
    def write(self, first: int, frames: list[bytes]) -> int:
        """Write ``frames`` (records ``first``, ``first + 1``, ...); returns the last seqno.

        One write(2) per segment touched. A failed write is undone (the file
        is truncated back) and raises :class:`LogWriteError`; records already
        written to earlier segments of the batch stay logged. If the undo
        fails too, the file has a torn tail: the error says so
        (``details["undone"] is False``) and the caller must stop trusting it."""
        if first != self.last_seqno + 1:
            raise MiyaqError(f"append log: record {first} written after {self.last_seqno}")
        i = 0
        while i < len(frames):
            seg = self.active
            if seg is None or (seg.size > 0 and seg.size + len(frames[i]) > self.segment_bytes):
                seg = self._roll(first + i, logged=i)
            j, size = i + 1, seg.size + len(frames[i])
            while j < len(frames) and size + len(frames[j]) <= self.segment_bytes:
                size += len(frames[j])
                j += 1
            self._write(seg, frames[i] if j == i + 1 else b"".join(frames[i:j]), logged=i)
            self.last_seqno = first + j - 1
            i = j
        return self.last_seqno

    def _write(self, seg: Segment, data: bytes, logged: int) -> None:
        try:
            write_all(seg.fd, data)
        except OSError as exc:
            undone = True
            try:
                os.ftruncate(seg.fd, seg.size)
            except OSError:
                undone = False
            raise LogWriteError(f"append log write to {seg.path} failed ({exc}); the records were not logged",
                                logged=logged, errno=exc.errno, undone=undone) from exc
        seg.size += len(data)

    def _roll(self, first: int, logged: int) -> Segment:
        if self.active is not None:
            self.retire_active()
        path = os.path.join(self.directory, segment_name(first))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)   # payloads: owner only
        except FileExistsError:
            raise MiyaqError(f"append log segment {path} already exists; refusing to overwrite it") from None
        except OSError as exc:
            raise LogWriteError(f"append log cannot create {path} ({exc}); the records were not logged",
                                logged=logged, errno=exc.errno, undone=True) from exc
        seg = Segment(first, path, 0, fd)
        self.files.append(seg)
        self.active = seg
        self.dir_dirty = True
        return seg

    def retire_for_snapshot(self) -> None:
        """Before a snapshot of every record so far: the next append must go to
        a segment that starts after it. An empty active segment already does
        (it was made for the next record, whose write then failed and was
        undone): it stays active. Retiring it would leave a file the snapshot
        does not cover and the next segment's name taken -- after a disk that
        filled twice, the node could not log again."""
        if self.active is not None and self.active.size == 0:
            return
        self.retire_active()

    def retire_active(self) -> None:
        """The active segment takes no more appends; the next write starts a new file."""
        seg, self.active = self.active, None
        if seg is None:
            return
        if self.close_retired_at_once and self._in_flight is None:
            seg.close()
        else:
            self._retired.append(seg)

    # -- syncing -----------------------------------------------------------------
    def sync_batch(self) -> SyncBatch:
        """What an fsync started now must cover. One batch at a time: give it
        back with :meth:`synced` before taking the next."""
        if self._in_flight is not None:
            raise MiyaqError("append log: an fsync is already in flight")
        retired, self._retired = self._retired, []
        fds = [seg.fd for seg in retired if not seg.deleted and seg.fd >= 0]
        if self.active is not None:
            fds.append(self.active.fd)
        batch = SyncBatch(self.last_seqno, fds, self.dir_dirty, retired)
        self.dir_dirty = False
        self._in_flight = batch
        return batch

    def synced(self, batch: SyncBatch, ok: bool) -> None:
        """The fsync of ``batch`` returned (``ok``) or failed: close what it retired.
        After a failure the directory stays marked dirty for the next fsync."""
        self._in_flight = None
        if not ok and batch.directory:
            self.dir_dirty = True
        for seg in batch.retired:
            seg.close()

    # -- compaction ----------------------------------------------------------------
    def remove_covered(self, seqno: int) -> list[Segment]:
        """Delete every segment that starts at or before ``seqno``, which must be
        where a rotation happened (so those segments hold only records ``<=
        seqno``, all in a durable snapshot); returns them. Their fds are closed
        unless an fsync in flight holds them (then :meth:`synced` closes them)."""
        covered = [seg for seg in self.files if seg.first <= seqno and seg is not self.active]
        in_flight = set(self._in_flight.fds) if self._in_flight is not None else set()
        for seg in covered:
            os.unlink(seg.path)
            seg.deleted = True
            self.files.remove(seg)
            if seg in self._retired and seg.fd not in in_flight:
                self._retired.remove(seg)
                seg.close()
        return covered

    # -- introspection and shutdown ---------------------------------------------------
    def total_bytes(self) -> int:
        return sum(seg.size for seg in self.files)

    def close(self) -> None:
        """Close every fd (the caller fsynced first if it wanted to). Idempotent.
        Must not run while an fsync is in flight."""
        for seg in self._retired + ([self.active] if self.active is not None else []):
            seg.close()
        self._retired, self.active = [], None
