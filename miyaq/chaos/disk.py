"""Small filesystems under the nodes' data directories, for disk faults.

With the ``diskfull`` fault enabled, each node's data directory is a
``tmpfs`` of ``size_mb`` MiB that the run mounts (root, Linux) before the
node's first start and unmounts at the end. :meth:`SmallDisks.fill` writes
a filler file until the filesystem is full (``ENOSPC`` for every write
the node makes afterwards, its log's included); :meth:`SmallDisks.free`
deletes it. Nothing outside the run's own directory is mounted or
written; :meth:`SmallDisks.close` never raises (a run killed with
``kill -9`` leaves the mounts: ``umount`` them by hand, docs/chaos.md).
"""
from __future__ import annotations

import errno
import logging
import os
import subprocess

from ..errors import ConfigError, MiyaqError

logger = logging.getLogger(__name__)

FILLER = ".chaos-filler"
CHUNK = 1 << 20
TIMEOUT = 10.0


def _run(*argv: str) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MiyaqError(f"{' '.join(argv)} failed: {exc}") from None
    if done.returncode != 0:
        raise MiyaqError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


#: MiB of each node's tmpfs when the run has the ``diskfull`` fault.
SMALL_DISK_MB = 256


class SmallDisks:
    def __init__(self, size_mb: int = SMALL_DISK_MB) -> None:
        if os.geteuid() != 0:
            raise ConfigError("the diskfull fault needs root (it mounts a small tmpfs under each node's data dir)")
        self.size_mb = size_mb
        self.mounted: list[str] = []

    def mount(self, path: str) -> None:
        """Mount a tmpfs on ``path`` unless this object did already."""
        path = os.path.abspath(path)
        if path in self.mounted:
            return
        os.makedirs(path, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700", "tmpfs", path)
        self.mounted.append(path)

    def fill(self, path: str) -> int:
        """Write a filler file on ``path``'s filesystem until it is full; its size."""
        written = 0
        block = b"\0" * CHUNK
        with open(os.path.join(path, FILLER), "ab") as fh:
            while True:
                try:
                    written += os.write(fh.fileno(), block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise MiyaqError(f"filling {path}: {exc}") from None
                    break
        return written

    def free(self, path: str) -> None:
        try:
            os.unlink(os.path.join(path, FILLER))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Unmount every tmpfs (lazily: a node still exiting keeps it until it is gone)."""
        for path in reversed(self.mounted):
            try:
                _run("umount", "-l", path)
            except MiyaqError as exc:
                logger.warning("%s", exc)
        self.mounted = []
