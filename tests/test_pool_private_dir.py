"""The processes pool's private directory: removed at stop, and -- when its
worker was killed and could not remove it -- by the next pool that starts
(miyaq.worker.pools.private_dir). Without that every SIGKILLed worker left a
directory in /tmp forever."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from miyaq.worker.pools import private_dir
from miyaq.worker.pools.private_dir import LOCK, PREFIX, PrivateDir, sweep_abandoned


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    """The temporary directory the pool uses, isolated for the test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def pool_dirs(tmp) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(PREFIX))


def abandon_one(tmp) -> str:
    """Fault: a process makes a pool directory and is killed (SIGKILL) before
    it can remove it; the kernel releases its lock."""
    code = ("import os, signal, tempfile; tempfile.tempdir = os.environ['AT']; "
            "from miyaq.worker.pools.private_dir import PrivateDir; d = PrivateDir(); print(d.path, flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "AT": str(tmp)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    path = done.stdout.strip()
    assert os.path.isfile(os.path.join(path, LOCK))
    return os.path.basename(path)


def test_a_pool_directory_is_private_locked_and_removed_at_stop(tmp):
    d = PrivateDir()
    assert oct(os.stat(d.path).st_mode & 0o777) == "0o700"
    assert sweep_abandoned() == 0 and os.path.isdir(d.path)      # its owner lives: kept
    d.remove()
    d.remove()                                                   # idempotent
    assert pool_dirs(tmp) == []


def test_the_directory_of_a_killed_worker_is_removed_by_the_next_pool(tmp):
    """Fault: a worker killed with SIGKILL left its directory. The next pool
    that starts removes it, and only it."""
    left = abandon_one(tmp)
    assert pool_dirs(tmp) == [left]
    d = PrivateDir()
    assert pool_dirs(tmp) == [os.path.basename(d.path)]
    d.remove()


def test_what_is_not_an_abandoned_pool_directory_is_left_alone(tmp):
    """A live pool's directory, one without a lock file (an older version's, or
    not a pool's), a file and a symlink with the prefix: none is removed."""
    live = PrivateDir()
    (tmp / f"{PREFIX}older").mkdir()
    (tmp / f"{PREFIX}file").write_text("x")
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / LOCK).write_text("")
    os.symlink(tmp / "elsewhere", tmp / f"{PREFIX}link")
    assert sweep_abandoned() == 0
    assert pool_dirs(tmp) == sorted([os.path.basename(live.path), f"{PREFIX}older", f"{PREFIX}file",
                                     f"{PREFIX}link"])
    assert (tmp / "elsewhere" / LOCK).exists()
    live.remove()


def test_one_start_removes_a_bounded_number(tmp):
    """Many abandoned directories: one sweep removes at most its limit
    (MAX_SWEPT at a pool's start); the next removes the rest."""
    for _ in range(3):     # as a killed owner leaves them: locked once, the lock let go
        os.close(private_dir._locked_file(tempfile.mkdtemp(prefix=PREFIX)))
    assert sweep_abandoned(limit=2) == 2
    assert len(pool_dirs(tmp)) == 1
    assert sweep_abandoned() == 1 and pool_dirs(tmp) == []
    assert private_dir.MAX_SWEPT == 64
