"""The LogWriter alone: batches, acknowledgement gating, and disk faults (refuse, serve, recover).

The "state" here is a dict standing in for a node's task table: records
change it, and the recovery snapshot is written from it. Fault tests say in
their docstring which fault they simulate; none asserts on time.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from disk_faults import FailingDisk

from miyaq.errors import Busy
from miyaq.runtime import fairness
from miyaq.runtime import LOG, Supervisor, green
from miyaq.store.log import AppendLog
from miyaq.store.log_writer import LogWriter


class Node:
    """A stand-in for the node: a state, the writer that logs it, and acknowledgements."""

    def __init__(self, directory: Path, fsync: str = "always", supervisor: Supervisor | None = None,
                 **writer: Any) -> None:
        self.directory = directory
        self.state: dict[str, Any] = {}
        self.log = AppendLog(directory, fsync=fsync, interval_ms=0, offload_fsync=False, supervisor=supervisor)
        for record in self.log.replay():
            self.state[record["k"]] = record["v"]
        self.writer = LogWriter(self.log, self.snapshot, **writer)
        self.acked: list[str] = []

    def snapshot(self) -> Iterator[dict[str, Any]]:
        for k, v in self.state.items():
            yield {"k": k, "v": v}

    def put(self, k: str, v: Any) -> None:
        """Accept a change the way the node does: refuse when unwritable, else record, ack once written."""
        self.writer.admit()
        self.state[k] = v
        self.writer.add({"k": k, "v": v})
        self.writer.after_written(lambda: self.acked.append(k))


def replayed(directory: Path) -> dict[str, Any]:
    log = AppendLog(directory)
    state = {r["k"]: r["v"] for r in log.replay()}
    log.close()
    return state


def test_acknowledgements_wait_for_the_write(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.put("a", 1)
    node.put("b", 2)
    assert node.acked == [] and len(node.writer.buffer) == 2
    assert node.writer.write_pending()
    assert node.acked == ["a", "b"] and node.writer.batches == 1
    node.writer.after_written(lambda: node.acked.append("nothing new"))   # nothing pending: at once
    assert node.acked[-1] == "nothing new"
    node.writer.close()
    assert replayed(tmp_path) == {"a": 1, "b": 2}


def test_batches_are_bounded(tmp_path: Path) -> None:
    node = Node(tmp_path, max_batch=3)
    for i in range(7):
        node.put(f"k{i}", i)
    node.writer.write_pending()
    assert node.writer.batches == 3 and len(node.acked) == 7
    node.writer.close()


@pytest.mark.parametrize("op", ["write", "fsync"])
def test_a_fault_in_a_later_batch_holds_the_acknowledgements_of_its_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str) -> None:
    """Fault: more records are buffered than one batch takes, and the disk
    fills (or an fsync fails) after the first batch was written. Only the
    first batch's acknowledgements go out; those of the records in the
    failed batch wait for the recovery (mutation: releasing up to every
    record added, not the batch's last, passed every test -- acknowledged
    records that were never written)."""
    node = Node(tmp_path, max_batch=2)
    for i in range(4):
        node.put(f"k{i}", i)
    disk = FailingDisk(monkeypatch, str(tmp_path), errno.ENOSPC, ops=(op,))
    real_append = node.log.append_many

    def fill_after_one_batch(records: Any) -> int:
        seqno = real_append(records)
        disk.failing = True
        return seqno

    monkeypatch.setattr(node.log, "append_many", fill_after_one_batch)
    assert node.writer.write_pending() is False
    assert node.acked == ["k0", "k1"]
    disk.failing = False
    assert node.writer.recover() is True
    assert node.acked == ["k0", "k1", "k2", "k3"]
    node.writer.close()
    assert replayed(tmp_path) == {f"k{i}": i for i in range(4)}


@pytest.mark.parametrize("op,code", [("write", errno.ENOSPC), ("fsync", errno.EIO)], ids=["write-ENOSPC", "fsync-EIO"])
def test_a_release_given_a_refusal_is_refused_when_the_write_fails_and_never_released(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, code: int) -> None:
    """Fault: the write (ENOSPC) or fsync (EIO) of records whose release
    was given a ``refuse`` fails (a holder's answer to a peer's REPLICATE).
    The refusal is called at once with the cause, and the release never --
    not after the recovery either (the asker must not get two answers);
    a release without a refusal waits for the recovery, as before."""
    node = Node(tmp_path)
    disk = FailingDisk(monkeypatch, str(tmp_path), code, ops=(op,))
    disk.failing = True
    refused: list[str] = []
    node.put("waits", 1)
    node.writer.add({"k": "copy", "v": 2})
    node.writer.after_written(lambda: node.acked.append("copy"), refused.append)
    assert node.writer.write_pending() is False
    assert refused == [os.strerror(code)] and node.acked == []
    assert node.writer.why_not_writable() == os.strerror(code)
    disk.failing = False
    assert node.writer.recover() is True
    assert node.acked == ["waits"] and refused == [os.strerror(code)]
    assert node.writer.why_not_writable() == ""
    node.writer.close()


def test_every_release_given_a_refusal_is_refused_when_the_write_fails_even_after_one_that_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Fault: the write fails (ENOSPC) while several answers given a
    ``refuse`` wait for it (REPLICATEs from three peers), between releases
    given none, and the first refusal raises (a bug). Each of the others is
    refused once, in order, and the plain releases wait for the recovery
    (mutation, review37: refusing only the first one refused passed every
    test -- the later askers heard silence until their deadline)."""
    node = Node(tmp_path)
    disk = FailingDisk(monkeypatch, str(tmp_path), errno.ENOSPC, ops=("write",))
    disk.failing = True
    refused: list[str] = []

    def broken(why: str) -> None:
        raise RuntimeError("a bug in a refusal")

    node.put("plain-1", 1)
    for asker, refuse in (("a", broken), ("b", lambda why: refused.append(f"b: {why}")),
                          ("c", lambda why: refused.append(f"c: {why}"))):
        node.writer.add({"k": asker, "v": 0})
        node.writer.after_written(lambda: node.acked.append("released"), refuse)
        node.put(f"plain-{asker}", 2)
    with caplog.at_level(logging.ERROR, logger="miyaq.store.log.writer"):
        assert node.writer.write_pending() is False
    cause = os.strerror(errno.ENOSPC)
    assert refused == [f"b: {cause}", f"c: {cause}"] and node.acked == []
    assert "refusing an answer held for the log failed" in caplog.text
    disk.failing = False
    assert node.writer.recover() is True
    assert node.acked == ["plain-1", "plain-a", "plain-b", "plain-c"] and len(refused) == 2
    node.writer.close()


