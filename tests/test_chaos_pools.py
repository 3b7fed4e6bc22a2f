"""``miyaq chaos --pool``: the chaos harness with the threads and processes
worker pools. The chaos handler run by a real worker in each pool (a raw
ROUTER plays the node, tests/played_node.py), the records a processes
pool's child writes tied to the worker the ``worker`` fault kills, and the
argv of the workers a run starts. The real runs are in
tests/test_chaos_faults.py (gevent) and by hand (docs/chaos.md)."""
from __future__ import annotations

import glob
import json
import os
import threading
from types import SimpleNamespace

import pytest
from fuzz_inputs import pack
from played_node import PlayedNode

from miyaq.chaos import tasks
from miyaq.chaos.cluster import LocalCluster
from miyaq.chaos.faults import KINDS
from miyaq.chaos.history import Activity
from miyaq.chaos.runner import CONCURRENCY, ChaosConfig, default_concurrency
from miyaq.errors import ConfigError
from miyaq.protocol import commands as c
from miyaq.testing.harness import ThreadWorker, wait_for
from miyaq.worker.context import TaskContext

from test_chaos import H

pytestmark = pytest.mark.timeout(60)


def read_records(directory) -> list[dict]:
    records = []
    for path in sorted(glob.glob(os.path.join(str(directory), "exec-*.jsonl"))):
        with open(path, encoding="utf-8") as fh:
            records.extend(json.loads(line) for line in fh)
    return records


@pytest.fixture
def fresh_records(monkeypatch, tmp_path):
    """The chaos handler's records go to ``tmp_path`` as those of
    ``worker7``, read from the environment at this process's next record
    (and at a processes pool child's first)."""
    monkeypatch.setenv(tasks.ENV_DIR, str(tmp_path))
    monkeypatch.setenv(tasks.ENV_WORKER, "worker7")
    monkeypatch.setattr(tasks, "_opened", False)
    monkeypatch.setattr(tasks, "_file", None)
    monkeypatch.setattr(tasks, "_worker", None)
    yield tmp_path
    if tasks._file is not None:
        tasks._file.close()


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_the_chaos_handler_records_its_runs_in_every_pool(fresh_records, pool) -> None:
    """Fault: the chaos handler was only ever run by the gevent pool. Run by
    a real worker in the threads pool (a handler thread: no hub of its own)
    and in the processes pool (a child process), it sleeps, writes a start
    and a finish record to the file of the process that ran it, with the
    node that leased the task and the worker's name from the environment
    (a child inherits it): a child's pid is its own, not the worker's,
    which is why the name is there (before 2026-12-07 the records had only
    the pid, and a killed worker's children were nobody's)."""
    node = PlayedNode()
    running = ThreadWorker(tasks.app, [node.endpoint], pool=pool, app_spec="miyaq.chaos.tasks:app",
                           concurrency=1, heartbeat=0.25, grace=5.0).start()
    try:
        wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
        node.send([c.TAG, c.DISPATCH, pack({"tasks": [
            ["t1", tasks.QUEUE, tasks.TASK_NAME, pack([[], {"seconds": 0.05, "seq": 7}]), 1, 30.0]]})])
        wait_for(lambda: node.pump() or node.reports, timeout=30.0, what="the task's outcome")
        assert node.reports[0][:2] == ("done", "t1")
    finally:
        running.stop()
        node.close()
    records = read_records(fresh_records)
    assert [(r["ev"], r["id"], r["attempt"], r["worker"]) for r in records] == [
        ("start", "t1", 1, "worker7"), ("finish", "t1", 1, "worker7")]
    pids = {r["pid"] for r in records}
    assert len(pids) == 1
    if pool == "processes":
        assert pids != {os.getpid()}, "a child's records carry its own pid"
    else:
        assert pids == {os.getpid()}
    assert os.path.basename(glob.glob(os.path.join(str(fresh_records), "exec-*.jsonl"))[0]) == \
        f"exec-{pids.pop()}.jsonl"


