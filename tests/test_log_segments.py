"""Segments alone: the log's files, appending, rotation, what an fsync covers.

Fault tests say in their docstring which fault they simulate.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from miyaq.errors import MiyaqError
from miyaq.store.log_files import Segment
from miyaq.store.log_format import KIND_RECORD, encode, iter_frames, segment_name
from miyaq.store.log_segments import LogWriteError, Segments


def frames(first: int, n: int, pad: int = 20) -> list[bytes]:
    return [encode(KIND_RECORD, seqno, {"i": seqno, "pad": b"p" * pad}) for seqno in range(first, first + n)]


def seqnos_in(path: str) -> list[int]:
    with open(path, "rb") as f:
        return [item.seqno for item in iter_frames(f.read())]  # type: ignore[union-attr]


def test_write_fills_segments_and_names_them_by_first_seqno(tmp_path: Path) -> None:
    segs = Segments(str(tmp_path), segment_bytes=200)
    size = len(frames(1, 1)[0])
    assert segs.write(1, frames(1, 10)) == 10
    assert segs.write(11, frames(11, 3)) == 13
    per_file = 200 // size
    assert [s.first for s in segs.files] == list(range(1, 14, per_file))
    assert all(s.size <= 200 for s in segs.files)
    assert [seqnos_in(s.path) for s in segs.files][0] == list(range(1, per_file + 1))
    assert sum(len(seqnos_in(s.path)) for s in segs.files) == 13
    assert segs.total_bytes() == sum(os.path.getsize(s.path) for s in segs.files)
    assert segs.active is segs.files[-1] and segs.dir_dirty
    segs.close()


def test_a_frame_larger_than_a_segment_gets_one_alone(tmp_path: Path) -> None:
    segs = Segments(str(tmp_path), segment_bytes=64)
    big = frames(1, 1, pad=200)
    segs.write(1, big + frames(2, 1))
    assert [s.first for s in segs.files] == [1, 2]
    assert segs.files[0].size == len(big[0])
    segs.close()


def test_out_of_order_seqno_is_refused(tmp_path: Path) -> None:
    segs = Segments(str(tmp_path), segment_bytes=1024)
    with pytest.raises(MiyaqError, match="record 3 written after 0"):
        segs.write(3, frames(3, 1))
    assert segs.files == [] and segs.last_seqno == 0


def test_enospc_on_write_is_undone_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: the disk is full in the middle of a write (a partial write, then ENOSPC)."""
    segs = Segments(str(tmp_path), segment_bytes=4096)
    segs.write(1, frames(1, 2))
    before = segs.active.size if segs.active else -1
    real_write = os.write
    calls = []

    def full(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:7])   # a short write first, as the kernel does
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(LogWriteError, match="No space left on device") as info:
        segs.write(3, frames(3, 2))
    monkeypatch.undo()
    assert info.value.details == {"logged": 0, "errno": errno.ENOSPC, "undone": True}
    assert segs.last_seqno == 2 and segs.active is not None
    assert segs.active.size == before == os.path.getsize(segs.active.path)   # the 7 bytes were cut
    assert segs.write(3, frames(3, 1)) == 3                                 # and the log goes on
    assert seqnos_in(segs.files[0].path) == [1, 2, 3]
    segs.close()


