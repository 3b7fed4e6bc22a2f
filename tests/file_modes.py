"""Files' modes in tests: read with ``os.stat`` (the suite may run as root,
who reads any file, so a test never tries to read as another user), and
the process's umask set for a test and put back after it (the fixtures
``umask_000`` and ``umask_022`` of conftest.py)."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path



def mode(path: str | Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    """The process's umask is ``value`` inside; the previous one is put back."""
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)
