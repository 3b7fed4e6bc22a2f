"""``miyaq bench``'s comparison modes: the bare baseline, confirmed submits
and calls, idle CPU, repeats, a cluster, another build's interpreter and
the delayed-task memory mode -- each as a tiny real run (no timing
assertions: only that every figure is reported and every task completed),
plus the option checks and the parts that need no processes."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

from miyaq.bench import agent, cpu
from miyaq.bench.compare import ratios, summarize
from miyaq.bench.measure import per_task, role
from miyaq.bench.procs import ProcessGroup
from miyaq.bench.producer import Producer
from miyaq.cli import bench_cmd
from miyaq.errors import ConfigError, MiyaqError

pytestmark = [pytest.mark.timeout(150), pytest.mark.loads_cpu]


def bench_json(*args: str, timeout: float = 120.0) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "bench", *args, "--json"],
                          check=False, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


# -- option checks ---------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--confirmed", "--rate", "10"], "--confirmed"),
    (["--cluster", "1"], "--cluster"),
    (["--delayed", "10", "--baseline"], "--delayed"),
    (["--delayed", "10", "--baseline-gevent"], "--delayed"),
    (["--connect", "tcp://127.0.0.1:9", "--cluster", "3"], "--connect"),
    (["--python", "/nonexistent/python"], "not an executable"),
])
def test_contradictory_or_bad_options_are_refused(argv, words):
    with pytest.raises(ConfigError) as err:
        bench_cmd.check(parse(*argv))
    assert words in err.value.message


@pytest.mark.parametrize("argv, option", [
    (["--repeat", "0"], "--repeat"),
    (["--idle", "-1"], "--idle"),
    (["--prefetch", "-1"], "--prefetch"),
    (["--rate", "nan"], "--rate"),
])
def test_numbers_out_of_range_stop_the_parser(argv, option, capsys):
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2 and f"argument {option}" in capsys.readouterr().err


def test_good_options_pass_the_checks():
    bench_cmd.check(parse("--baseline", "--rate", "500", "--idle", "2", "--repeat", "3"))
    bench_cmd.check(parse("--confirmed", "--baseline", "--python", sys.executable))
    bench_cmd.check(parse("--delayed", "1000", "--payload", "100"))


# -- tiny real runs ----------------------------------------------------------------------

def test_baseline_runs_the_same_load_and_reports_ratios():
    result = bench_json("--tasks", "300", "--workers", "1", "--concurrency", "2", "--baseline",
                        "--idle", "0.2", "--rate", "400")
    systems = {m["system"] for m in result["runs"]}
    assert systems == {"miyaq", "baseline"}
    for m in result["runs"]:
        assert m["completed"] == m["submitted"] == 300 and m["errors"] == [], m
        assert m["latency"]["submit_to_start_ms"]["p50"] > 0
    baseline = next(m for m in result["runs"] if m["system"] == "baseline")
    assert set(baseline["cpu_us_per_task"]) == {"relay", "workers", "producer", "total"}
    phase = result["runs"][0]["phase"]
    assert set(result["summary"][phase]) == {"miyaq", "baseline"}
    assert result["ratios"]["miyaq/baseline"][phase]["start_p50_ms"] > 0
    assert set(result["idle"]) == {"miyaq", "baseline"}
    assert result["idle"]["miyaq"][0]["cpu_ms_per_second"]["total"] >= 0


def test_confirmed_submits_and_calls_against_both_baselines():
    """The blocking relay and the one waiting in a gevent hub run the same load;
    every run reports each process's main-thread CPU and wake-ups per task."""
    result = bench_json("--tasks", "40", "--workers", "1", "--concurrency", "2", "--confirmed", "--baseline",
                        "--baseline-gevent")
    phases = {(m["system"], m["phase"]) for m in result["runs"]}
    assert phases == {(system, phase) for system in ("miyaq", "baseline", "baseline@gevent")
                      for phase in ("confirmed", "call")}
    assert all(m["completed"] == 40 and m["accepted"] == 40 for m in result["runs"])
    assert result["ratios"]["miyaq call/baseline confirmed"]["enqueue_rate"] > 0
    for m in result["runs"]:
        broker = "node" if m["system"] == "miyaq" else "relay"
        assert set(m["wakeups_per_task"]) == {broker, "workers", "producer", "total"}, m
        # a confirmed round trip makes the producer wait for its answer
        assert m["wakeups_per_task"]["producer"] > 0, m
        main, whole = m["main_thread_cpu_us_per_task"], m["cpu_us_per_task"]
        assert 0 < main["total"] <= whole["total"], m
    assert result["ratios"]["miyaq/baseline@gevent"]["call"]["wakeups_broker"] > 0
    # 40 tasks of a worker's main thread can take under one clock tick (10 ms),
    # read as 0: the ratio is there and a number, not necessarily above 0 (a
    # CI run read 0.0).
    assert result["ratios"]["baseline@gevent/baseline"]["confirmed"]["main_us_workers"] >= 0