def test_failure_in_a_later_segment_reports_what_was_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: a batch spans two segments and the write to the second one fails."""
    segs = Segments(str(tmp_path), segment_bytes=100)
    per_file = 100 // len(frames(1, 1)[0])
    real_write = os.write
    writes = []

    def second_fails(fd: int, data: Any) -> int:
        writes.append(fd)
        if len(set(writes)) > 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", second_fails)
    with pytest.raises(LogWriteError) as info:
        segs.write(1, frames(1, per_file + 1))
    monkeypatch.undo()
    assert info.value.details["logged"] == per_file
    assert segs.last_seqno == per_file


def test_undo_that_fails_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: write fails and so does the ftruncate that would undo it (a torn tail stays)."""
    segs = Segments(str(tmp_path), segment_bytes=4096)
    segs.write(1, frames(1, 1))

    def broken(*args: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", broken)
    monkeypatch.setattr(os, "ftruncate", broken)
    with pytest.raises(LogWriteError) as info:
        segs.write(2, frames(2, 1))
    monkeypatch.undo()
    assert info.value.details["undone"] is False
    segs.close()


def test_cannot_create_a_segment_is_a_write_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: the directory is full of inodes (creating the next segment fails)."""
    segs = Segments(str(tmp_path), segment_bytes=4096)
    real_open = os.open

    def no_inodes(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_inodes)
    with pytest.raises(LogWriteError, match="cannot create") as info:
        segs.write(1, frames(1, 1))
    monkeypatch.undo()
    assert info.value.details["errno"] == errno.ENOSPC and segs.last_seqno == 0
    segs.close()


def test_sync_batch_covers_retired_active_and_directory(tmp_path: Path) -> None:
    segs = Segments(str(tmp_path), segment_bytes=100)
    segs.write(1, frames(1, 8))
    retired = segs.files[:-1]
    batch = segs.sync_batch()
    assert batch.upto == 8 and batch.directory
    assert batch.fds == [s.fd for s in retired] + [segs.files[-1].fd]
    with pytest.raises(MiyaqError, match="already in flight"):
        segs.sync_batch()
    segs.synced(batch, ok=True)
    assert all(s.fd == -1 for s in retired) and segs.files[-1].fd >= 0
    again = segs.sync_batch()
    assert again.fds == [segs.files[-1].fd] and not again.directory
    segs.synced(again, ok=False)
    segs.close()


def test_failed_sync_keeps_directory_dirty(tmp_path: Path) -> None:
    segs = Segments(str(tmp_path), segment_bytes=100)
    segs.write(1, frames(1, 1))
    segs.synced(segs.sync_batch(), ok=False)
    assert segs.dir_dirty
    segs.close()


def test_never_mode_closes_retired_segments_unless_an_fsync_holds_them(tmp_path: Path) -> None:
    segs = Segments(str(tmp_path), segment_bytes=100, close_retired_at_once=True)
    segs.write(1, frames(1, 1))
    first = segs.active
    assert first is not None
    segs.retire_active()
    assert first.fd == -1
    segs.write(2, frames(2, 1))
    second = segs.active
    assert second is not None
    batch = segs.sync_batch()        # an fsync of `second` is in flight ...
    segs.retire_active()             # ... so retiring it must not close its fd
    assert second.fd >= 0
    segs.synced(batch, ok=True)
    nxt = segs.sync_batch()
    assert nxt.fds == [second.fd]
    segs.synced(nxt, ok=True)
    assert second.fd == -1
    segs.close()


def test_remove_covered_deletes_files_and_never_fsyncs_them_again(tmp_path: Path) -> None:
    segs = Segments(str(tmp_path), segment_bytes=100)
    segs.write(1, frames(1, 6))
    in_flight = segs.sync_batch()    # holds the active segment's fd
    active = segs.active
    assert active is not None
    segs.retire_active()
    existing = list(segs.files)
    assert len(existing) > 1
    removed = segs.remove_covered(segs.last_seqno)
    assert removed == existing
    assert list(tmp_path.glob("log-*.mq")) == [] and segs.files == []
    assert all(s.deleted for s in removed)
    assert active.fd >= 0            # still being fsynced: not closed under the fsync
    segs.synced(in_flight, ok=True)
    nxt = segs.sync_batch()
    assert nxt.fds == [] and nxt.retired == [active]
    segs.synced(nxt, ok=True)
    assert active.fd == -1
    segs.write(7, frames(7, 1))
    assert [s.first for s in segs.files] == [7] and os.path.basename(segs.files[0].path) == segment_name(7)
    segs.close()


def test_adopt_reopens_the_last_segment_when_it_has_room(tmp_path: Path) -> None:
    first = Segments(str(tmp_path), segment_bytes=1024)
    first.write(1, frames(1, 2))
    first.close()
    path = str(tmp_path / segment_name(1))
    segs = Segments(str(tmp_path), segment_bytes=1024)
    segs.adopt([Segment(1, path, os.path.getsize(path))], 2)
    assert segs.active is not None and segs.active.fd >= 0
    segs.write(3, frames(3, 1))
    assert seqnos_in(path) == [1, 2, 3]
    segs.close()

    full = Segments(str(tmp_path), segment_bytes=os.path.getsize(path))
    full.adopt([Segment(1, path, os.path.getsize(path))], 3)
    assert full.active is None
    full.write(4, frames(4, 1))
    assert [s.first for s in full.files] == [1, 4]
    full.close()
