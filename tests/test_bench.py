"""``miyaq bench`` end to end: the real command as a subprocess, with its own
node and worker processes. No timing assertions: only that the run
completes, reports every field, and cleans up after itself on every exit
path (success, a bad --connect, SIGINT, SIGKILL of the bench)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from process_tree import alive, children_of

from miyaq.bench.records import RecordWriter, read_records
from miyaq.bench.stats import percentile, summarize_ms
from miyaq.testing.ports import free_port

TOP_FIELDS = {"config", "node", "submitted", "accepted", "completed", "enqueue_seconds", "enqueue_rate",
              "drain_seconds", "drain_rate", "latency", "node_peak_rss_bytes", "duplicates", "errors",
              "cpu_us_per_task", "runs", "summary", "ratios", "idle"}

# Each test runs real processes; the per-test limit of setup.cfg (60 s) is
# below the 90 s a loaded CI machine may need for one bench run.
pytestmark = [pytest.mark.timeout(150), pytest.mark.loads_cpu]


def bench(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "miyaq.cli.main", "bench", *args],
                          check=False, capture_output=True, text=True, timeout=timeout)


def run_json(*args: str) -> dict:
    proc = bench(*args, "--json")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


def port_closed(endpoint: str) -> bool:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) != 0


def wait_for_children(pid: int, count: int, limit: float) -> list[int]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        kids = children_of(pid)
        if len(kids) >= count:
            return kids
        time.sleep(0.1)
    raise AssertionError(f"the bench started {len(children_of(pid))} of {count} children in {limit}s")


def test_bench_json_reports_every_field_and_completes_every_task():
    result = run_json("--tasks", "2000", "--workers", "1")
    assert TOP_FIELDS <= set(result)
    assert result["config"]["tasks"] == 2000 and result["config"]["workers"] == 1
    assert result["submitted"] == result["accepted"] == 2000
    assert result["completed"] == result["config"]["tasks"]
    assert result["errors"] == [] and result["duplicates"] == 0
    assert result["enqueue_rate"] > 0 and result["drain_rate"] > 0
    for key in ("submit_to_start_ms", "submit_to_done_ms"):
        lat = result["latency"][key]
        assert set(lat) == {"p50", "p99", "max"}
        assert lat["p50"] <= lat["p99"] <= lat["max"]
    assert result["node_peak_rss_bytes"] > 0
    cpu = result["cpu_us_per_task"]
    assert set(cpu) == {"node", "workers", "producer", "total"}
    assert cpu["total"] > 0 and cpu["total"] >= cpu["node"]
    assert port_closed(result["node"]), "the bench's node still listens after the run"


def test_bench_rate_mode_completes_every_task():
    result = run_json("--tasks", "150", "--workers", "1", "--rate", "300", "--concurrency", "2")
    assert result["config"]["rate"] == 300
    assert result["completed"] == result["submitted"] == 150
    assert result["errors"] == []


def test_bench_against_a_running_node_via_connect():
    """--connect: no node is started, peak RSS is unknown (null)."""
    port = free_port()
    node = subprocess.Popen([sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(port),
                             "--http-port", "0", "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = run_json("--tasks", "500", "--workers", "1", "--connect", f"tcp://127.0.0.1:{port}")
        assert result["completed"] == 500
        assert result["node_peak_rss_bytes"] is None
        assert node.poll() is None, "the bench must not stop a node it did not start"
    finally:
        node.terminate()
        node.wait(10)




def test_bad_connect_fails_fast_with_a_clear_message():
    """Fault: nothing listens at the --connect endpoint."""
    port = free_port()
    proc = bench("--connect", f"tcp://127.0.0.1:{port}", "--tasks", "10", "--timeout", "30", timeout=45)
    assert proc.returncode != 0
    assert "cannot reach a miyaq node at" in proc.stderr and str(port) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_timeout_bounds_the_run_and_still_reports():
    """Fault: far more work than --timeout allows; the run stops (the
    subprocess timeout only guards against a hang), prints its partial result
    and exits 1."""
    proc = bench("--tasks", "2000000", "--workers", "1", "--timeout", "3", "--json", timeout=60)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["submitted"] < 2_000_000
    assert any("timeout" in e for e in result["errors"])
    assert port_closed(result["node"])


def test_sigint_stops_the_bench_and_its_children():
    """Fault: Ctrl-C in the middle of a paced run. The bench starts with
    SIGINT's default action even when pytest runs with SIGINT ignored (as a
    shell's background job without job control does; exec keeps an ignored
    signal ignored, while a handled one is reset to its default)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "miyaq.cli.main", "bench", "--workers", "1",
                                 "--tasks", "100000", "--rate", "50", "--timeout", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        kids = wait_for_children(proc.pid, 2, 30)    # the node and the worker
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        assert proc.returncode == 130
        assert not [k for k in kids if alive(k)], "children outlived the bench"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_children_die_when_the_bench_is_killed(tmp_path):
    """Fault: the bench is SIGKILLed and never runs its cleanup (its temp
    directory is left behind, so it goes under tmp_path)."""
    proc = subprocess.Popen([sys.executable, "-m", "miyaq.cli.main", "bench", "--workers", "1",
                             "--tasks", "100000", "--rate", "50", "--timeout", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        kids = wait_for_children(proc.pid, 2, 30)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(k) for k in kids):
            time.sleep(0.1)
        assert not [k for k in kids if alive(k)], "children outlived a SIGKILLed bench"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("bad", [["--workers", "0"], ["--rate", "0"], ["--payload", "-1"], ["--blocking"],
                                 ["--task-ms", "5", "--cpu-ms", "5"], ["--task-ms", "0"], ["--cpu-ms", "-1"]])
def test_bad_options_are_refused(bad):
    """Exit 2 with one error line: the parser's (``miyaq bench: error:
    argument --workers: ...``) for a number out of range, the bench's own
    (``miyaq: error:``) for options that contradict each other."""
    proc = bench(*bad, timeout=30)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_percentiles_use_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert summarize_ms([0.001, 0.002]) == {"p50": 1.0, "p99": 2.0, "max": 2.0}
    assert summarize_ms([]) is None


def test_records_keep_this_run_and_count_duplicates(tmp_path):
    writer = RecordWriter(str(tmp_path))
    writer.write("run1-0", 10.0, 10.5)
    writer.write("run1-1", 11.0, 11.5)
    writer.write("run1-0", 12.0, 12.5)     # a second execution of task 0
    writer.write("other-0", 1.0, 2.0)      # another run's task
    writer.close()
    records = read_records(str(tmp_path), "run1-")
    assert records.start == {"run1-0": 10.0, "run1-1": 11.0}
    assert records.done["run1-0"] == 10.5
    assert records.duplicates == 1


def test_bench_with_a_durable_log():
    """``--fsync always`` starts the node with a log in a temporary data dir;
    every task still completes (the figure compares fsync policies)."""
    proc = bench("--tasks", "300", "--workers", "1", "--fsync", "always", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["config"]["fsync"] == "always"
    assert data["completed"] == 300


def test_fsync_with_connect_is_refused():
    """--fsync configures the node the bench starts; with --connect it is an error."""
    proc = bench("--tasks", "10", "--fsync", "never", "--connect", "tcp://127.0.0.1:9")
    assert proc.returncode == 2
    assert "--fsync" in proc.stderr


def test_bench_with_keys_runs_both_systems_and_reports_the_ratio():
    """``--keys`` also runs miyaq with CURVE on every socket (the node with
    --keys, workers and producer with their keys) in the same run, and
    reports the ratios of its figures to the run without keys."""
    data = run_json("--tasks", "500", "--workers", "1", "--keys")
    systems = {(m["system"], m["phase"]) for m in data["runs"]}
    assert systems == {("miyaq", "bulk"), ("miyaq+keys", "bulk")}
    assert all(m["completed"] == 500 and not m["errors"] for m in data["runs"])
    assert set(data["ratios"]["miyaq+keys/miyaq"]["bulk"]) >= {"enqueue_rate", "drain_rate"}


def test_keys_with_connect_is_refused():
    """--keys makes the keys of the node the bench starts; with --connect it is an error."""
    proc = bench("--tasks", "10", "--keys", "--connect", "tcp://127.0.0.1:9")
    assert proc.returncode == 2 and "--keys" in proc.stderr


def test_bench_with_blocking_tasks():
    """--task-ms MS --blocking: each task blocks in time.sleep; with the
    default (gevent) pool they still overlap, and every task completes."""
    data = run_json("--tasks", "200", "--workers", "1", "--concurrency", "8", "--task-ms", "5", "--blocking")
    assert data["config"]["work"] == "block:5" and data["config"]["pool"] is None
    assert data["completed"] == 200 and not data["errors"]


def test_bench_with_cpu_tasks_in_the_processes_pool():
    """--cpu-ms MS --pool processes: each task burns CPU in a child process."""
    data = run_json("--tasks", "100", "--workers", "1", "--concurrency", "2", "--cpu-ms", "2",
                    "--pool", "processes")
    assert data["config"]["work"] == "cpu:2" and data["config"]["pool"] == "processes"
    assert data["completed"] == 100 and not data["errors"]


def test_record_writer_keeps_every_line_from_many_threads(tmp_path):
    """Fault: handlers of the threads pool record at the same moment, the
    first of them while the file is being opened. No line is lost."""
    import threading
    writer = RecordWriter(str(tmp_path))
    gate = threading.Barrier(8)

    def record(n: int) -> None:
        gate.wait()
        for i in range(500):
            writer.write(f"run-{n}-{i}", 1.0, 2.0)

    threads = [threading.Thread(target=record, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert len(read_records(str(tmp_path), "run-").start) == 4000


def test_bench_prefetch_reaches_the_workers_and_the_relays_credit():
    """--prefetch P: miyaq's workers hold P tasks beyond their concurrency,
    and the bare relay's workers grant the same credit (concurrency + P), so
    the comparison stays like for like."""
    data = run_json("--tasks", "300", "--workers", "1", "--concurrency", "2", "--prefetch", "6", "--baseline")
    assert data["config"]["prefetch"] == 6
    assert data["completed"] == 300 and not data["errors"]
    assert [r["completed"] for r in data["runs"] if r["system"] == "baseline"] == [300]


def test_bare_fleet_credit_is_concurrency_plus_prefetch():
    from miyaq.bench.bare_fleet import BareFleet
    assert BareFleet(None, workers=1, concurrency=8, records_dir="", deadline=0.0).credit == 16
    assert BareFleet(None, workers=1, concurrency=8, records_dir="", deadline=0.0, prefetch=24).credit == 32
