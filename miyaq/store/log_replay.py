"""Opening an append log: lock, scan, replay, repair.

A :class:`Scanner` reads a log directory once. It yields the newest valid
snapshot's records, then every segment record after it, in order, and
leaves an :class:`Opened` description (segments, snapshot, last seqno) for
the parts that take over. Damage is reported (``logger.warning``/``error``
with path and offset, counters ``corrupt_records`` and
``truncated_bytes``), never fatal; what is cut, skipped, renamed or deleted
is listed in the module docstring of :mod:`miyaq.store.log`. Nothing is
deleted on the word of a damaged snapshot.

Constraints: the replay must be consumed to the end before the log takes
appends; it holds the directory's ``LOCK`` from its first step (released by
:meth:`Scanner.unlock`, which the log calls when it closes).
"""
from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from miyaq.errors import MiyaqError
from miyaq.store.log_compact import SnapshotInfo
from miyaq.store.log_files import MAX_KEPT_ASIDE, Blocking, Segment, fsync_dir, kept_aside_name, mapped, write_all
from miyaq.store.log_format import (
    FORMAT_VERSION,
    KIND_RECORD,
    PROBE_NAME,
    SEGMENT_RE,
    SNAPSHOT_RE,
    Buffer,
    FrameError,
    SearchGaveUp,
    find_next_frame,
    iter_frames,
    snapshot_format,
    walk_snapshot,
)

# A child of miyaq.store.log's logger: one object, one logging tree to configure.
logger = logging.getLogger("miyaq.store.log.replay")

__all__ = ["LogEntry", "Opened", "Scanner"]


class LogEntry(NamedTuple):
    """A replayed record; ``seqno`` is the snapshot's seqno for snapshot records."""

    seqno: int
    record: dict[Any, Any]
    from_snapshot: bool


@dataclass(slots=True)
class Opened:
    """What replay found, for :class:`~miyaq.store.log_segments.Segments` and
    :class:`~miyaq.store.log_compact.Snapshotter` to take over."""

    last_seqno: int = 0
    segments: list[Segment] = field(default_factory=list)
    snapshot: SnapshotInfo = field(default_factory=SnapshotInfo)
    records_after_snapshot: int = 0


def unusable(directory: str, exc: OSError) -> MiyaqError:
    """The one error of a log whose *files* cannot be used (opened, read,
    written, made): it names the file and the reason; the node does not start."""
    where = f"{exc.filename}: " if exc.filename else ""
    return MiyaqError(f"cannot open the log in data dir {directory}: {where}{exc.strerror or exc}; "
                      "the node must be able to read and write every file in it, and make new ones")