def test_compare_python_runs_miyaq_twice_in_turns():
    """--compare-python with this interpreter: two miyaq systems, two repeats."""
    result = bench_json("--tasks", "200", "--workers", "1", "--concurrency", "2",
                        "--compare-python", sys.executable, "--repeat", "2")
    order = [m["system"] for m in result["runs"]]
    assert order == ["miyaq", "miyaq@other", "miyaq", "miyaq@other"]
    spread = result["summary"]["bulk"]["miyaq"]["drain_rate"]
    assert spread["n"] == 2 and spread["min"] <= spread["median"] <= spread["max"]


def test_cluster_is_held_against_a_single_node():
    result = bench_json("--tasks", "300", "--workers", "1", "--concurrency", "4", "--cluster", "3",
                        timeout=140)
    assert {m["system"] for m in result["runs"]} == {"cluster-3", "miyaq"}
    assert all(m["completed"] == 300 for m in result["runs"])
    assert result["ratios"]["cluster-3/miyaq"]["bulk"]["drain_rate"] > 0
    # What the nodes counted during the phase (standby takeovers, stream gaps...):
    # a dict of what moved, or None when nothing did; never for the single node.
    cluster_run, = [m for m in result["runs"] if m["system"] == "cluster-3"]
    events = cluster_run["cluster_events"]
    assert events is None or (events and all(isinstance(v, int) and v for v in events.values())), events
    assert [m["cluster_events"] for m in result["runs"] if m["system"] == "miyaq"] == [None]


def test_the_report_names_what_a_cluster_counted_in_each_run():
    """A slow cluster run says why (a standby copy that took over started an
    offset late); runs that counted nothing print nothing."""
    from miyaq.bench.report import _cluster_event_lines
    runs = [{"system": "cluster-3", "phase": "bulk", "repeat": 0, "cluster_events": {"takeovers": 57,
                                                                                       "deferrals": 1200}},
            {"system": "cluster-3", "phase": "bulk", "repeat": 1, "cluster_events": None},
            {"system": "miyaq", "phase": "bulk", "repeat": 0, "cluster_events": None}]
    assert _cluster_event_lines(runs) == ["  cluster events (what the nodes counted during the phase):",
                                          "    cluster-3 bulk (run 1): takeovers 57, deferrals 1,200"]
    assert _cluster_event_lines(runs[1:]) == []


def test_profile_writes_one_profile_per_process(tmp_path):
    """--profile with collapsed stacks: a file per process, each naming frames.
    Two seconds of load: py-spy counts only samples where a thread runs,
    and a worker's 55 ms of CPU in one second got none once on a loaded
    machine (CI of 2026-12-07, with three chaos runs beside it)."""
    out = tmp_path / "prof"
    result = bench_json("--tasks", "1000", "--workers", "1", "--concurrency", "2", "--rate", "500",
                        "--profile", str(out), "--profile-format", "raw")
    assert result["errors"] == []
    names = sorted(p.name for p in out.iterdir())
    assert names == ["miyaq-rate_500_s-node.txt", "miyaq-rate_500_s-producer.txt",
                     "miyaq-rate_500_s-worker-0.txt"]
    # Collapsed stacks ("frame (file.py:line);frame ... count"; a sample in
    # no Python frame is a bare count). Which frames a process shows depends
    # on where py-spy's samples fell: on a loaded machine the node's second
    # of work can be a handful of samples, all in the hub's loop, so no
    # function of miyaq's is asked for by name.
    for name in names:
        lines = (out / name).read_text().splitlines()
        assert all(re.fullmatch(r".* \d+", line) for line in lines), (name, lines[:3])
        assert any(re.search(r"\(\S+\.py:\d+\)", line) for line in lines), (name, lines[:3])


