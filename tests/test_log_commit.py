"""The Committer alone: fsync policy, group commit, durable callbacks, the failed state.

It is driven here by a stand-in for the segment files (one real file whose fd
is fsynced), so each test sets up exactly the interleaving it names. Fault
tests say in their docstring which fault they simulate; none asserts on time.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from miyaq.errors import MiyaqError
from miyaq.runtime import Supervisor, green
from miyaq.store.log_commit import Committer, LogFailed
from miyaq.store.log_segments import SyncBatch


class FakeFiles:
    """A SyncSource: every batch fsyncs one real file up to ``last_seqno``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.last_seqno = 0
        self.batches: list[SyncBatch] = []
        self.results: list[bool] = []

    def write(self, n: int = 1) -> int:
        os.write(self.fd, b"x" * n)
        self.last_seqno += n
        return self.last_seqno

    def sync_batch(self) -> SyncBatch:
        batch = SyncBatch(self.last_seqno, [self.fd], False)
        self.batches.append(batch)
        return batch

    def synced(self, batch: SyncBatch, ok: bool) -> None:
        self.results.append(ok)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FakeFiles]:
    fd = os.open(tmp_path / "data", os.O_WRONLY | os.O_CREAT, 0o644)
    yield FakeFiles(fd)
    os.close(fd)


def committer(files: FakeFiles, tmp_path: Path, mode: str = "always", interval: float = 0.0,
              supervisor: Supervisor | None = None, loop: bool = True) -> Committer:
    c = Committer(files, str(tmp_path), mode, interval)
    c.start((supervisor or Supervisor("test")) if loop else None, 0)
    return c


def failing_fsync(code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "fsync", broken)


def test_sync_makes_everything_written_durable_and_runs_callbacks_in_order(files: FakeFiles, tmp_path: Path) -> None:
    c = committer(files, tmp_path)
    seen: list[tuple[int, Any]] = []
    files.write(3)
    c.on_durable(3, lambda s, e: seen.append((s, e)))
    c.on_durable(1, lambda s, e: seen.append((s, e)))
    assert seen == []
    c.sync()
    assert c.durable_seqno == 3 and c.fsyncs == 1 and c.last_fsync is not None
    assert seen == [(1, None), (3, None)]
    c.on_durable(2, lambda s, e: seen.append((s, e)))      # already durable: inline
    assert seen[-1] == (2, None)
    c.sync()                                                # nothing new: no fsync
    assert c.fsyncs == 1 and files.results == [True]


def test_never_mode_confirms_at_once(files: FakeFiles, tmp_path: Path) -> None:
    c = committer(files, tmp_path, mode="never")
    files.write()
    seen: list[Any] = []
    c.on_durable(1, lambda s, e: seen.append(e))
    assert seen == [None] and c.wait_durable(1, timeout=0) and c.fsyncs == 0


