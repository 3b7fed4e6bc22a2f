"""What the parts of :class:`~miyaq.store.log.AppendLog` share: its state and file helpers.

The log is one object written in four modules -- :mod:`~miyaq.store.log`
(appending, lifecycle), :mod:`~miyaq.store.log_replay` (opening, scanning,
repair), :mod:`~miyaq.store.log_commit` (fsync, group commit) and
:mod:`~miyaq.store.log_compact` (snapshots). :class:`LogState` declares the
attributes they share (``AppendLog.__init__`` sets them) and the helpers more
than one part needs. Same constraints as the log: one thread, any number of
its greenlets.
"""
from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.lock

from miyaq.errors import MiyaqError
from miyaq.store.log_format import Buffer, frame, pack_payload

try:  # private in gevent, but the only way to ask without creating a hub
    from gevent._hub_local import get_hub_if_exists as _hub_if_exists
except ImportError:  # pragma: no cover - older/newer gevent
    from gevent import get_hub as _hub_if_exists

logger = logging.getLogger(__name__)

MiB = 1024 * 1024

DurableCallback = Callable[[int, "BaseException | None"], None]


@dataclass(slots=True)
class Segment:
    """One ``log-*.mq`` file: its first seqno, size, and fd while open for appending."""

    first: int
    path: str
    size: int
    fd: int = -1


def fsync_dir(directory: str) -> None:
    """fsync a directory, so files created or renamed in it survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """write(2) until every byte of ``data`` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def mapped(path: str) -> Iterator[Buffer]:
    """A whole file, read-only (mmap; ``b""`` when empty)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


class LogState:
    """Attributes and helpers shared by the parts of AppendLog."""

    # settings
    directory: str
    fsync_mode: str
    interval: float
    segment_bytes: int
    max_record_bytes: int
    compact_after_records: int
    compact_after_bytes: int
    offload_fsync: bool | None
    # damage found by replay
    truncated_bytes: int
    corrupt_records: int
    # files: "new" -> "replaying" -> "ready" -> "closed"
    _clock: Callable[[], float]
    _state: str
    _lock_fd: int
    _segments: list[Segment]  # after the snapshot, in order; the last may be active
    _active: Segment | None
    _retired: list[Segment]  # still open: fsync then close at the next sync
    _snapshot_seqno: int
    _snapshot_bytes: int
    _snapshot_path: str | None
    _snapshot_valid: bool
    _bad_snapshots: list[str]
    _records_since_snapshot: int
    _compacting: bool
    # sequence numbers and durability
    _last_seqno: int
    _durable_seqno: int
    _dir_dirty: bool
    _failed: BaseException | None
    _fsyncs: int
    _last_fsync: float | None
    _sync_lock: gevent.lock.Semaphore
    _durable_changed: gevent.event.Event
    _callbacks: list[tuple[int, int, DurableCallback]]
    _callback_order: Iterator[int]
    _wake: gevent.event.Event
    _committer: gevent.Greenlet | None
    _committer_syncing: bool
    _next_sync_at: float

    def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call on the hub's native threadpool when there is a hub."""
        if self.offload_fsync is False:
            return fn(*args)
        hub = _hub_if_exists() if self.offload_fsync is None else gevent.get_hub()
        if hub is None or gevent.getcurrent() is hub:
            return fn(*args)
        return hub.threadpool.apply(fn, args)

    def _encode(self, kind: int, seqno: int, record: dict[Any, Any]) -> bytes:
        """One framed record; ``MiyaqError`` (nothing written) if it cannot be encoded or is too big."""
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

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise self._failure()
        if self._state == "closed":
            raise MiyaqError(f"append log {self.directory} is closed")
        if self._state != "ready":
            raise MiyaqError(f"append log {self.directory} is {self._state}; consume replay() before appending")

    def _failure(self) -> MiyaqError:
        return MiyaqError(f"append log {self.directory} failed ({self._failed}); restart to replay it")

    def _segment_bytes_total(self) -> int:
        return sum(seg.size for seg in self._segments)
