"""The Snapshotter alone (with the Segments and Committer it writes for), and the Scanner
that reads what they left. Fault tests say in their docstring which fault they simulate.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from miyaq.errors import MiyaqError
from miyaq.store.log_commit import Committer
from miyaq.store.log_compact import SnapshotInfo, Snapshotter
from miyaq.store.log_format import KIND_RECORD, KIND_SNAP_BEGIN, KIND_SNAP_END, KIND_SNAP_RECORD, encode, snapshot_name
from miyaq.store.log_replay import Scanner
from miyaq.store.log_segments import Segments


class Parts:
    def __init__(self, directory: Path, after_records: int = 1000, after_bytes: int = 1 << 30) -> None:
        self.directory = str(directory)
        self.segments = Segments(self.directory, segment_bytes=200)
        self.committer = Committer(self.segments, self.directory, "always", 0.0)
        self.committer.start(None, 0)
        self.snap = Snapshotter(self.directory, self.segments, self.committer, max_record_bytes=1 << 20,
                                after_records=after_records, after_bytes=after_bytes)

    def write(self, n: int) -> int:
        first = self.segments.last_seqno + 1
        frames = [encode(KIND_RECORD, s, {"i": s, "pad": b"p" * 20}) for s in range(first, first + n)]
        return self.segments.write(first, frames)

    def close(self) -> None:
        self.segments.close()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = Parts(tmp_path, after_records=10)
    yield p
    p.close()


def scan(directory: Path) -> tuple[Scanner, list[Any]]:
    scanner = Scanner(str(directory))
    entries = list(scanner.entries())
    scanner.unlock()
    return scanner, entries


def test_compact_replaces_segments_by_a_snapshot(parts: Parts, tmp_path: Path) -> None:
    parts.write(12)
    assert parts.snap.should_compact() and parts.snap.records_since == 12
    state = [{"k": i} for i in range(3)]
    assert parts.snap.compact(state) == 12
    assert list(tmp_path.glob("log-*.mq")) == [] and (tmp_path / snapshot_name(12)).exists()
    assert parts.snap.current.seqno == 12 and parts.snap.current.size == (tmp_path / snapshot_name(12)).stat().st_size
    assert parts.committer.durable_seqno == 12 and parts.snap.records_since == 0
    assert not parts.snap.should_compact() and parts.snap.compactions == 1
    parts.write(2)
    _, entries = scan(tmp_path)
    assert [e.record for e in entries] == state + [{"i": 13, "pad": b"p" * 20}, {"i": 14, "pad": b"p" * 20}]


def test_bytes_threshold(tmp_path: Path) -> None:
    p = Parts(tmp_path, after_bytes=150)
    p.write(2)
    assert not p.snap.should_compact()
    p.write(2)
    assert p.snap.should_compact()
    p.close()


def test_compaction_inside_compaction_is_refused(parts: Parts) -> None:
    parts.write(1)

    def records() -> Iterator[dict[str, int]]:
        parts.snap.compact([])
        yield {"never": 1}

    with pytest.raises(MiyaqError, match="already running"):
        parts.snap.compact(records())
    assert parts.snap.errors == 1


def test_full_disk_while_writing_the_snapshot_changes_nothing(parts: Parts, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: ENOSPC while the snapshot is written (the segments it would replace stay)."""
    parts.write(5)
    before = sorted(p.name for p in tmp_path.iterdir())

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        parts.snap.compact([{"k": 1}])
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before          # no *.tmp left behind
    assert parts.snap.errors == 1 and parts.snap.current == SnapshotInfo()
    _, entries = scan(tmp_path)
    assert [e.record["i"] for e in entries] == [1, 2, 3, 4, 5]


def test_snapshot_recovers_a_failed_log(parts: Parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: fsync EIO fails the log; a snapshot of the owner's state rewrites it and appends resume."""
    parts.write(3)

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(MiyaqError):
        parts.committer.sync()
    monkeypatch.undo()
    assert parts.committer.failed is not None
    parts.snap.compact([{"state": "from memory"}])
    assert parts.committer.failed is None and parts.committer.durable_seqno == 3
    assert list(tmp_path.glob("log-*.mq")) == []                         # the untrusted files are gone
    parts.write(1)
    parts.committer.sync()
    _, entries = scan(tmp_path)
    assert [e.record for e in entries] == [{"state": "from memory"}, {"i": 4, "pad": b"p" * 20}]


def test_scanner_reports_what_it_found(parts: Parts, tmp_path: Path) -> None:
    parts.write(4)
    parts.snap.compact([{"k": 1}, {"k": 2}])
    parts.write(3)
    parts.close()
    scanner, entries = scan(tmp_path)
    opened = scanner.opened
    assert opened.last_seqno == 7 and opened.records_after_snapshot == 3
    assert opened.snapshot.seqno == 4 and opened.snapshot.path == str(tmp_path / snapshot_name(4))
    assert [s.first for s in opened.segments] == [5]
    assert [(e.seqno, e.from_snapshot) for e in entries] == [(4, True), (4, True), (5, False), (6, False), (7, False)]
    assert (scanner.truncated_bytes, scanner.corrupt_records) == (0, 0)


def test_scanner_of_an_empty_directory(tmp_path: Path) -> None:
    scanner, entries = scan(tmp_path / "new")
    assert entries == [] and scanner.opened.last_seqno == 0 and scanner.opened.segments == []


def test_scanner_holds_the_lock_until_unlocked(tmp_path: Path) -> None:
    first = Scanner(str(tmp_path))
    list(first.entries())
    with pytest.raises(MiyaqError, match="in use"):
        list(Scanner(str(tmp_path)).entries())
    first.unlock()
    first.unlock()
    scan(tmp_path)


def test_a_snapshot_in_another_log_format_is_refused_and_nothing_is_changed(parts: Parts, tmp_path: Path) -> None:
    """Fault: a node rolled back to this version after a newer one compacted
    its log in a format of its own. The snapshot's header names that format:
    the replay refuses the data dir with an error naming it, and neither
    reads the snapshot as this version's (records misread) nor takes it for
    damage (renamed ``.bad``, the segments it covers deleted). The refused
    replay releases the directory's LOCK: the second open below, in the same
    process, found it held before."""
    parts.write(12)
    parts.snap.compact([{"k": 1}])
    parts.write(2)
    snapshot = tmp_path / snapshot_name(12)
    frames = [encode(KIND_SNAP_BEGIN, 12, {"format": 2, "created": 0.0}),
              encode(KIND_SNAP_RECORD, 12, {"k": 1}), encode(KIND_SNAP_END, 12, {"records": 1})]
    snapshot.write_bytes(b"".join(frames))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "LOCK"}
    with pytest.raises(MiyaqError, match="is in log format 2, and this miyaq reads format 1 only"):
        scan(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "LOCK"} == before
    snapshot.write_bytes(b"".join([encode(KIND_SNAP_BEGIN, 12, {"format": 1, "created": 0.0}), *frames[1:]]))
    _, entries = scan(tmp_path)                       # its own format: read as before
    assert [e.record for e in entries][:1] == [{"k": 1}]
