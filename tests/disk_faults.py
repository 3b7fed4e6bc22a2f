"""Injected disk faults for tests: os.write / os.fsync fail for files under one directory.

Only the files under ``directory`` fail (the fd's path is read from
/proc/self/fd), so sockets, pipes and pytest's own output are untouched --
also in the other threads of the process (a ThreadNode's hub).
"""
from __future__ import annotations

import errno
import os
from typing import Any

import pytest


class FailingDisk:
    """While :attr:`failing`, writes and fsyncs of files under ``directory`` raise ``OSError(code)``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: str, code: int = errno.ENOSPC,
                 ops: tuple[str, ...] = ("write", "fsync")) -> None:
        self.directory = os.path.realpath(directory)
        self.code = code
        self.failing = False
        self.refused: dict[str, int] = {op: 0 for op in ops}
        for op in ops:
            monkeypatch.setattr(os, op, self._wrap(op, getattr(os, op)))

    def _wrap(self, op: str, real: Any) -> Any:
        def call(fd: int, *args: Any) -> Any:
            if self.failing and self._ours(fd):
                self.refused[op] += 1
                raise OSError(self.code, os.strerror(self.code))
            return real(fd, *args)
        return call

    def _ours(self, fd: int) -> bool:
        return opened_under(fd, self.directory)


def opened_under(fd: int, directory: str) -> bool:
    """Whether descriptor ``fd`` is a file in ``directory`` (or the directory itself)."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return path == directory or path.startswith(directory + os.sep)