def test_wait_durable_times_out_without_a_commit(files: FakeFiles, tmp_path: Path) -> None:
    c = committer(files, tmp_path, mode="interval", interval=60.0, loop=False)   # nothing commits
    files.write()
    assert c.wait_durable(1, timeout=0.01) is False


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
def test_fsync_error_fails_the_log_and_tells_every_waiter(files: FakeFiles, tmp_path: Path, code: int,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Fault: fsync reports EIO / ENOSPC (the written pages may never reach the disk)."""
    c = committer(files, tmp_path)
    files.write()
    c.sync()
    seen: list[tuple[int, Any]] = []
    files.write(2)
    c.on_durable(3, lambda s, e: seen.append((s, e)))
    failing_fsync(code, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="miyaq.store.log"):
        with pytest.raises(LogFailed, match=os.strerror(code)):
            c.sync()
    assert c.fsync_errors == 1 and c.durable_seqno == 1
    assert files.results == [True, False]
    assert len(seen) == 1 and seen[0][0] == 3 and isinstance(seen[0][1], LogFailed)   # never "durable"
    assert "refusing appends" in caplog.text and os.strerror(code) in caplog.text
    late: list[Any] = []
    c.on_durable(3, lambda s, e: late.append(e))            # asked after the failure: told at once
    assert isinstance(late[0], LogFailed)
    with pytest.raises(LogFailed):
        c.wait_durable(3)
    with pytest.raises(LogFailed):
        c.sync()
    assert c.fsync_errors == 1                               # not retried: fsyncgate
    monkeypatch.undo()
    c.recovered(3)                                           # a snapshot rewrote the state
    assert c.failed is None and c.durable_seqno == 3
    files.write()
    c.sync()
    assert c.durable_seqno == 4


def test_interval_loop_is_supervised_and_commits_in_background(files: FakeFiles, tmp_path: Path) -> None:
    sup = Supervisor("node", on_fatal=lambda *a: pytest.fail("the committer must not die"))
    c = committer(files, tmp_path, mode="interval", interval=0.001, supervisor=sup)
    for _ in range(5):
        files.write()
        c.kick()
    assert sup.live() == ["log-committer"]
    assert c.wait_durable(5, timeout=30)
    c.close()
    for _ in range(500):             # the kill lands at the loop's next switch
        if not sup.live():
            break
        green.sleep(0.01)
    assert sup.live() == [] and not sup.crashes


def test_interval_fsync_error_is_seen_and_the_loop_survives_to_recovery(
        files: FakeFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: ENOSPC on the group commit's fsync, with callbacks waiting on the batch."""
    sup = Supervisor("node", on_fatal=lambda *a: pytest.fail("a failed fsync is handled, not a crash"))
    c = committer(files, tmp_path, mode="interval", interval=0.0, supervisor=sup)
    failing_fsync(errno.ENOSPC, monkeypatch)
    answers: list[Any] = []
    done = green.Event()

    def answer(seqno: int, error: BaseException | None) -> None:
        answers.append(error)
        done.set()

    files.write()
    c.on_durable(1, answer)
    assert done.wait(30)
    assert isinstance(answers[0], LogFailed) and "No space left on device" in str(answers[0])
    assert c.fsync_errors == 1 and sup.live() == ["log-committer"] and not sup.crashes
    monkeypatch.undo()
    c.recovered(1)
    files.write()
    c.kick()
    assert c.wait_durable(2, timeout=30)
    c.close()


def test_a_bug_in_the_commit_loop_fails_the_log_and_stops_the_owner(
        files: FakeFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: an unexpected exception (not an OSError) inside the group commit loop."""
    fatal: list[tuple[str, BaseException]] = []
    stopped = green.Event()

    def on_fatal(name: str, exc: BaseException) -> None:
        fatal.append((name, exc))
        stopped.set()

    sup = Supervisor("node", on_fatal=on_fatal)
    c = committer(files, tmp_path, mode="interval", interval=0.0, supervisor=sup)

    def bug() -> SyncBatch:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(files, "sync_batch", bug)
    answers: list[Any] = []
    files.write()
    c.on_durable(1, lambda s, e: answers.append(e))
    assert stopped.wait(30)
    assert fatal[0][0] == "log-committer" and isinstance(fatal[0][1], RuntimeError)
    assert sup.crashes["log-committer"] == 1
    assert isinstance(c.failed, RuntimeError)
    assert len(answers) == 1 and isinstance(answers[0], LogFailed)     # not left hanging, not "durable"
    with pytest.raises(LogFailed, match="injected bug"):
        c.wait_durable(1)


def test_close_wakes_waiters_and_answers_pending_callbacks(files: FakeFiles, tmp_path: Path) -> None:
    c = committer(files, tmp_path, mode="interval", interval=60.0, loop=False)
    files.write()
    answers: list[Any] = []
    c.on_durable(1, lambda s, e: answers.append(e))
    c.close()
    assert len(answers) == 1 and isinstance(answers[0], MiyaqError)
    with pytest.raises(MiyaqError, match="closed"):
        c.wait_durable(1)


def test_a_raising_callback_is_logged_and_does_not_stop_the_others(files: FakeFiles, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    c = committer(files, tmp_path)
    files.write(2)
    seen: list[int] = []

    def bad(seqno: int, error: BaseException | None) -> None:
        raise ValueError("callback bug")

    c.on_durable(1, bad)
    c.on_durable(2, lambda s, e: seen.append(s))
    with caplog.at_level(logging.ERROR, logger="miyaq.store.log"):
        c.sync()
    assert seen == [2] and "on_durable callback for seqno 1 raised" in caplog.text
