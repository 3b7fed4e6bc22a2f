"""Modes of the data dir and of the log's files, which hold every task's
payload (the operator-security audit of 2026-12-06). Modes are read with
``os.stat``: the suite may run as root, who reads any file. A test that
sets the umask puts it back.

Fault tests say in their docstring which fault they simulate."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from file_modes import mode

from miyaq.client.client import Client
from miyaq.store.log_commit import Committer
from miyaq.store.log_compact import Snapshotter
from miyaq.store.log_format import KIND_RECORD, encode, snapshot_name
from miyaq.store.log_segments import Segments
from miyaq.testing.harness import ThreadNode


# -- the data dir ---------------------------------------------------------------------------------
def test_a_data_dir_the_node_makes_is_owner_only_and_its_segments_too(tmp_path: Path, umask_022: None,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Fault: a node starts under ``umask 022`` on a data dir that does not
    exist yet. Before the fix the directory was 0755 and every segment 0644:
    every local user could read every payload. Now the directory is 0700
    and the segment 0600, and no warning is given (the node made them)."""
    data = tmp_path / "parent" / "data"
    with caplog.at_level(logging.WARNING, logger="miyaq.node.data_dir"):
        with ThreadNode(data_dir=str(data), heartbeat=0.25) as node:
            client = Client(node.endpoint, submit_timeout=10.0)
            try:
                client.submit("add", [1, 2], wait=True)
            finally:
                client.close(flush=False)
    assert caplog.records == []
    assert mode(data) == 0o700
    segments = list(data.glob("log-*"))
    assert segments and all(mode(path) == 0o600 for path in segments)


def test_an_existing_data_dir_others_may_read_is_warned_about_not_changed(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Fault: the operator's data dir is 0755. Its mode is theirs (a mount
    point, a volume shared with a group): the node leaves it and warns once
    at start, naming it and the fix."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="miyaq.node.data_dir"):
        with ThreadNode(data_dir=str(data), heartbeat=0.25):
            pass
    [warning] = caplog.records
    assert warning.getMessage().startswith(f"data dir {data} is open to others (mode 755, group ")
    assert warning.getMessage().endswith("chmod 700 it")
    assert mode(data) == 0o755


def test_segments_and_snapshots_are_owner_only_whatever_the_umask(tmp_path: Path, umask_000: None) -> None:
    """Fault: the log writes under ``umask 000``. Before the fix a segment
    and a snapshot were 0666 (0644 under ``umask 022``); now 0600."""
    segments = Segments(str(tmp_path), segment_bytes=200)
    committer = Committer(segments, str(tmp_path), "always", 0.0)
    committer.start(None, 0)
    snapshots = Snapshotter(str(tmp_path), segments, committer, max_record_bytes=1 << 20,
                            after_records=1, after_bytes=1 << 30)
    try:
        segments.write(1, [encode(KIND_RECORD, seqno, {"i": seqno}) for seqno in (1, 2)])
        written = list(tmp_path.glob("log-*"))
        assert written and all(mode(path) == 0o600 for path in written)
        assert snapshots.compact([{"k": 1}]) == 2
        assert mode(tmp_path / snapshot_name(2)) == 0o600
    finally:
        segments.close()
