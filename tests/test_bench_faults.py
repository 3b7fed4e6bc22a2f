"""``miyaq bench`` under faults an audit found: a signal in the delayed
mode, a bench killed while its ZooKeeper runs, an unusable ``--profile``
directory, py-spy that writes nothing, phases the timeout leaves out, a
worker that dies mid-phase, bad interpreters and payloads. Each test names
the fault it simulates; where a real run would take minutes the fault is
made cheap (a tiny run, or the part under test in-process with stand-ins).
No timing assertions; every process a test starts is stopped."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.timeout(150), pytest.mark.loads_cpu]


def bench_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "miyaq.cli.main", "bench", *args]


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until(what: str, check, limit: float = 60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {limit}s")


def producer_up(pid: int) -> list[int] | None:
    """The bench's children once its producer (agent.py) runs: the run is under way."""
    kids = children_of(pid)
    return kids if any("agent.py" in cmdline(k) for k in kids) else None


def stop(proc: subprocess.Popen, pids: list[int]) -> None:
    """Kill the bench (if still running) and every pid it was seen to start."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# -- 1. SIGTERM in the delayed mode --------------------------------------------------------

def test_sigterm_in_delayed_mode_cleans_up_and_exits_143(tmp_path):
    """Fault: SIGTERM while ``--delayed`` schedules its tasks. The bench stops
    its node and producer, removes its temporary directory and exits 143, as
    the other modes do (before: killed by the signal, the directory left)."""
    proc = subprocess.Popen(bench_argv("--delayed", "2000000", "--timeout", "60"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    kids: list[int] = []
    try:
        kids = wait_until("the node and the producer started", lambda: producer_up(proc.pid))
        assert glob.glob(str(tmp_path / "miyaq-bench-*"))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert not glob.glob(str(tmp_path / "miyaq-bench-*")), "the temporary directory was left behind"
        wait_until("the children stopped", lambda: not any(alive(k) for k in kids), 20)
    finally:
        stop(proc, kids)