def test_handler_threads_starting_at_once_all_write_their_records(fresh_records, monkeypatch) -> None:
    """Fault: the threads pool starts its first handlers at once. The
    records file was opened by the first record of the process outside the
    lock, marked opened first: a second thread's record meanwhile found it
    "opened" and no file, and was dropped -- a start lost, or a finish, and
    the checker calls that task done with no worker's finish record. Here
    the first thread is held while it opens the file, and the second
    records meanwhile: its record must be written too."""
    opening, release = threading.Event(), threading.Event()
    real_path = tasks.exec_path

    def held_open(directory: str, pid: int) -> str:
        opening.set()
        assert release.wait(10.0)
        return real_path(directory, pid)

    class WatchedLock:
        """The records lock, counting who asked for it."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.asked = 0

        def __enter__(self) -> None:
            self.asked += 1
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    lock = WatchedLock()
    monkeypatch.setattr(tasks, "exec_path", held_open)
    monkeypatch.setattr(tasks, "_lock", lock)
    ctx = [TaskContext(f"t{i}", tasks.TASK_NAME, tasks.QUEUE, 1, 30.0, lambda _id: None, None) for i in (1, 2)]
    first = threading.Thread(target=tasks.record, args=("start", ctx[0]), daemon=True)
    second = threading.Thread(target=tasks.record, args=("start", ctx[1]), daemon=True)
    first.start()
    assert opening.wait(10.0)
    second.start()
    # The second record either ends (written nowhere) or waits for the lock the opening holds.
    wait_for(lambda: not second.is_alive() or lock.asked >= 2, what="the second record to end or wait")
    release.set()
    first.join(10.0)
    second.join(10.0)
    assert sorted(r["id"] for r in read_records(fresh_records)) == ["t1", "t2"]


def killed_worker_history(child_finishes: bool) -> H:
    """worker1 (pid 10) runs task t in its processes pool's child (pid 55)
    and is killed at 1.0 s; worker2 (pid 11) runs t again at 3.0 s."""
    h = H().add("fault", 1.0, phase="begin", fault=1, kind="worker", target="worker1", pid=10)
    h.add("submit", 0, id="t").add("ack", 0.01, id="t")
    h.add("start", 0.5, id="t", attempt=1, pid=55, node=None, worker="worker1")
    if child_finishes:      # the child runs on until it sees its parent gone (up to a second)
        h.add("finish", 1.4, id="t", attempt=1, pid=55, node=None, worker="worker1")
    h.add("start", 3.0, id="t", attempt=2, pid=11, node=None, worker="worker2")
    h.add("finish", 3.05, id="t", attempt=2, pid=11, node=None, worker="worker2")
    h.add("final", 100, id="t", state="done")
    return h.add("fault", 2, phase="heal", fault=1).add("fault", 2, phase="recovered", fault=1, recover_s=0)


@pytest.mark.parametrize("child_finishes", [False, True], ids=["cut-short", "child-ran-on"])
def test_a_rerun_of_a_task_a_killed_workers_child_ran_is_put_down_to_the_kill(child_finishes) -> None:
    """Fault: a ``worker`` fault kills a processes-pool worker (its record
    names the worker's pid) while one of its children (another pid) runs a
    task; the task runs again on another worker. Matched by pid, the
    re-run was unexplained and failed the run (exit 4) -- whether the
    child died with its run cut short or ran on to its finish record
    before it saw its parent gone. The records name their worker: the
    re-run is ``worker-killed``, and the fault's row counts the task it
    interrupted."""
    v = killed_worker_history(child_finishes).checked().verdict()
    s = v.summary()
    assert s["duplicates"]["classes"] == {"worker-killed": 1}, s["duplicates"]
    assert s["duplicates"]["completed_twice"] == int(child_finishes)
    assert v.exit_code() == 0
    if not child_finishes:
        assert s["faults"][0]["interrupted_tasks"] == 1


def test_the_worker_fault_finds_a_processes_pool_worker_busy() -> None:
    """Fault: the ``worker`` fault kills only a worker that runs a task, and
    knew a busy worker by the pid of the records; a processes pool's records
    carry its children's pids, so no worker ever looked busy and a
    ``--pool processes`` run never injected one (skipped every time). Busy
    workers are known by the name the records carry."""
    activity = Activity()
    activity.feed([{"ev": "start", "t": 1.0, "id": "t", "attempt": 1, "pid": 55, "worker": "worker1"}])
    workers = [SimpleNamespace(name="worker1", pid=10), SimpleNamespace(name="worker2", pid=11)]
    cluster = SimpleNamespace(live_workers=lambda: workers)
    ctx = {"busy_workers": activity.busy_workers(), "unsafe": False}
    assert KINDS["worker"].targets(cluster, set(), ctx) == ["worker1"]
    activity.feed([{"ev": "finish", "t": 2.0, "id": "t", "attempt": 1, "pid": 55, "worker": "worker1"}])
    assert KINDS["worker"].targets(cluster, set(), {"busy_workers": activity.busy_workers()}) == []


@pytest.mark.parametrize("pool", ["gevent", "threads", "processes"])
def test_every_worker_a_run_starts_runs_the_pool_asked_for(tmp_path, pool) -> None:
    """``miyaq chaos --pool``: each worker the run starts (a restarted one,
    ``--rolling``'s and ``--zk``'s too: they all come from
    ``start_worker``) is ``miyaq worker --pool POOL`` with the run's
    concurrency, named in its environment; without ``--concurrency`` a
    processes pool gets a child per CPU, the others 32."""
    from miyaq.cli.main import build_parser

    args = build_parser().parse_args(["chaos", "--pool", pool])
    assert args.pool == pool and args.concurrency is None
    concurrency = default_concurrency(pool)
    assert concurrency == (max(1, os.cpu_count() or 1) if pool == "processes" else CONCURRENCY)
    cluster = LocalCluster(str(tmp_path), nodes=0, workers=1, concurrency=concurrency, pool=pool)
    child = cluster.worker_child()
    argv = child.argv
    assert argv[argv.index("--pool") + 1] == pool
    assert argv[argv.index("--concurrency") + 1] == str(concurrency)
    assert child.name == "worker1" and child.env[tasks.ENV_WORKER] == "worker1"
    assert child.env[tasks.ENV_DIR] == str(tmp_path)


def test_a_pool_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ConfigError, match="--pool"):
        ChaosConfig(pool="fibers").validate()
    from miyaq.cli.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["chaos", "--pool", "fibers"])


def test_the_report_names_the_workers_pool() -> None:
    """A report read without the run's flags (``--check`` of an old run) says
    which pool its workers ran; a history from before the pools has none."""
    from miyaq.chaos.report import render

    h = H()
    h.records[0].update(workers=2, concurrency=4, pool="processes")
    s = h.task("t", 0, runs=[(0.1, 1, 10, True)]).checked().verdict().summary()
    assert render(s).splitlines()[0].startswith("miyaq chaos: 3 nodes, N=2, 2 x 4 processes, ")
    old = H().task("t", 0, runs=[(0.1, 1, 10, True)]).checked().verdict().summary()
    assert render(old).splitlines()[0].startswith("miyaq chaos: 3 nodes, N=2, ")
    assert "processes" not in render(old).splitlines()[0]
