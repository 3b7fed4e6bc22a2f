"""Short real ``miyaq chaos`` runs of the newer fault classes (a few
seconds of each fault, a small load): network faults in the run's own
namespaces, a skewed clock through faketime, and the rolling restart.

Each run must exit 0: nothing accepted lost or stuck, every duplicate
explained by a fault and a rule, and no node cut off from ZooKeeper
starting tasks after it should have fenced itself. The fault runs need
root (CI runs as root); without root they are skipped outside CI and fail
in CI. Each takes about a minute: ``-m 'not chaos_run'`` leaves them out.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from chaos_lives import failed_lives

ROOT = os.geteuid() == 0
pytestmark = pytest.mark.chaos_run


def need_root() -> None:
    if not ROOT:
        if os.environ.get("CI"):
            pytest.fail("the chaos fault runs need root in CI (namespaces, iptables, mount)")
        pytest.skip("needs root: network namespaces, iptables and mount")


def run_chaos(tmp_path, *args: str, timeout: float = 300) -> dict:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "miyaq.cli.main", "chaos", "--nodes", "3", "--replicas", "2", "--rate", "40",
            "--fault-order", "cycle", "--json", "--out", str(out), "--drain-timeout", "60", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=10)
        pytest.fail(f"miyaq chaos did not finish in time; stderr tail:\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stderr[-6000:]}\n{failed_lives(out)}"
    return json.loads(stdout)


def injected(summary: dict) -> set[str]:
    return {f["kind"] for f in summary["faults"]}


@pytest.mark.timeout(360)
def test_network_faults_lose_nothing_and_a_split_minority_fences_itself(tmp_path):
    """Faults: a minority/majority split (the minority also loses ZooKeeper),
    a node cut off from ZooKeeper only, one-way partitions both ways, and
    a lossy link, each for 3 s, under 40 submits a second."""
    need_root()
    kinds = "split,zkcut,deaf,mute,lossy"
    s = run_chaos(tmp_path, "--partitions", "--faults", kinds, "--duration", "45", "--interval", "6",
                  "--fault-duration", "3")
    assert s["lost"] == 0 and s["stuck"] == 0 and s["done"] == s["accepted"] > 500
    assert injected(s) == set(kinds.split(","))
    assert s["started_while_fenced"] == 0 and s["duplicates"]["unexplained"] == 0
    assert all(not f["unrecovered"] for f in s["faults"])


@pytest.mark.timeout(360)
def test_a_skewed_clock_loses_nothing_and_runs_nothing_twice(tmp_path):
    """Fault: a node restarted through faketime with its clock 20 s ahead
    for 6 s, then 20 s behind, under 40 submits a second."""
    need_root()
    s = run_chaos(tmp_path, "--faults", "clock", "--duration", "40", "--interval", "12", "--fault-duration", "2")
    assert s["lost"] == 0 and s["stuck"] == 0 and s["done"] == s["accepted"] > 500
    assert injected(s) == {"clock"}
    assert s["duplicates"]["ran_more_than_once"] == 0
    assert all(not f["unrecovered"] and not f.get("errors") for f in s["faults"])


@pytest.mark.timeout(360)
def test_a_rolling_restart_a_drain_and_a_replacement_cost_nothing(tmp_path):
    """The operator's procedures under 40 submits a second: the first node
    drained (leave), restarted and joined; every other node restarted with
    SIGTERM; the last one replaced by a new node with a new id and an empty
    data dir. Not one task may start twice, not one submit fail."""
    s = run_chaos(tmp_path, "--rolling", "--duration", "45")
    assert s["lost"] == 0 and s["stuck"] == 0 and s["done"] == s["accepted"] == s["submitted"] > 1000
    assert s["duplicates"]["ran_more_than_once"] == 0 and s["failed_submits"]["total"] == 0
    assert [f["kind"] for f in s["faults"]] == ["drain", "restart", "restart", "replace"]
    assert all(f["recover_s"] is not None and not f.get("errors") for f in s["faults"])


@pytest.mark.timeout(360)
def test_a_full_disk_loses_nothing_and_the_node_rides_it_out(tmp_path):
    """Fault: a node's data dir (a small tmpfs) filled until every write of
    its log fails, for 4 s, twice, under 40 submits a second: the node
    refuses new tasks meanwhile (clients go elsewhere), keeps running, and
    nothing it acknowledged is lost."""
    need_root()
    s = run_chaos(tmp_path, "--faults", "diskfull", "--duration", "40", "--interval", "12", "--fault-duration", "4")
    assert s["lost"] == 0 and s["stuck"] == 0 and s["done"] == s["accepted"] > 500
    assert injected(s) == {"diskfull"}
    assert s["duplicates"]["unexplained"] == 0
    assert all(not f["unrecovered"] and not f.get("errors") for f in s["faults"])