@pytest.mark.parametrize("op,code", [("write", errno.ENOSPC), ("fsync", errno.EIO)], ids=["write-ENOSPC", "fsync-EIO"])
def test_disk_fault_refuses_serves_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture, op: str, code: int) -> None:
    """Fault: the log's writes fail with ENOSPC (a full disk), or its fsyncs with EIO."""
    node = Node(tmp_path)
    node.put("before", 0)
    node.writer.write_pending()
    disk = FailingDisk(monkeypatch, str(tmp_path), code, ops=(op,))
    disk.failing = True
    node.put("lost-write", 1)                     # accepted in memory, its write fails
    with caplog.at_level(logging.ERROR, logger="miyaq.store.log"):
        assert node.writer.write_pending() is False
    assert "refusing new tasks" in caplog.text
    assert node.acked == ["before"]               # never acknowledged
    assert not node.writer.writable
    with pytest.raises(Busy, match="cannot write its log") as refused:
        node.put("new", 2)
    assert refused.value.details == {"reason": "storage"} and refused.value.code == "busy"
    node.state["done-meanwhile"] = 3              # the node keeps serving: changes happen in memory ...
    node.writer.add({"k": "done-meanwhile", "v": 3})
    assert node.writer.buffer == []               # ... and are not buffered (the snapshot will hold them)
    assert node.writer.recover() is False         # the disk still fails: no recovery
    stats = node.writer.stats()
    assert stats["faults"] == 1 and stats["recoveries"] == 0 and stats["held_releases"] == 1
    assert stats["write_errors" if op == "write" else "fsync_errors"] >= 1

    disk.failing = False
    with caplog.at_level(logging.WARNING, logger="miyaq.store.log"):
        assert node.writer.recover() is True
    assert "writable again" in caplog.text
    assert node.writer.writable and node.acked == ["before", "lost-write"]
    node.put("after", 4)
    node.writer.write_pending()
    node.writer.close()
    assert replayed(tmp_path) == {"before": 0, "lost-write": 1, "done-meanwhile": 3, "after": 4}


