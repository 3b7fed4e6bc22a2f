"""Reading a small file an operator names (a key, a credentials file) without
trusting what it is: a regular file of at most a given size, else a clear
error. Opened without blocking (a FIFO with no writer would block the whole
hub) and checked with ``fstat`` on what was opened (a symlink to
``/dev/zero`` is a device: read whole, it would fill the memory)."""
from __future__ import annotations

import logging
import os
import stat

from ..errors import ConfigError

__all__ = ["ChangeWatch", "file_stamp", "own_group", "read_by_others", "read_small_file", "warn_if_read_by_others"]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_small_file(path: str, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them;
    ``ConfigError`` naming ``path`` as ``what`` ("a certificate") if it is
    anything else or larger. ``OSError`` when it cannot be opened or read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not {what} ({_kind(st.st_mode)}, not a regular file)")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ConfigError(f"{path} is not {what} (larger than {limit} bytes)")
    return b"".join(chunks)


def read_by_others(st: os.stat_result) -> bool:
    """True if a file with this ``stat`` may be read by users other than this
    process's: any bit for others, or a group bit for a group this process is
    not in. A secret mounted by Kubernetes is ``0440`` with the pod's
    ``fsGroup``, the node's own group: not exposed (it was warned about,
    with advice -- ``chmod 600`` -- that a read-only mount cannot take)."""
    if st.st_mode & stat.S_IRWXO:
        return True
    if st.st_mode & stat.S_IRWXG:
        return not own_group(st)
    return False


def own_group(st: os.stat_result) -> bool:
    """True if the group of a file with this ``stat`` is one this process is in."""
    return st.st_gid in {os.getegid(), *os.getgroups()}


def warn_if_read_by_others(path: str, what: str, logger: logging.Logger) -> bool:
    """Log a warning on ``logger`` when others may read the secret file
    ``path`` (:func:`read_by_others`), naming it as ``what`` ("secret key
    file", "http_key"), with its mode, its group and the fix; True if so. A
    file that cannot be stat'ed is not warned about: its read says why."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if not read_by_others(info):
        return False
    logger.warning("%s %s is readable by others (mode %o, group %d): chmod 600 it",
                   what, path, stat.S_IMODE(info.st_mode), info.st_gid)
    return True


Stamp = tuple[int, int, int]


def file_stamp(path: str) -> Stamp:
    """What changes when the file at ``path`` is written or replaced: its
    mtime (ns), size and inode. OSError if it cannot be looked at."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ChangeWatch:
    """Whether a file an operator may edit changed since it was last looked
    at: :meth:`changed` is True once a change (a file that cannot be looked
    at is one state too), so a broken file is read -- and reported -- once,
    not at every look."""

    def __init__(self, path: str, seen: Stamp | None = None) -> None:
        self.path = path
        self.seen = seen
        """The stamp last looked at (:func:`file_stamp`), or None."""

    def changed(self) -> bool:
        try:
            stamp: Stamp | None = file_stamp(self.path)
        except OSError:
            stamp = None
        if stamp == self.seen:
            return False
        self.seen = stamp
        return True