def test_profile_without_py_spy_is_refused(monkeypatch):
    """Fault: py-spy is not installed."""
    from miyaq.bench import profile
    monkeypatch.setattr(profile.shutil, "which", lambda name: None)
    monkeypatch.setattr(profile, "_beside_python", lambda: None)
    with pytest.raises(ConfigError) as err:
        bench_cmd.check(parse("--profile", "/tmp/x"))
    assert "pip install py-spy" in err.value.message


def test_delayed_mode_reports_memory_per_task_and_costs():
    result = bench_json("--delayed", "2000")
    assert result["held"] == 2000 and result["errors"] == []
    assert result["rss_after_bytes"] > 0 and result["bytes_per_task"] is not None
    for probe in (result["near_empty"], result["full"]):
        assert probe["schedule_node_us"] > 0 and probe["cancel_round_trip_us"] > 0


# -- parts without processes -------------------------------------------------------------

class FakeDriver:
    """Stands in for a client: records what the agent asked of it."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_at = fail_at
        self.accepted = 0

    def submit(self, task_id: str, body: bytes, wait: bool, countdown: float | None,
               timeout: float) -> None:
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise MiyaqError("the node refused")
        self.calls.append(("confirmed" if wait else "submit", task_id))

    def call(self, task_id: str, body: bytes, timeout: float) -> None:
        self.calls.append(("call", task_id))

    def flush(self, timeout: float) -> int:
        self.accepted = sum(1 for kind, _ in self.calls if kind == "submit")
        return self.accepted

    def cancel(self, task_id: str) -> bool:
        self.calls.append(("cancel", task_id))
        return True

    def close(self) -> None:
        pass


@pytest.mark.parametrize("mode, kind", [("bulk", "submit"), ("confirmed", "confirmed"), ("call", "call")])
def test_agent_load_submits_every_task_and_writes_its_times(tmp_path, mode, kind):
    driver = FakeDriver()
    times = tmp_path / "t"
    answer = agent.load(driver, {"mode": mode, "tag": "x", "tasks": 5, "times": str(times)})
    assert driver.calls == [(kind, f"x-{i}") for i in range(5)]
    assert answer["submitted"] == answer["accepted"] == 5 and answer["errors"] == []
    assert os.path.getsize(times) == 5 * 8      # five doubles


def test_agent_reports_a_failing_submit_instead_of_dying(tmp_path):
    """Fault: the client raises on the third submit."""
    answer = agent.load(FakeDriver(fail_at=2), {"mode": "bulk", "tag": "x", "tasks": 5,
                                                "times": str(tmp_path / "t")})
    assert answer["submitted"] == 2
    assert "submit stopped after 2 tasks: the node refused" in answer["errors"][0]
    assert os.path.getsize(tmp_path / "t") == 2 * 8


def test_agent_cancel_counts_what_it_cancelled():
    driver = FakeDriver()
    answer = agent.cancel(driver, {"tag": "x", "first": 3, "count": 2})
    assert answer["cancelled"] == 2 and driver.calls == [("cancel", "x-3"), ("cancel", "x-4")]


def test_a_producer_that_exits_is_reported_with_its_log():
    """Fault: the producer's interpreter exits at once (here: /bin/false)."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = ProcessGroup(tmp)
        try:
            with pytest.raises(MiyaqError) as err:
                Producer(procs, "/bin/false", "miyaq", "tcp://127.0.0.1:9", "q").start(10.0)
            assert "the producer exited" in err.value.message
        finally:
            procs.close()