class Scanner:
    """Replay and repair of one log directory (once)."""

    def __init__(self, directory: str, *, blocking: Blocking | None = None) -> None:
        self.directory = directory
        self.blocking = blocking or Blocking()
        self.truncated_bytes = 0
        self.corrupt_records = 0
        self.opened = Opened()
        self._lock_fd = -1
        self._bad_snapshots: list[str] = []
        self._snapshot_valid = True

    # -- the whole replay ---------------------------------------------------------
    def entries(self) -> Iterator[LogEntry]:
        """Lock the directory and yield every record; when exhausted, :attr:`opened`
        says what was found and the files are repaired and fsynced.

        A file the log cannot open, read or repair (a read-only directory, a
        segment replaced by a directory, an I/O error) raises MiyaqError
        naming it: damage *inside* the files is repaired, but the files
        themselves must be usable. A replay that raises (or is abandoned)
        releases the LOCK: the directory is not left locked to this process."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._lock()
            self._check_writable()
            snapshots, segments = self._scan()
            chosen = self._choose_snapshot(snapshots, segments)
            if chosen is not None:
                yield from self._replay_snapshot(*chosen)
            yield from self._replay_segments(segments)
            self._finish(snapshots, segments)
        except OSError as exc:
            self.unlock()
            raise unusable(self.directory, exc) from exc
        except BaseException:
            self.unlock()
            raise

    def unlock(self) -> None:
        """Release the directory's LOCK. Idempotent."""
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            os.close(fd)

    def _lock(self) -> None:
        fd = os.open(os.path.join(self.directory, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MiyaqError(f"data dir {self.directory} is in use by another process (it holds its LOCK file): "
                             "is a node already running with it? Give each node its own --data-dir") from None
        self._lock_fd = fd

    def _check_writable(self) -> None:
        """The directory takes new files: a segment is made at every roll
        (64 MiB), so a directory the node may not write (its files writable,
        the directory not) fails now, naming it, not at the first roll hours
        later -- before 2026-12-06's audit it did then, and the node refused
        every submit from that moment on. A file made and removed at once
        (the writer's probe: replay removes one a crash left)."""
        path = os.path.join(self.directory, PROBE_NAME)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        os.unlink(path)

    def _scan(self) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        snapshots, segments = [], []
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name.endswith(".tmp") and (SNAPSHOT_RE.match(name[:-4]) or name == PROBE_NAME):
                # Its own only: a snapshot a compaction left unrenamed, the writer's probe.
                logger.info("append log: removing %s left by an interrupted compaction or probe", path)
                os.unlink(path)
            elif m := SEGMENT_RE.match(name):
                segments.append((int(m.group(1)), path))
            elif m := SNAPSHOT_RE.match(name):
                snapshots.append((int(m.group(1)), path))
        return sorted(snapshots), sorted(segments)

    # -- the snapshot -----------------------------------------------------------------
    def _choose_snapshot(
        self, snapshots: list[tuple[int, str]], segments: list[tuple[int, str]]
    ) -> tuple[int, str, bool] | None:
        """Newest valid snapshot; else none if the segments start at seqno 1; else the
        newest one, replayed up to its damage. Damaged ones are renamed ``*.bad`` after replay."""
        for seqno, path in reversed(snapshots):
            with mapped(path) as buf:
                written_in = snapshot_format(buf)
                if written_in is not None and written_in != FORMAT_VERSION:
                    # Not damage: another miyaq's log (a rollback after an upgrade). Read as
                    # this one's it could be misread, renamed .bad, its segments deleted.
                    raise MiyaqError(f"cannot open the log in data dir {self.directory}: snapshot {path} is in log "
                                     f"format {written_in!r}, and this miyaq reads format {FORMAT_VERSION} only: "
                                     "start the version that wrote it (nothing was changed)")
                error = next((i for i in walk_snapshot(buf, seqno) if isinstance(i, FrameError)), None)
            if error is None:
                return seqno, path, True
            self.corrupt_records += 1
            self._bad_snapshots.append(path)
            logger.error("append log: snapshot %s is damaged (%s at offset %d); not using it",
                         path, error.reason, error.offset)
        if not snapshots or (segments and segments[0][0] == 1):
            return None
        seqno, path = snapshots[-1]
        logger.error("append log: no valid snapshot; replaying the valid prefix of %s -- state is INCOMPLETE", path)
        return seqno, path, False

    def _replay_snapshot(self, seqno: int, path: str, valid: bool) -> Iterator[LogEntry]:
        with mapped(path) as buf:
            for item in walk_snapshot(buf, seqno):
                if isinstance(item, FrameError):
                    break
                yield LogEntry(seqno, item.body, True)
            size = len(buf)
        self.opened.snapshot = SnapshotInfo(seqno, path if valid else None, size)
        self.opened.last_seqno = seqno
        self._snapshot_valid = valid
        if not valid:  # the only copy of that state: leave it where it is
            self._bad_snapshots.remove(path)

    # -- the segments -----------------------------------------------------------------
    def _replay_segments(self, segments: list[tuple[int, str]]) -> Iterator[LogEntry]:
        opened = self.opened
        snap_seqno = opened.snapshot.seqno
        expect = snap_seqno + 1
        for index, (first, path) in enumerate(segments):
            is_last = index == len(segments) - 1
            if not is_last and segments[index + 1][0] - 1 <= snap_seqno:
                continue  # wholly covered by the snapshot; deleted by _finish
            error: FrameError | None = None
            good_end = 0
            seg_seqno = first
            with mapped(path) as buf:
                for item in iter_frames(buf):
                    if not isinstance(item, FrameError) and (item.kind != KIND_RECORD or item.seqno != seg_seqno):
                        item = FrameError(item.offset, f"frame kind {item.kind} seqno {item.seqno} "
                                                       f"where record {seg_seqno} belongs")
                    if isinstance(item, FrameError):
                        error = item
                        break
                    good_end = item.end
                    seg_seqno += 1
                    if item.seqno < expect:
                        continue  # already covered by the snapshot
                    if item.seqno > expect:
                        logger.warning("append log: records %d..%d are missing (gap before %s)",
                                       expect, item.seqno - 1, path)
                    expect = item.seqno + 1
                    opened.records_after_snapshot += 1
                    yield LogEntry(item.seqno, item.body, False)
                size = len(buf)
                kept_whole = error is not None and not is_last
                if error is not None:
                    self.corrupt_records += 1
                    if is_last and self._cut_tail(path, buf, error, good_end):
                        size = good_end
                    elif is_last:
                        kept_whole = True
                    else:
                        logger.warning("append log: %s is damaged at offset %d (%s); skipping the rest of "
                                       "this segment and continuing with the next one", path, error.offset,
                                       error.reason)
            if seg_seqno > first:      # a file's name alone (one with no record) says nothing
                opened.last_seqno = max(opened.last_seqno, seg_seqno - 1)
            if seg_seqno - 1 > snap_seqno or not self._snapshot_valid or error is not None:
                opened.segments.append(Segment(first, path, size, damaged=kept_whole))
            # else: every record is in the snapshot; _finish deletes the file

    def _cut_tail(self, path: str, buf: Buffer, error: FrameError, good_end: int) -> bool:
        """Cut the last segment's damaged tail off (saving it first when good
        records may follow the damage). False when those bytes cannot be saved
        (a full disk at start): the segment is then kept whole and never
        appended to again, as an older damaged segment is -- before 2026-12-07
        the node did not start, and left a partial copy behind."""
        cut = len(buf) - good_end
        logger.warning("append log: %s has a torn or corrupt tail at offset %d (%s); truncating %d bytes",
                       path, error.offset, error.reason, cut)
        try:
            found = "good records follow" if find_next_frame(buf, error.offset) is not None else ""
        except SearchGaveUp:      # cannot tell: keep the bytes, as if good records followed
            found = "good records may follow"
        if found:
            saved = kept_aside_name(f"{path}.damaged-{good_end}")
            if saved is None:
                logger.error("append log: %s the damage in %s (media corruption, not a torn write); the %d "
                             "cut bytes are NOT saved: %d copies of damage there are kept already",
                             found, path, cut, MAX_KEPT_ASIDE)
            elif not self._save(saved, buf[good_end:]):
                logger.error("append log: %s the damage in %s (media corruption, not a torn write); the %d "
                             "bytes after it cannot be saved in %s, so they are not cut: the segment is kept "
                             "whole and the log goes on in a new segment", found, path, cut, saved)
                return False
            else:
                logger.error("append log: %s the damage in %s (media corruption, not a torn write); the %d "
                             "cut bytes are saved in %s", found, path, cut, saved)
        os.truncate(path, good_end)
        self.truncated_bytes += cut
        return True

    @staticmethod
    def _save(path: str, data: bytes) -> bool:
        """Write ``data`` to a new file ``path`` (owner only, as the segment
        was). False, and no file left, if the disk refuses (ENOSPC, EIO)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            logger.warning("append log: cannot make %s (%s)", path, exc)
            return False
        try:
            write_all(fd, data)
        except OSError as exc:
            logger.warning("append log: writing %s failed (%s)", path, exc)
            os.close(fd)
            os.unlink(path)
            return False
        os.close(fd)
        return True

    # -- repair ---------------------------------------------------------------------------
    def _finish(self, snapshots: list[tuple[int, str]], segments: list[tuple[int, str]]) -> None:
        opened = self.opened
        for path in self._bad_snapshots:  # kept for forensics, never again in the way
            aside = kept_aside_name(path + ".bad")
            if aside is None:
                logger.error("append log: removing damaged snapshot %s: %d copies are kept already",
                             path, MAX_KEPT_ASIDE)
                os.unlink(path)
            else:
                os.replace(path, aside)
        leftovers: list[str] = []
        if self._snapshot_valid:  # never delete anything on the word of a damaged snapshot
            kept = {seg.path for seg in opened.segments}
            leftovers = [path for _, path in segments if path not in kept]
            leftovers += [path for seqno, path in snapshots
                          if seqno < opened.snapshot.seqno and path not in self._bad_snapshots]
        if leftovers:
            self.blocking(fsync_dir, self.directory)  # the snapshot's rename must be durable before its inputs go
            for path in leftovers:
                logger.info("append log: removing %s, covered by snapshot %d", path, opened.snapshot.seqno)
                os.unlink(path)
        for seg in [s for s in opened.segments if s.size == 0]:
            os.unlink(seg.path)
            opened.segments.remove(seg)
        for seg in [s for s in opened.segments if s.damaged and s.first > opened.last_seqno]:
            self._set_aside(seg)
        logger.info("append log %s: replayed up to seqno %d (snapshot %d, %d records after it)",
                    self.directory, opened.last_seqno, opened.snapshot.seqno, opened.records_after_snapshot)

    def _set_aside(self, seg: Segment) -> None:
        """A damaged segment with no good record, and none logged after it: its
        name is the next record's, which the next append must be able to take
        (before 2026-12-07 every append raised "already exists", and the node's
        writer died with it). Renamed whole to ``<segment>.damaged-0``, for
        forensics as cut bytes are (removed past :data:`MAX_KEPT_ASIDE`)."""
        self.opened.segments.remove(seg)
        aside = kept_aside_name(f"{seg.path}.damaged-0")
        if aside is None:
            logger.error("append log: removing %s, damaged at its first record: %d copies of damage there are "
                         "kept already", seg.path, MAX_KEPT_ASIDE)
            os.unlink(seg.path)
        else:
            logger.error("append log: %s is damaged at its first record and nothing was logged after it: "
                         "set aside whole as %s (the next record takes its name)", seg.path, aside)
            os.replace(seg.path, aside)
