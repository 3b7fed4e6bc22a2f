"""A node whose disk fills up or whose log writes fail (issue 11, disk faults).

It refuses new submits with a retryable ``busy`` (``reason: "storage"``),
keeps serving what it holds (dispatch, results, status), never acknowledges
a task its log did not take, recovers when the disk works again, and a
restart from its log loses nothing it acknowledged (docs/durability.md).
"""
from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from apps.basic import app
from disk_faults import FailingDisk

from miyaq.config import NodeConfig
from miyaq.errors import Busy
from miyaq.core.engine import Engine
from miyaq.core.refusals import Refusals
from miyaq.node.assemble import build_node
from miyaq.persistence.replay import replay
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.log import AppendLog
from miyaq.store.records import task_record
from miyaq.testing.disk import SmallFilesystem, can_mount
from miyaq.testing.harness import free_port, in_own_hub, wait_for

pytestmark = pytest.mark.timeout(120)


def storage(client: Any) -> dict[str, Any]:
    return client.status()["storage"]


def logged_ids(data_dir: Path, scratch: Path) -> set[str]:
    """The task ids (live, dead and finished) a node restarted from a copy of ``data_dir``
    *right now* would hold: what a kill -9 at this moment would keep."""
    copy = scratch / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("LOCK"))
    engine = Engine(NodeConfig(node_id="replay"))
    log = AppendLog(copy)
    replay(engine, log, 0.0, Refusals())
    log.close()
    table = engine.table
    return set(table.live) | set(table.dead) | set(table.tombstones)


def metric(http_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def status_lines(endpoint: str) -> str:
    """``miyaq status`` as an operator types it."""
    out = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "status", "--connect", endpoint],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def refused_for_storage(client: Any) -> Busy:
    handle = client.submit("echo", ["refused"])
    with pytest.raises(Busy) as info:
        handle.wait_accepted(30)
    assert info.value.details.get("reason") == "storage", info.value.details
    assert "cannot write its log" in info.value.message
    return info.value


@pytest.mark.parametrize("op", ["write", "fsync"])
def test_failing_log_writes_refuse_submits_and_lose_nothing_acknowledged(
        make_node, client_for, thread_worker, tmp_path, monkeypatch, op):
    """Fault: the node's log writes (or fsyncs) fail with ENOSPC; then the disk works again.

    Only the submits the faulty disk refuses go through the client of short
    deadlines (1.5 s): those before the fault and after it use a patient one.
    Before 2026-12-08 all of them did, and a suite run with three workers on
    a loaded machine failed here before any fault, its first 15 submits not
    acknowledged within 1.5 s (fsync always, the process short of CPU)."""
    data = tmp_path / "data"
    http = free_port()
    node = make_node(data_dir=str(data), fsync="always", http_port=http)
    c = client_for(node.endpoint, submit_timeout=1.5, ack_timeout=0.5)
    patient = client_for(node.endpoint)
    before = [patient.submit("echo", [i]) for i in range(20)]
    patient.flush()
    acknowledged = {h.id for h in before}

    disk = FailingDisk(monkeypatch, str(data), errno.ENOSPC, ops=(op,))
    disk.failing = True
    refused_for_storage(c)        # the first one's write fails (never acknowledged) ...
    refused_for_storage(c)        # ... and from then on every submit is refused at once
    status = storage(c)
    assert status["writable"] is False and status["faults"] == 1 and "No space left" in status["error"]
    assert metric(http, "miyaq_log_writable") == 0 and metric(http, "miyaq_log_faults_total") == 1
    assert "storage REFUSING NEW TASKS, log not writable" in status_lines(node.endpoint)

    thread_worker(app, node.endpoint, queues=["default"])              # the node keeps serving what it holds
    for i, h in enumerate(before):
        assert c.result(h.id, 30) == {"args": [i], "kwargs": {}}
    assert c.status(before[0].id)["state"] == "done"

    disk.failing = False
    wait_for(lambda: storage(c)["writable"], timeout=30, what="the log to be writable again")
    after = [patient.submit("echo", [i], countdown=3600) for i in range(5)]
    for h in after:
        h.wait_accepted(10)
    acknowledged |= {h.id for h in after}
    assert storage(c)["recoveries"] == 1
    assert metric(http, "miyaq_log_writable") == 1 and metric(http, "miyaq_log_recoveries_total") == 1
    assert metric(http, f"miyaq_log_{op}_errors_total") >= 1
    assert "storage ok" in status_lines(node.endpoint)
    assert acknowledged <= logged_ids(data, tmp_path)      # on disk now, as a kill -9 would find it

    node.stop()
    again = make_node(data_dir=str(data), fsync="always", port=node.config.port)
    c2 = client_for(again.endpoint)
    for i, h in enumerate(before):
        assert c2.result(h.id, 10) == {"args": [i], "kwargs": {}}
    assert {t["id"] for t in c2.tasks(limit=100)} >= {h.id for h in after}