def test_held_acknowledgements_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: a long disk fault while more and more acknowledgements wait for it."""
    node = Node(tmp_path, max_held=3)
    disk = FailingDisk(monkeypatch, str(tmp_path))
    disk.failing = True
    node.put("a", 1)
    node.writer.write_pending()
    for i in range(5):
        node.writer.after_written(lambda i=i: node.acked.append(f"late{i}"))
    assert node.writer.stats()["held_releases"] == 3 and node.writer.dropped_releases == 3
    disk.failing = False
    assert node.writer.recover()
    assert node.acked == ["late2", "late3", "late4"]   # the oldest were dropped (their senders resend)
    node.writer.close()


def test_writer_loop_probes_and_recovers_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: ENOSPC for a while, then space returns; the supervised writer loop recovers alone."""
    node = Node(tmp_path)
    sup = Supervisor("node", on_fatal=lambda *a: pytest.fail("the writer must not die"))
    sup.spawn("log-writer", node.writer.run)
    disk = FailingDisk(monkeypatch, str(tmp_path))
    disk.failing = True
    node.put("a", 1)
    for _ in range(3000):
        if not node.writer.writable and disk.refused["write"] >= 3:   # the fault, then some failed probes
            break
        green.sleep(0.01)
    assert not node.writer.writable and node.acked == []
    disk.failing = False
    for _ in range(3000):
        if node.acked:
            break
        green.sleep(0.01)
    assert node.acked == ["a"] and node.writer.writable and node.writer.recoveries == 1
    node.writer.close()
    sup.kill()
    assert not sup.crashes
    assert replayed(tmp_path) == {"a": 1}


def test_background_fsync_failure_is_noticed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: in interval mode the group commit's fsync fails after the write was acknowledged."""
    sup = Supervisor("node", on_fatal=lambda *a: pytest.fail("not fatal"))
    node = Node(tmp_path, fsync="interval", supervisor=sup)
    sup.spawn("log-writer", node.writer.run, policy=LOG)
    disk = FailingDisk(monkeypatch, str(tmp_path), errno.EIO, ops=("fsync",))
    disk.failing = True
    node.put("a", 1)
    for _ in range(3000):
        if not node.writer.writable:
            break
        green.sleep(0.01)
    with pytest.raises(Busy):
        node.put("b", 2)
    disk.failing = False
    for _ in range(3000):
        if node.writer.writable:
            break
        green.sleep(0.01)
    node.put("b", 2)
    node.writer.close()
    sup.kill()
    assert not sup.crashes
    assert replayed(tmp_path) == {"a": 1, "b": 2}


