"""The append-only log: a node that restarts — cleanly or after kill -9 —
comes back with every accepted, unfinished task (docs/durability.md)."""
from __future__ import annotations

import pytest

import miyaq
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_kill_9_loses_no_acknowledged_task(procs, client_for, tmp_path, fsync):
    """Fault: kill -9 of a standalone node right after 500 acknowledged
    submits. Every record is written before its acknowledgement, so in every
    fsync mode the restarted node holds all 500 (power loss is where the
    modes differ)."""
    data = str(tmp_path / "data")
    node = procs.node("--data-dir", data, "--fsync", fsync)
    c = client_for(node.endpoint)
    handles = [c.submit("echo", [i], countdown=3600) for i in range(500)]
    c.flush()
    node.kill()
    node2 = procs.node("--data-dir", data, "--fsync", fsync, port=node.port)
    c2 = client_for(node2.endpoint)
    assert c2.status()["totals"]["live"] == 500
    assert {t["id"] for t in c2.tasks(limit=1000)} == {h.id for h in handles}


def test_restart_keeps_states_results_and_dead_letters(procs, client_for, tmp_path):
    """A clean restart (SIGTERM) keeps ready, scheduled, dead and finished
    tasks, results and dedup keys; a task that was running comes back ready."""
    data = str(tmp_path / "data")
    node = procs.node("--data-dir", data, "--heartbeat", "0.25")
    c = client_for(node.endpoint)
    worker = procs.worker("apps.basic:app", node.endpoint, 2)
    done = c.submit("add", [1, 2], key="k-add", wait=True)
    assert done.result(20) == 3
    dead = c.submit("reject", wait=True)
    with pytest.raises(miyaq.TaskFailed):
        dead.result(20)
    running = c.submit("sleep", [30], wait=True)
    wait_for(lambda: c.status(running.id)["state"] == "running", what="task running")
    worker.kill()
    scheduled = c.submit("echo", [1], countdown=3600, wait=True)
    ready = c.submit("echo", [2], queue="nobody", wait=True)
    assert node.terminate(20) == 0
    node2 = procs.node("--data-dir", data, port=node.port)
    c2 = client_for(node2.endpoint)
    assert c2.status(scheduled.id)["state"] == "scheduled"
    assert c2.status(ready.id)["state"] == "ready"
    assert c2.status(running.id)["state"] == "ready"
    assert c2.status(dead.id)["state"] == "dead"
    assert c2.result(done.id, 5) == 3
    again = c2.submit("add", [9, 9], key="k-add", wait=True)
    assert again.duplicate_of == done.id


def test_torn_log_tail_is_truncated_not_fatal(procs, client_for, tmp_path):
    """Fault: the last log record is torn (the node died mid-write). The
    restarted node reports and truncates the tail and serves the rest."""
    import glob
    import os
    data = str(tmp_path / "data")
    node = procs.node("--data-dir", data, "--fsync", "always")
    c = client_for(node.endpoint)
    for i in range(10):
        c.submit("echo", [i], countdown=3600, wait=True)
    node.kill()
    segment = sorted(glob.glob(os.path.join(data, "log-*.mq")))[-1]
    with open(segment, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.truncate(size - 7)
    node2 = procs.node("--data-dir", data, port=node.port)
    c2 = client_for(node2.endpoint)
    assert c2.status()["totals"]["live"] == 9
    assert "truncated" in node2.log_tail().lower() or "torn" in node2.log_tail().lower()


def test_task_over_16_MiB_under_a_raised_max_payload_is_logged_not_fatal(procs, client_for, tmp_path):
    """Fault: --max-payload raised past 16 MiB and a task that large submitted.
    Its log record is larger than the log's default record limit: the node
    must log it (and survive), and a restart must bring it back whole."""
    data = str(tmp_path / "data")
    limits = ("--max-payload", str(24 * 1024 * 1024), "--max-message", str(32 * 1024 * 1024))
    node = procs.node("--data-dir", data, *limits)
    c = client_for(node.endpoint)
    body = b"x" * (17 * 1024 * 1024)
    big = c.submit("echo", [body], countdown=3600, wait=True)
    small = c.submit("echo", [1], countdown=3600, wait=True)
    assert c.status()["totals"]["live"] == 2
    assert node.terminate(20) == 0
    node2 = procs.node("--data-dir", data, *limits, port=node.port)
    c2 = client_for(node2.endpoint)
    assert {t["id"] for t in c2.tasks(limit=10)} == {big.id, small.id}


def test_restart_with_a_lower_max_payload_keeps_logged_tasks_and_results(procs, client_for, tmp_path):
    """Fault: the node is restarted with --max-payload lowered below tasks and
    results it had already accepted and logged. The new limit is for new
    submits: replay must keep those tasks and results, not drop them as bad
    records (before, they were skipped with a warning and lost for good)."""
    data = str(tmp_path / "data")
    node = procs.node("--data-dir", data, "--heartbeat", "0.25")
    c = client_for(node.endpoint)
    procs.worker("apps.basic:app", node.endpoint, 1)
    finished = c.submit("echo", [b"r" * 600_000], wait=True)
    result = finished.result(20)
    waiting = c.submit("echo", [b"x" * 600_000], countdown=3600, wait=True)
    assert node.terminate(20) == 0
    node2 = procs.node("--data-dir", data, "--max-payload", "500000", port=node.port)
    c2 = client_for(node2.endpoint)
    assert c2.status(waiting.id)["state"] == "scheduled"
    assert c2.result(finished.id, 5) == result
    assert "refused a record" not in node2.log_tail()
