"""File helpers the parts of the append log share (:mod:`miyaq.store.log`).

Small, stateless pieces: the :class:`Segment` record, write/fsync helpers,
a read-only mapping of a whole file, and :class:`Blocking`, which runs a
blocking call (an fsync) on the gevent hub's thread pool when there is a hub
so that only the calling greenlet waits.
"""
from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from miyaq.runtime import green
from miyaq.store.log_format import Buffer

MiB = 1024 * 1024
T = TypeVar("T")

MAX_KEPT_ASIDE = 100
"""Copies of damaged files kept under one name (``.1`` ... after the first):
more and the newest is not kept (logged); nothing grows without end."""

__all__ = ["Blocking", "MAX_KEPT_ASIDE", "MiB", "Segment", "fsync_dir", "kept_aside_name", "mapped", "write_all"]


@dataclass(slots=True, eq=False)
class Segment:
    """One ``log-*.mq`` file: its first seqno, its size, and its fd while open.

    ``deleted`` is set once compaction removed the file: it is never fsynced
    again (its records are in a durable snapshot), only closed. ``damaged``:
    replay found a bad record in it and kept the file whole (it was not the
    last segment, so its tail was not cut): it never takes appends again,
    since records written after the damage would be cut with it at the next
    replay."""

    first: int
    path: str
    size: int
    fd: int = -1
    deleted: bool = False
    damaged: bool = False

    def close(self) -> None:
        """Close the fd if open. Idempotent."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def fsync_dir(directory: str) -> None:
    """fsync a directory, so files created or renamed in it survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def kept_aside_name(name: str) -> str | None:
    """A path that does not exist yet for a copy kept aside as ``name`` (a
    damaged segment's cut bytes, a damaged snapshot): ``name`` itself, else
    ``name.1``, ``name.2``... -- a damage found again at the same place
    never overwrites the copy of an earlier one. None once
    :data:`MAX_KEPT_ASIDE` copies exist."""
    for n in range(MAX_KEPT_ASIDE):
        candidate = name if n == 0 else f"{name}.{n}"
        if not os.path.lexists(candidate):
            return candidate
    return None


def write_all(fd: int, data: bytes) -> None:
    """write(2) until every byte of ``data`` is written (raises OSError, e.g. ENOSPC)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


READ_CHUNK = 1 * MiB


def read_through(fd: int, path: str) -> None:
    """Read every byte of the open file once, and forget them: a page the disk
    cannot give back raises OSError (EIO) naming ``path`` here. Read through
    a mapping instead, such a page is a SIGBUS, which kills the process
    without a line."""
    chunk = memoryview(bytearray(READ_CHUNK))
    while True:
        try:
            if os.readv(fd, [chunk]) == 0:
                return
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from exc


@contextlib.contextmanager
def mapped(path: str) -> Iterator[Buffer]:
    """A whole file, read-only (mmap; ``b""`` when empty). Read through once
    first (:func:`read_through`): an I/O error is an OSError naming the file,
    not a SIGBUS at the mapping's first read of that page."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        read_through(f.fileno(), path)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


class Blocking:
    """Runs blocking calls (fsync) off the event loop when it can.

    ``offload``: ``None`` (default) -- on the hub's thread pool when the
    caller runs in a greenlet of a live hub, inline otherwise; ``True`` --
    always on the thread pool (creating the hub if needed); ``False`` --
    always inline. Exceptions propagate to the caller either way."""

    def __init__(self, offload: bool | None = None) -> None:
        self.offload = offload

    def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        if self.offload is False or (self.offload is None and not green.hub_running()):
            return fn(*args)
        return green.run_in_thread(fn, *args)