def test_children_do_not_import_the_miyaq_of_the_directory_the_bench_runs_in(tmp_path, monkeypatch):
    """Fault: the bench is started inside a checkout of another build. Its
    children run ``python -m``, which puts the working directory first on
    sys.path: they must still import the miyaq installed for their
    interpreter (``--python``, ``--compare-python``), not the checkout's."""
    checkout = tmp_path / "checkout"
    (checkout / "miyaq").mkdir(parents=True)
    (checkout / "miyaq" / "__init__.py").write_text("raise SystemExit('imported the checkout')\n")
    monkeypatch.chdir(checkout)
    logs = tmp_path / "run"
    logs.mkdir()
    procs = ProcessGroup(str(logs))
    try:
        child = procs.start("probe", [sys.executable, "-c", "import miyaq; print(miyaq.__file__)"])
        assert child.proc.wait(30) == 0, child.log_tail()
        child.close_log()
        imported = (logs / "probe.log").read_text().strip()
        assert imported == os.path.abspath(agent.__file__.replace(os.path.join("bench", "agent.py"),
                                                                  "__init__.py"))
    finally:
        procs.close()


def test_cpu_readings_of_this_process():
    pid = os.getpid()
    first = cpu.cpu_seconds(pid)
    sum(i * i for i in range(200_000))        # burn a little
    assert first is not None and cpu.cpu_seconds(pid) > first
    assert cpu.tree(pid)[0] == pid
    assert cpu.rss_bytes(pid) > 0
    assert cpu.cpu_seconds(2 ** 22 + 12345) is None      # no such process
    assert cpu.spent({"a": 1.0, "b": None}, {"a": 1.5, "b": 2.0}) == {"a": 0.5, "b": None}


def test_main_thread_and_wakeup_readings_of_this_process():
    """A sleep is a voluntary context switch: the wake-up count grows by it;
    the main thread's CPU is part of the process's."""
    pid = os.getpid()
    before = cpu.read({"me": pid})
    time.sleep(0.01)
    sum(i * i for i in range(200_000))
    used = cpu.between(before, cpu.read({"me": pid}))
    assert used.wakeups["me"] is not None and used.wakeups["me"] >= 1
    assert used.main["me"] is not None and 0 < used.main["me"]
    assert cpu.main_thread_seconds(pid) <= cpu.cpu_seconds(pid)
    gone = 2 ** 22 + 12345
    assert cpu.wakeups(gone) is None and cpu.main_thread_seconds(gone) is None


def test_cpu_per_task_sums_roles():
    used = {"node": 0.2, "worker-0": 0.1, "worker-1": 0.1, "producer": 0.1}
    assert role("worker-1") == "workers" and role("node-2") == "node"
    assert per_task(used, 1000) == {"node": 200.0, "workers": 200.0, "producer": 100.0, "total": 500.0}
    assert per_task({"node": None}, 10) == {"node": None, "total": None}
    assert per_task(used, 0) is None


def test_medians_and_ratios():
    def run(system: str, rate: float) -> dict[str, Any]:
        return {"system": system, "phase": "bulk", "mode": "bulk", "drain_rate": rate, "enqueue_rate": rate,
                "latency": {}, "cpu_us_per_task": {"total": 10.0}}
    summary = summarize([run("a", 100), run("b", 50), run("a", 300), run("b", 50), run("a", 200)])
    assert summary["bulk"]["a"]["drain_rate"] == {"median": 200, "min": 100, "max": 300, "n": 3}
    assert ratios(summary, "a", "b")["bulk"]["drain_rate"] == 4.0
    assert ratios(summary, "a", "b")["bulk"]["cpu_us_total"] == 1.0


@pytest.mark.parametrize("hub", [False, True], ids=["blocking", "gevent-hub"])
def test_a_bare_relay_stops_on_sigterm_while_it_waits(hub):
    """SIGTERM reaches a bare relay that waits for a message (in ZeroMQ, or in
    the gevent hub where a plain Python signal handler would not run): it
    exits 0 at once, so the bench never has to kill it."""
    from miyaq.bench.bare_client import RelayProbe
    from miyaq.testing.ports import free_port
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    relay = subprocess.Popen([sys.executable, "-m", "miyaq.bench.bare", "relay", "--bind", endpoint]
                             + (["--hub"] if hub else []), stderr=subprocess.PIPE, text=True)
    probe = RelayProbe(endpoint)
    try:
        assert probe.stats(30.0) == (0, 0, 0)       # up, and now waiting for the next message
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(10) == 0, relay.stderr.read() if relay.stderr else ""
    finally:
        probe.close()
        if relay.poll() is None:
            relay.kill()
            relay.wait()
        if relay.stderr:
            relay.stderr.close()
