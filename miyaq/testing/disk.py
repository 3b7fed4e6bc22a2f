"""A small filesystem that fills up on purpose, for disk-full tests and chaos runs.

:class:`SmallFilesystem` mounts a tmpfs of a given size (root only: ``mount
-t tmpfs -o size=...``), gives a node its data dir inside it, and fills and
frees it on demand with a filler file next to that data dir. What a node
does then is in docs/durability.md ("A full or failing disk"): it refuses
new submits with ``busy`` (``reason: "storage"``), keeps serving what it
holds, and takes new tasks again within a few seconds of :meth:`free`.
"""
from __future__ import annotations

import errno
import os
import subprocess
from typing import Any

__all__ = ["SmallFilesystem", "can_mount"]

CHUNK = 64 * 1024


def can_mount() -> bool:
    """True when this process may mount filesystems (it runs as root)."""
    return os.geteuid() == 0


class SmallFilesystem:
    """A tmpfs of ``size`` bytes on ``mountpoint``; :attr:`data_dir` is a node's data dir in it."""

    def __init__(self, mountpoint: str, size: int = 2 * 1024 * 1024) -> None:
        self.mountpoint = os.path.abspath(mountpoint)
        self.size = size
        self.data_dir = os.path.join(self.mountpoint, "data")
        self.filler = os.path.join(self.mountpoint, "filler")
        self.mounted = False

    def mount(self) -> "SmallFilesystem":
        """Mount it (raises ``subprocess.CalledProcessError`` with mount's message if it cannot)."""
        os.makedirs(self.mountpoint, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", self.mountpoint],
                       check=True, capture_output=True, text=True)
        self.mounted = True
        os.makedirs(self.data_dir, exist_ok=True)
        return self

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Append to the filler file until the filesystem is full; returns the bytes added."""
        added = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in (CHUNK, 4096, 512, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        added += os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return added

    def free(self) -> None:
        """Delete the filler: the space is back."""
        try:
            os.unlink(self.filler)
        except FileNotFoundError:
            pass

    def unmount(self) -> None:
        """Unmount (lazily, so a process still holding files there does not block it). Idempotent."""
        if self.mounted:
            subprocess.run(["umount", "-l", self.mountpoint], check=False, capture_output=True)
            self.mounted = False

    def __enter__(self) -> "SmallFilesystem":
        return self.mount()

    def __exit__(self, *exc: Any) -> None:
        self.unmount()
