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

Constraints: not thread-safe -- use an instance from one thread (any number
of its greenlets). After a failed fsync (or a write that could not be undone)
the log refuses appends, flushes and waits -- the page cache can no longer be
trusted -- and ``on_durable`` callbacks get the error; restart and replay.
"""
from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import logging
import mmap
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import gevent
import gevent.event
import gevent.lock

from miyaq.errors import ConfigError, MiyaqError
from miyaq.store.log_format import (
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

try:  # private in gevent, but the only way to ask without creating a hub
    from gevent._hub_local import get_hub_if_exists as _hub_if_exists
except ImportError:  # pragma: no cover - older/newer gevent
    from gevent import get_hub as _hub_if_exists

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
FSYNC_MODES = ("always", "interval", "never")
_SNAPSHOT_CHUNK = 1 * MiB

DurableCallback = Callable[[int, "BaseException | None"], None]


class LogEntry(NamedTuple):
    """A replayed record; ``seqno`` is the snapshot's seqno for snapshot records."""

    seqno: int
    record: dict[Any, Any]
    from_snapshot: bool


@dataclass(slots=True)
class _Segment:
    first: int
    path: str
    size: int
    fd: int = -1


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[Buffer]:
    """A whole file, read-only (mmap; ``b""`` when empty)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


class AppendLog:
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
        self._segments: list[_Segment] = []  # after the snapshot, in order; last may be active
        self._active: _Segment | None = None
        self._retired: list[_Segment] = []  # still open: fsync then close at the next sync
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
        os.makedirs(self.directory, exist_ok=True)
        self._lock_directory()
        snapshots, segments = self._scan_directory()
        chosen = self._choose_snapshot(snapshots, segments)
        if chosen is not None:
            yield from self._replay_snapshot(*chosen)
        yield from self._replay_segments(segments)
        self._finish_open(snapshots, segments)

    def _lock_directory(self) -> None:
        fd = os.open(os.path.join(self.directory, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MiyaqError(f"append log {self.directory} is in use by another AppendLog (LOCK is held)") from None
        self._lock_fd = fd

    def _scan_directory(self) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        snapshots, segments = [], []
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name.endswith(".tmp"):
                logger.info("append log: removing %s left by an interrupted compaction", path)
                os.unlink(path)
            elif m := SEGMENT_RE.match(name):
                segments.append((int(m.group(1)), path))
            elif m := SNAPSHOT_RE.match(name):
                snapshots.append((int(m.group(1)), path))
        return sorted(snapshots), sorted(segments)

    def _choose_snapshot(
        self, snapshots: list[tuple[int, str]], segments: list[tuple[int, str]]
    ) -> tuple[int, str, bool] | None:
        """Newest valid snapshot; else none if the segments start at seqno 1; else the
        newest one, replayed up to its damage. Damaged ones are renamed ``*.bad`` after replay."""
        for seqno, path in reversed(snapshots):
            with _mapped(path) as buf:
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
        with _mapped(path) as buf:
            for item in walk_snapshot(buf, seqno):
                if isinstance(item, FrameError):
                    break
                yield LogEntry(seqno, item.body, True)
            self._snapshot_bytes = len(buf)
        self._snapshot_seqno = self._last_seqno = seqno
        self._snapshot_path = path if valid else None
        self._snapshot_valid = valid
        if not valid:  # the only copy of that state: leave it where it is
            self._bad_snapshots.remove(path)

    def _replay_segments(self, segments: list[tuple[int, str]]) -> Iterator[LogEntry]:
        expect = self._snapshot_seqno + 1
        for index, (first, path) in enumerate(segments):
            is_last = index == len(segments) - 1
            if not is_last and segments[index + 1][0] - 1 <= self._snapshot_seqno:
                continue  # wholly covered by the snapshot; deleted by _finish_open
            error: FrameError | None = None
            good_end = 0
            seg_seqno = first
            with _mapped(path) as buf:
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
                    self._records_since_snapshot += 1
                    yield LogEntry(item.seqno, item.body, False)
                size = len(buf)
                if error is not None:
                    self.corrupt_records += 1
                    if is_last:
                        self._cut_tail(path, buf, error, good_end)
                        size = good_end
                    else:
                        logger.warning("append log: %s is damaged at offset %d (%s); skipping the rest of "
                                       "this segment and continuing with the next one", path, error.offset,
                                       error.reason)
            self._last_seqno = max(self._last_seqno, seg_seqno - 1)
            if seg_seqno - 1 > self._snapshot_seqno or not self._snapshot_valid or error is not None:
                self._segments.append(_Segment(first, path, size))
            # else: every record is in the snapshot; _finish_open deletes the file

    def _cut_tail(self, path: str, buf: Buffer, error: FrameError, good_end: int) -> None:
        cut = len(buf) - good_end
        logger.warning("append log: %s has a torn or corrupt tail at offset %d (%s); truncating %d bytes",
                       path, error.offset, error.reason, cut)
        if find_next_frame(buf, error.offset) is not None:
            saved = f"{path}.damaged-{good_end}"
            with open(saved, "wb") as f:
                f.write(buf[good_end:])
            logger.error("append log: good records follow the damage in %s (media corruption, not a torn "
                         "write); the %d cut bytes are saved in %s", path, cut, saved)
        os.truncate(path, good_end)
        self.truncated_bytes += cut

    def _finish_open(self, snapshots: list[tuple[int, str]], segments: list[tuple[int, str]]) -> None:
        for path in self._bad_snapshots:  # kept for forensics, never again in the way
            os.replace(path, path + ".bad")
        leftovers: list[str] = []
        if self._snapshot_valid:  # never delete anything on the word of a damaged snapshot
            kept = {seg.path for seg in self._segments}
            leftovers = [path for _, path in segments if path not in kept]
            leftovers += [path for seqno, path in snapshots
                          if seqno < self._snapshot_seqno and path not in self._bad_snapshots]
        if leftovers:
            self._blocking(_fsync_dir, self.directory)  # the snapshot's rename must be durable before its inputs go
            for path in leftovers:
                logger.info("append log: removing %s, covered by snapshot %d", path, self._snapshot_seqno)
                os.unlink(path)
        for seg in [s for s in self._segments if s.size == 0]:
            os.unlink(seg.path)
            self._segments.remove(seg)
        if self._segments and self._segments[-1].size < self.segment_bytes:
            seg = self._segments[-1]
            seg.fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
            self._active = seg
            self._blocking(os.fsync, seg.fd)  # a killed process may have left it in the page cache only
        self._blocking(_fsync_dir, self.directory)
        self._durable_seqno = self._last_seqno
        self._state = "ready"
        logger.info("append log %s: replayed up to seqno %d (snapshot %d, %d records after it)",
                    self.directory, self._last_seqno, self._snapshot_seqno, self._records_since_snapshot)

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

    def _encode(self, kind: int, seqno: int, record: dict[Any, Any]) -> bytes:
        if not isinstance(record, dict):
            raise MiyaqError(f"a log record must be a dict, not {type(record).__name__}")
        try:
            payload = pack_payload(kind, seqno, record)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MiyaqError(f"log record cannot be encoded with msgpack: {exc}") from exc
        if len(payload) > self.max_record_bytes:
            raise MiyaqError(f"log record of {len(payload)} bytes exceeds max_record_bytes="
                             f"{self.max_record_bytes}; nothing was written",
                             size=len(payload), limit=self.max_record_bytes)
        return frame(payload)

    def _write(self, seg: _Segment, data: bytes) -> None:
        try:
            _write_all(seg.fd, data)
        except OSError as exc:
            try:
                os.ftruncate(seg.fd, seg.size)
            except OSError:
                self._fail(exc)
            raise MiyaqError(f"append log write to {seg.path} failed ({exc}); the records were not logged") from exc
        seg.size += len(data)

    def _roll(self, first: int) -> _Segment:
        if self._active is not None:
            self._retire(self._active)
        path = os.path.join(self.directory, segment_name(first))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise MiyaqError(f"append log segment {path} already exists; refusing to overwrite it") from None
        seg = _Segment(first, path, 0, fd)
        self._segments.append(seg)
        self._active = seg
        self._dir_dirty = True
        return seg

    def _retire(self, seg: _Segment) -> None:
        self._active = None
        if self.fsync_mode == "never" and not self._sync_lock.locked():
            os.close(seg.fd)
            seg.fd = -1
        else:
            self._retired.append(seg)

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise self._failure()
        if self._state == "closed":
            raise MiyaqError(f"append log {self.directory} is closed")
        if self._state != "ready":
            raise MiyaqError(f"append log {self.directory} is {self._state}; consume replay() before appending")

    def _failure(self) -> MiyaqError:
        return MiyaqError(f"append log {self.directory} failed ({self._failed}); restart to replay it")

    # -- durability ----------------------------------------------------------

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

    def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call on the hub's native threadpool when there is a hub."""
        if self.offload_fsync is False:
            return fn(*args)
        hub = _hub_if_exists() if self.offload_fsync is None else gevent.get_hub()
        if hub is None or gevent.getcurrent() is hub:
            return fn(*args)
        return hub.threadpool.apply(fn, args)

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
            _fsync_dir(self.directory)

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

    # -- compaction ----------------------------------------------------------

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
            self._blocking(_fsync_dir, self.directory)
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
                    _write_all(fd, data)
                    total += len(data)
                    chunk, pending = [], 0
            chunk.append(encode(KIND_SNAP_END, seqno, {"records": count}))
            data = b"".join(chunk)
            _write_all(fd, data)
            self._blocking(os.fsync, fd)
            return total + len(data)
        finally:
            os.close(fd)

    # -- introspection and shutdown ------------------------------------------

    def _segment_bytes_total(self) -> int:
        return sum(seg.size for seg in self._segments)

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

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