def test_a_full_filesystem_refuses_submits_and_recovers_when_space_returns(
        make_node, client_for, thread_worker, tmp_path):
    """Fault: the node's data dir is on a 2 MiB tmpfs that fills up, then space is freed."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root (CI runs as root and must run this test)")
    fs = SmallFilesystem(str(tmp_path / "fs"), size=2 * 1024 * 1024)
    try:
        fs.mount()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"running as root but cannot mount a tmpfs: {getattr(exc, 'stderr', '') or exc}")
    try:
        _full_filesystem(fs, make_node, client_for, thread_worker, tmp_path)
    finally:
        fs.unmount()


def _full_filesystem(fs: SmallFilesystem, make_node, client_for, thread_worker, tmp_path: Path) -> None:
    data = Path(fs.data_dir)
    node = make_node(data_dir=fs.data_dir, fsync="always")
    c = client_for(node.endpoint, submit_timeout=1.5, ack_timeout=0.5)     # for the submit refused
    patient = client_for(node.endpoint)                                    # for those the disk takes
    before = [patient.submit("echo", [i]) for i in range(10)]
    patient.flush()
    assert fs.fill() > 0 and fs.free_bytes() == 0

    big = "x" * 64 * 1024           # needs new pages: the log's last page may still have room
    handle = c.submit("echo", [big])
    with pytest.raises(Busy) as info:
        handle.wait_accepted(30)
    assert info.value.details.get("reason") == "storage"
    status = storage(c)
    assert status["writable"] is False and "No space left on device" in status["error"]
    assert status["write_errors"] >= 1

    thread_worker(app, node.endpoint, queues=["default"])              # what it holds still runs
    for i, h in enumerate(before):
        assert c.result(h.id, 30) == {"args": [i], "kwargs": {}}

    fs.free()
    wait_for(lambda: storage(c)["writable"], timeout=30, what="the log to be writable again")
    after = patient.submit("echo", [big], countdown=3600)
    after.wait_accepted(10)
    acknowledged = {h.id for h in before} | {after.id}
    assert acknowledged <= logged_ids(data, tmp_path)

    node.stop()
    again = make_node(data_dir=fs.data_dir, fsync="always", port=node.config.port)
    c2 = client_for(again.endpoint)
    assert c2.status(after.id)["state"] == "scheduled"
    for i, h in enumerate(before):
        assert c2.result(h.id, 10) == {"args": [i], "kwargs": {}}
    again.stop()


def test_the_log_runs_under_the_nodes_supervisor(make_node, client_for, tmp_path):
    """The log's writer and its group-commit loop are the node's supervised greenlets
    (a crash of either stops the node loudly instead of silently ending durability)."""
    node = make_node(data_dir=str(tmp_path / "data"), fsync="interval")
    c = client_for(node.endpoint)
    c.submit("echo", [1], wait=True)
    wait_for(lambda: {"log-writer", "log-committer"} <= set(node.node.supervisor.live()),
             what="the log's greenlets under the node's supervisor")


def test_compaction_after_max_payload_was_lowered_keeps_a_large_logged_task(tmp_path):
    """Fault: a 20 MiB task was logged under --max-payload 24 MiB, and the node
    restarts with the default (1 MiB), keeps it, and compacts its log (as it
    does routinely, and to recover from a disk fault). The snapshot must take
    the task's record: a log limit derived from today's max_payload refused
    it, so every compaction failed (the log grew without end, and a disk
    fault could never be recovered)."""
    data = tmp_path / "data"
    big = task_from_wire({"id": "big", "name": "echo", "body": b"x" * (20 * 1024 * 1024)}, 0.0,
                         NodeConfig(max_payload=24 * 1024 * 1024))
    log = AppendLog(data, max_record_bytes=32 * 1024 * 1024)
    list(log.replay())
    log.append(task_record(big))
    log.close()

    def restart_and_compact() -> bool:
        node = build_node(NodeConfig(port=free_port(), http_port=0, node_id="small", data_dir=str(data))).start()
        try:
            return node.part("persistence").writer.compact()
        finally:
            node.stop(0)

    assert in_own_hub(restart_and_compact) is True
    assert list(data.glob("snap-*.mq")) and "big" in logged_ids(data, tmp_path)


def readyz(http_port: int) -> tuple[int, str]:
    """``GET /readyz``: its status code and word."""
    import json
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())["status"]
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())["status"]


def test_readyz_says_storage_while_the_log_cannot_be_written(make_node, client_for, tmp_path, monkeypatch):
    """Fault: the node's disk fills up. It refuses every new task and, in
    a cluster, every copy its peers send -- staged on four nodes with N = 3
    (the sre audit), the submits it held a copy of waited out the 3 s
    replication timeout, once or twice (median 3.03 s against 0.02 s), and
    some failed -- yet ``GET /readyz`` answered 200 ``ready``: a
    load balancer or Kubernetes kept sending producers to it, and the
    "node not serving" alert never fired. Now 503 ``storage`` until a write
    succeeds again, then 200."""
    data = tmp_path / "data"
    http = free_port()
    node = make_node(data_dir=str(data), fsync="always", http_port=http)
    c = client_for(node.endpoint, submit_timeout=1.5, ack_timeout=0.5)
    assert readyz(http) == (200, "ready")
    disk = FailingDisk(monkeypatch, str(data), errno.ENOSPC, ops=("write",))
    disk.failing = True
    refused_for_storage(c)
    assert readyz(http) == (503, "storage")
    disk.failing = False
    wait_for(lambda: storage(c)["writable"], timeout=30, what="the log to be writable again")
    assert readyz(http) == (200, "ready")