def test_failed_compaction_is_retried_later_and_does_not_refuse(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Fault: the snapshot of a routine compaction does not fit on the disk."""
    node = Node(tmp_path)
    node.put("a", 1)
    node.writer.write_pending()
    real_compact = node.log.compact

    def full(records: Any, between: Any = None) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(node.log, "compact", full)
    with caplog.at_level(logging.WARNING, logger="miyaq.store.log"):
        assert node.writer.compact() is False
    assert "compaction failed" in caplog.text and node.writer.writable
    monkeypatch.setattr(node.log, "compact", real_compact)
    assert node.writer.compact() is True
    node.writer.close()


def test_a_compaction_stopped_by_the_node_s_stop_is_no_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Fault: the node stops (its log closes) while a compaction writes its
    snapshot. The compaction stops, which loses nothing -- but it was logged
    as a WARNING "log compaction failed ... the log keeps growing, next try
    in 30s", on a clean stop. Now it is an INFO saying it stopped with the
    node, and the log replays to the state it held."""
    monkeypatch.setattr(fairness, "HUB_SLICE", 0.0)      # the compaction yields after every record
    node = Node(tmp_path)
    for i in range(5):
        node.put(f"k{i}", i)
    node.writer.write_pending()
    halfway = green.Event()
    closer = green.Greenlet.spawn(lambda: (halfway.wait(), node.writer.close()))

    def snapshot() -> Iterator[dict[str, Any]]:
        for i, (k, v) in enumerate(list(node.state.items()) * 10):
            if i == 10:
                halfway.set()
            yield {"k": k, "v": v}

    node.writer.snapshot = snapshot
    with caplog.at_level(logging.INFO, logger="miyaq.store"):
        assert node.writer.compact() is False
    closer.get()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "log compaction stopped with the node" in caplog.text
    assert replayed(tmp_path) == {f"k{i}": i for i in range(5)}


def test_close_during_a_fault_rewrites_the_state_if_it_can(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Fault: the node stops while its disk is still failing, then once it works again."""
    node = Node(tmp_path)
    disk = FailingDisk(monkeypatch, str(tmp_path))
    disk.failing = True
    node.put("a", 1)
    with caplog.at_level(logging.ERROR, logger="miyaq.store.log"):
        node.writer.close()
    assert "stopping with a log that cannot be written" in caplog.text
    disk.failing = False
    assert replayed(tmp_path) == {}               # never acknowledged, so nothing promised

    again = Node(tmp_path)
    disk.failing = True
    again.put("b", 2)
    again.writer.write_pending()
    disk.failing = False
    again.writer.close()                          # the fault cleared: close rewrites the state
    assert replayed(tmp_path) == {"b": 2}


def test_a_disk_that_fills_twice_in_a_row_is_ridden_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: the disk fills, frees, and fills again at once -- the first write after
    the recovery snapshot fails too, in the new segment it opened. Before, that
    segment was left behind empty with the next segment's name: the next
    append found the name taken, the writer died with the node, and the
    shutdown acknowledged the record it never wrote."""
    node = Node(tmp_path)
    disk = FailingDisk(monkeypatch, str(tmp_path), ops=("write",))
    node.put("a", 1)
    node.writer.write_pending()
    disk.failing = True
    node.put("b", 2)
    assert node.writer.write_pending() is False       # fault 1
    disk.failing = False
    assert node.writer.recover() is True              # snapshot; the next record goes to a new segment
    disk.failing = True
    node.put("c", 3)
    assert node.writer.write_pending() is False       # fault 2: in that new segment, undone
    disk.failing = False
    assert node.writer.recover() is True
    node.put("d", 4)
    assert node.writer.write_pending() is True        # the log takes records again
    assert node.writer.stats()["faults"] == 2 and node.acked == ["a", "b", "c", "d"]
    node.writer.close()
    assert replayed(tmp_path) == {"a": 1, "b": 2, "c": 3, "d": 4}


def test_an_unforeseen_error_of_the_log_is_never_taken_for_a_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: the log raises something that is not a disk error while it
    appends (a bug). The writer dies with it (the node stops: test_node_lifecycle),
    and the batch is not taken for written: neither then nor by the close()
    of the stopping node, which before 2026-12-05 acknowledged it."""
    node = Node(tmp_path)

    def broken(records: Any) -> Any:
        raise RuntimeError("a bug in the log")

    monkeypatch.setattr(node.log, "append_many", broken)
    node.put("a", 1)
    with pytest.raises(RuntimeError):
        node.writer.write_pending()
    assert node.acked == [] and [r["k"] for r in node.writer.buffer] == ["a"]
    with pytest.raises(RuntimeError):
        node.writer.close()
    assert node.acked == []
    assert replayed(tmp_path) == {}
