"""The processes pool's private directory, and the ones killed workers left.

The pool's ``ipc://`` socket lives in a directory only its user may enter
(``mkdtemp``: mode 0700). A worker that stops removes it; one that is killed
(SIGKILL, the OOM killer) cannot, and every such directory would stay in the
temporary directory forever. So each pool holds an exclusive ``flock`` on a
file in its directory for as long as it lives -- the kernel releases it when
the process dies, however it dies -- and a starting pool removes the
directories of its user whose lock it can take: their owners are gone.

A lock, not a process id: a pid is reused, and a worker in another pid
namespace (a container sharing ``/tmp``) is not visible by its pid at all.
The lock file gets its name only once it is locked, so a sweeper never finds
an unlocked lock of a pool that is starting. A directory without a lock file
(made by a version before this one, or by something else) is left alone.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile

logger = logging.getLogger(__name__)

PREFIX = "miyaq-pool-"
LOCK = "owner.lock"
MAX_SWEPT = 64
"""Most abandoned directories one start removes (the rest go at later starts)."""


class PrivateDir:
    """A new private directory under the temporary directory (``TMPDIR``),
    locked by this process until :meth:`remove`."""

    def __init__(self) -> None:
        sweep_abandoned()
        self.path = tempfile.mkdtemp(prefix=PREFIX)
        try:
            self._fd = _locked_file(self.path)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def remove(self) -> None:
        """Remove the directory, then let go of its lock. Idempotent."""
        if self._fd < 0:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = -1


def _locked_file(path: str) -> int:
    """Create ``<path>/owner.lock`` holding its lock (descriptor returned;
    not inherited by the pool's children)."""
    staging = os.path.join(path, LOCK + ".new")
    fd = os.open(staging, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(staging, os.path.join(path, LOCK))
    except BaseException:
        os.close(fd)
        raise
    return fd


def sweep_abandoned(parent: str | None = None, limit: int = MAX_SWEPT) -> int:
    """Remove up to ``limit`` pool directories of this user under ``parent``
    (default: the temporary directory) whose owner is gone. Never raises:
    what cannot be looked at or removed is left. How many were removed."""
    parent = parent or tempfile.gettempdir()
    removed = 0
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return 0
    for entry in entries:
        if removed >= limit:
            break
        try:
            if (not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False)
                    or entry.stat(follow_symlinks=False).st_uid != os.getuid()):
                continue
            if _remove_if_abandoned(entry.path):
                removed += 1
        except OSError:
            continue
    if removed:
        logger.info("processes pool: removed %d directory(ies) left by killed workers in %s", removed, parent)
    return removed


def _remove_if_abandoned(path: str) -> bool:
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False            # not ours to judge: an older version's, or not a pool's
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False        # its worker is alive
        shutil.rmtree(path, ignore_errors=True)
        return not os.path.exists(path)
    finally:
        os.close(fd)
