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
import warnings

import pytest
from process_tree import alive, children_of

pytestmark = [pytest.mark.timeout(150), pytest.mark.loads_cpu]


def bench_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "miyaq.cli.main", "bench", *args]


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


def stop_pid(pid: int) -> None:
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def stop(proc: subprocess.Popen, pids: list[int]) -> None:
    """Kill the bench (if still running) and every pid it was seen to start."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in pids:
        stop_pid(pid)


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


# -- 2. the cluster's ZooKeeper dies with the bench -----------------------------------------

ZK_HOLDER = """
import sys, tempfile, time
from miyaq.bench.fleet import Fleet
from miyaq.bench.procs import ProcessGroup
tmp = tempfile.mkdtemp(dir=sys.argv[1])
fleet = Fleet(ProcessGroup(tmp), connect=None, workers=0, concurrency=1, queue="q", records_dir=tmp,
              deadline=time.monotonic() + 60, nodes=2)
fleet._start_zookeeper()
print(fleet.zookeeper.pid, flush=True)
time.sleep(120)
"""


def test_the_clusters_zookeeper_dies_when_the_bench_is_killed(tmp_path):
    """Fault: the bench is SIGKILLed while its ``--cluster`` ZooKeeper runs
    (here a process that starts it as the bench does, then waits). The
    ZooKeeper goes with it, as every other child does (before: a java
    process left running)."""
    holder = subprocess.Popen([sys.executable, "-c", ZK_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    zk = 0
    try:
        assert holder.stdout is not None
        zk = int(holder.stdout.readline())
        assert alive(zk)
        holder.kill()
        holder.wait()
        wait_until("the ZooKeeper stopped", lambda: not alive(zk), 30)
    finally:
        stop(holder, [zk] if zk else [])


def test_a_second_interrupt_while_closing_still_stops_the_zookeeper(tmp_path):
    """Fault: a second Ctrl-C while :meth:`Fleet.close` stops the nodes
    (simulated: stopping them raises KeyboardInterrupt). The ZooKeeper is
    killed all the same (before: ``zookeeper.stop()`` was skipped)."""
    from miyaq.bench.fleet import Fleet
    from miyaq.bench.procs import ProcessGroup

    procs = ProcessGroup(str(tmp_path))
    fleet = Fleet(procs, connect=None, workers=0, concurrency=1, queue="q", records_dir=str(tmp_path),
                  deadline=time.monotonic() + 60, nodes=2)
    fleet._start_zookeeper()
    zk = fleet.zookeeper.pid
    try:
        def interrupted(grace: float = 5.0) -> None:
            raise KeyboardInterrupt
        procs.close = interrupted   # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            fleet.close()
        assert not alive(zk), "the ZooKeeper outlived an interrupted close()"
    finally:
        if fleet.zookeeper is not None:
            fleet.zookeeper.kill()
        stop_pid(zk)


def test_a_second_interrupt_while_stopping_the_children_kills_them(tmp_path):
    """Fault: a second Ctrl-C while the process group waits out a child's
    grace (simulated: the wait raises KeyboardInterrupt; the child ignores
    SIGTERM, as a node busy shutting down seems to). What still runs is
    SIGKILLed before the interrupt propagates: nothing waits for the
    bench's exit to be told to stop, and a node can no longer outlive a
    ZooKeeper it is still leaving."""
    from miyaq.bench.procs import ProcessGroup
    procs = ProcessGroup(str(tmp_path))
    child = procs.start("node", [sys.executable, "-c", "import signal, sys, time; "
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                                 "time.sleep(60)"])
    try:
        wait_until("the child ignores SIGTERM", lambda: "ready" in child.log_tail())
        real_wait = child.proc.wait
        calls = []

        def interrupted_wait(timeout: float | None = None) -> int:
            calls.append(timeout)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return real_wait(timeout)
        child.proc.wait = interrupted_wait   # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            procs.close(grace=30)
        assert child.proc.poll() == -signal.SIGKILL
    finally:
        stop_pid(child.pid)


# -- 3. an unusable --profile directory ------------------------------------------------------

def parse(*argv: str):
    import argparse

    from miyaq.cli import bench_cmd
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_profile_directory_that_cannot_be_made_is_refused_before_the_run(tmp_path, where):
    """Fault: ``--profile DIR`` where DIR is an existing file, or cannot be
    made (a file is in its path). The option check refuses it with one line
    naming --profile (exit 2), before any process starts (before: a
    FileExistsError/NotADirectoryError traceback once the run was up)."""
    from miyaq.cli import bench_cmd
    from miyaq.errors import ConfigError
    afile = tmp_path / "afile"
    afile.write_text("")
    target = afile if where == "a file" else afile / "sub"
    with pytest.raises(ConfigError) as err:
        bench_cmd.check(parse("--profile", str(target)))
    assert err.value.message.startswith(f"--profile {target}: ")


def test_bench_with_a_profile_path_that_is_a_file_exits_2_at_once(tmp_path):
    """Fault: the same, through the command: exit 2, one error line, no traceback."""
    afile = tmp_path / "afile"
    afile.write_text("")
    proc = subprocess.run(bench_argv("-n", "10", "-w", "1", "--timeout", "10", "--profile", str(afile)),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"miyaq: error: --profile {afile}: not a directory"


# -- 4. py-spy that writes nothing -------------------------------------------------------------

# Fake py-spys in Python, not sh: a test run by pytest-xdist inherits SIGINT
# ignored, and a non-interactive shell can neither trap nor restore a signal
# ignored on entry (the sh versions were killed by the SIGKILL after the wait).
# Each also unblocks SIGINT, and says in its ready file whether it came
# blocked (a whole-suite run once saw the "no sample" fake still running
# STOP_WAIT after its SIGINT; a blocked SIGINT is one way, not confirmed).
READY = ("import os\nblocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
         "with open(sys.argv[0] + '.part', 'w') as fh:\n    fh.write('SIGINT blocked on entry' if blocked else '')\n"
         "os.rename(sys.argv[0] + '.part', sys.argv[0] + '.ready')\ntime.sleep(60)\n")
FAKE_PY_SPY = {
    # killed by the SIGINT that should stop it, before it could write (it had not attached yet)
    "killed by SIGINT": "import signal, sys, time\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\n" + READY,
    # stops cleanly on SIGINT, but took no sample: an empty file
    "no sample": ("import signal, sys, time\nout = sys.argv[sys.argv.index('--output') + 1]\n"
                  "def stop(*_):\n    open(out, 'w').close()\n    sys.exit(0)\n"
                  "signal.signal(signal.SIGINT, stop)\n" + READY),
}

@pytest.mark.parametrize("fault", sorted(FAKE_PY_SPY))
def test_a_profile_py_spy_did_not_write_is_an_error(tmp_path, monkeypatch, fault):
    """Fault: the phase ends before py-spy attached (killed by its SIGINT, no
    file) or took a sample (an empty file); an earlier run's profile of the
    same name is in DIR. Each process without a profile is reported (before:
    none was, and the run said "errors none")."""
    from miyaq.bench import profile
    fake = tmp_path / "py-spy"
    fake.write_text(f"#!{sys.executable}\n{FAKE_PY_SPY[fault]}")
    fake.chmod(0o755)
    monkeypatch.setattr(profile, "find_py_spy", lambda: str(fake))
    out = tmp_path / "prof"
    out.mkdir()
    (out / "miyaq-bulk-worker-0.txt").write_text("an earlier run's stack 3\n")
    profilers = profile.Profilers(str(out), "raw", "miyaq-bulk", {"worker-0": os.getpid()}).start()
    procs = list(profilers.procs)
    try:
        # Until the fake has set its SIGINT handling: a SIGINT before that is
        # ignored when the suite runs as a background job, and the fake was
        # then killed STOP_WAIT later -- an "exit -9" that hid a slow start
        # (the wait used to end silently after 60 s and send it all the same).
        wait_until("the fake py-spy set its SIGINT handling", lambda: os.path.exists(f"{fake}.ready"))
        entry = (tmp_path / "py-spy.ready").read_text()
        if entry:
            warnings.warn(f"the fake py-spy: {entry} (from this test process)", stacklevel=1)
        signals = _signal_state(procs[0][1].pid)    # for the message, should the fake not stop
        started = time.monotonic()
        problems = profilers.stop()
        took = time.monotonic() - started
    finally:
        for _, proc in procs:
            proc.kill()
            proc.wait()
    assert len(problems) == 1 and problems[0].startswith("py-spy on worker-0 wrote no profile"), \
        (problems, f"stop() took {took:.1f}s; the fake at its SIGINT: {signals}; {entry or 'SIGINT not blocked'}")


def _signal_state(pid: int) -> str:
    """A process's state and signal masks (hex) from /proc: blocked, ignored, caught."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            return " ".join(line.strip().replace("\t", " ") for line in fh
                            if line.startswith(("State:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:")))
    except OSError as exc:
        return f"unreadable ({exc})"


# Ignores the SIGINT that should stop it (a py-spy stuck attaching); ready once it does, per --output.
DEAF_PY_SPY = ("import signal, sys, time\nout = sys.argv[sys.argv.index('--output') + 1]\n"
               "signal.signal(signal.SIGINT, signal.SIG_IGN)\nopen(out + '.ready', 'w').close()\ntime.sleep(60)\n")


def test_recorders_that_ignore_sigint_are_waited_for_together_not_each_in_turn(tmp_path, monkeypatch):
    """Fault: two py-spys do not stop on their SIGINT. ``Profilers.stop``
    waits ``STOP_WAIT`` for them all, then kills both, each reported (before:
    each had ``STOP_WAIT`` of its own, waited in turn -- a bench's ten
    recorders that hung held the phase's end five minutes). Seen in what the
    second wait is given, not in how long it took."""
    from miyaq.bench import profile
    fake = tmp_path / "py-spy"
    fake.write_text(f"#!{sys.executable}\n{DEAF_PY_SPY}")
    fake.chmod(0o755)
    monkeypatch.setattr(profile, "find_py_spy", lambda: str(fake))
    monkeypatch.setattr(profile, "STOP_WAIT", 1.0)
    out = tmp_path / "prof"
    out.mkdir()
    profilers = profile.Profilers(str(out), "raw", "miyaq-bulk", {"worker-0": os.getpid(), "worker-1": os.getpid()})
    profilers.start()
    procs = list(profilers.procs)
    waits: dict[str, list[float | None]] = {}
    for name, proc in procs:
        def communicate(timeout: float | None = None, name=name, real=proc.communicate):
            waits.setdefault(name, []).append(timeout)
            return real(timeout=timeout)
        monkeypatch.setattr(proc, "communicate", communicate)
    try:
        wait_until("both fakes ignore SIGINT",
                   lambda: all(os.path.exists(f"{p}.ready") for p in profilers.outputs.values()))
        problems = profilers.stop()
    finally:
        for _, proc in procs:
            proc.kill()
            proc.wait()
    assert sorted(problems) == [f"py-spy on worker-{i}: exit {-signal.SIGKILL}: " for i in (0, 1)], problems
    # The first waited its time out (it timed out); nothing was left for the second.
    assert 0.0 < waits["worker-0"][0] <= 1.0 and waits["worker-1"][0] == 0.0, waits


def test_a_failing_py_spy_is_reported_by_its_error_line_not_its_backtrace():
    """Fault: py-spy exits 1 with a Rust backtrace after its error (a flame
    graph of no sample); the report quotes the ``Error:`` line."""
    from miyaq.bench.profile import _error_line
    stderr = (b"[2026-12-05T08:17:25Z ERROR inferno::flamegraph] No stack counts found\n"
              b"Error: Failed to write flamegraph: No stack counts found\n\nStack backtrace:\n   8: main\n")
    assert _error_line(stderr) == "Error: Failed to write flamegraph: No stack counts found"
    assert _error_line(b"only this\n") == "only this" and _error_line(None) == ""


# -- 5. phases the timeout leaves out ----------------------------------------------------------

class FakeSystem:
    """Stands in for a Fleet: nothing to start, every task done at once."""

    kind = "miyaq"
    endpoint = "tcp://127.0.0.1:9"

    def __init__(self, records_dir: str, unfinished: tuple[int, int] | None = (0, 0),
                 exited: str | None = None) -> None:
        self.records_dir = records_dir
        self._unfinished = unfinished
        self._exited = exited

    def start(self) -> None:
        pass

    def peak_rss(self) -> int | None:
        return None

    def counters(self) -> dict[str, int]:
        return {}

    def pids(self) -> dict[str, int]:
        return {"node": os.getpid()}

    def unfinished(self) -> tuple[int, int]:
        from miyaq.errors import Unavailable
        if self._unfinished is None:
            raise Unavailable("the node does not answer")
        return self._unfinished

    def check_children(self) -> None:
        from miyaq.errors import MiyaqError
        if self._exited:
            raise MiyaqError(self._exited)

    def stop_workers(self, grace: float = 5.0) -> None:
        pass

    def close(self) -> None:
        pass


class FakeProducer:
    """Stands in for the producer: each load takes ``takes`` seconds, then
    every task it submitted is accepted and (unless ``runs`` is False) has
    run: its record is written as a worker would."""

    pid = os.getpid()
    lost = None

    def __init__(self, records_dir: str, takes: float = 0.0, runs: bool = True) -> None:
        self.records_dir = records_dir
        self.takes = takes
        self.runs = runs

    def start(self, timeout: float) -> FakeProducer:
        return self

    def load(self, times_path: str, timeout: float, **cmd):
        from miyaq.bench.records import RecordWriter
        time.sleep(self.takes)
        now = time.time()
        n = cmd["tasks"]
        if self.runs:
            writer = RecordWriter(self.records_dir)
            for i in range(n):
                writer.write(f"{cmd['tag']}-{i}", now, now)
            writer.close()
        return {"submitted": n, "accepted": n, "first_submit": now, "acked_at": now, "errors": []}, [now] * n

    def quit(self) -> None:
        pass


def run_fake(tmp_path, phases, *, timeout: float, idle: float = 0.0, takes: float = 0.0, runs: bool = True,
             **system):
    """run_system on a FakeSystem (``system``: its faults) and a FakeProducer."""
    from miyaq.bench.measure import run_system
    fake = FakeSystem(str(tmp_path), **system)
    return run_system(fake, lambda s: FakeProducer(str(tmp_path), takes, runs),
                      phases, payload=1, timeout=timeout, start_deadline=time.monotonic() + 30, idle=idle,
                      progress_stream=None)


def test_an_idle_measurement_longer_than_the_timeout_still_runs_the_phases(tmp_path):
    """Fault: ``--idle`` at least ``--timeout`` (0.4 s idle, 0.2 s timeout).
    The idle time does not count against the timeout (docs/performance.md):
    the phase runs and is measured (before: no phase ran, and the run
    reported no error)."""
    from miyaq.bench.measure import Phase
    done = run_fake(tmp_path, [Phase("bulk", "bulk", 5)], timeout=0.2, idle=0.4)
    assert done.idle is not None and done.idle["seconds"] == 0.4
    [m] = done.measurements
    assert m["phase"] == "bulk" and m["completed"] == 5 and m["errors"] == [], m


def test_a_phase_the_timeout_leaves_no_time_for_is_an_error(tmp_path):
    """Fault: ``--confirmed``'s first phase takes the whole timeout (a load
    of 0.3 s, a timeout of 0.2 s). The ``call`` phase is reported as not run,
    with an error, so the bench exits 1 (before: it was left out silently)."""
    from miyaq.bench.measure import Phase
    from miyaq.bench.runner import BenchConfig, _result
    done = run_fake(tmp_path, [Phase("confirmed", "confirmed", 5), Phase("call", "call", 5)],
                    timeout=0.2, takes=0.3)
    assert [m["phase"] for m in done.measurements] == ["confirmed", "call"]
    confirmed, call = done.measurements
    assert confirmed["completed"] == 5 and confirmed["errors"] == []
    assert call["submitted"] == 0 and call["errors"] == ["not run: the --timeout of 0.2 s had passed "
                                                         "before it could start"]
    for m in done.measurements:
        m.update(repeat=0)
    result = _result(BenchConfig(confirmed=True), done.measurements, {}, {})
    assert result["errors"] == ["miyaq call (run 1): not run: the --timeout of 0.2 s had passed before it "
                                "could start"]


# -- 6. a worker that dies mid-phase -----------------------------------------------------------

def test_tasks_still_queued_when_a_worker_dies_are_unfinished_not_lost(tmp_path):
    """Fault: the only worker is killed mid-phase (simulated: the system
    says a child exited; the node still counts the 5 tasks as waiting, and
    none ran). They are reported unfinished (before: "5 task(s) finished but
    left no record", as if the node had run and lost them)."""
    from miyaq.bench.measure import Phase
    done = run_fake(tmp_path, [Phase("bulk", "bulk", 5)], timeout=10, runs=False,
                    exited="worker-0 (pid 1) exited with status -9", unfinished=(5, 0))
    [m] = done.measurements
    assert m["completed"] == 0
    assert m["errors"] == ["stopped waiting for completions: worker-0 (pid 1) exited with status -9",
                           "5 task(s) still unfinished then"], m["errors"]


def test_when_the_node_gives_no_count_the_missing_tasks_are_unknown(tmp_path):
    """Fault: a child exited and the node does not answer STATUS either. The
    tasks without a record are reported as unknown, not as run and lost."""
    from miyaq.bench.measure import Phase
    done = run_fake(tmp_path, [Phase("bulk", "bulk", 5)], timeout=10, runs=False,
                    exited="node (pid 1) exited with status -9", unfinished=None)
    [m] = done.measurements
    assert m["errors"] == ["stopped waiting for completions: node (pid 1) exited with status -9",
                           "5 accepted task(s) left no record; how many of them still waited is unknown "
                           "(the node gave no count)"], m["errors"]


# -- 7. bad interpreters, payloads too large, messages naming deleted files ---------------------

def test_a_directory_given_as_python_is_refused(tmp_path):
    """Fault: ``--python /tmp`` -- a directory passes os.access(X_OK)."""
    from miyaq.cli import bench_cmd
    from miyaq.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        bench_cmd.check(parse("--python", str(tmp_path)))
    assert err.value.message == f"--python {tmp_path}: not an executable file"


def no_zmq_python(tmp_path) -> str:
    """An interpreter whose ``import zmq`` fails (a build without pyzmq)."""
    shadow = tmp_path / "nozmq"
    shadow.mkdir()
    (shadow / "zmq.py").write_text("raise ImportError(\"No module named 'zmq'\")\n")
    path = [str(shadow), *filter(None, [os.environ.get("PYTHONPATH")])]
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\nPYTHONPATH='{os.pathsep.join(path)}' exec '{sys.executable}' \"$@\"\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("fault", ["/bin/false", "a python without zmq"])
def test_a_compare_python_that_cannot_run_the_bench_is_refused_before_the_run(tmp_path, fault):
    """Fault: ``--compare-python`` (or ``--python``) is /bin/false, or a
    python without pyzmq. The option check runs it first and refuses it
    (exit 2) instead of finding out after the whole main run."""
    from miyaq.cli import bench_cmd
    from miyaq.errors import ConfigError
    path = fault if fault.startswith("/") else no_zmq_python(tmp_path)
    for option in ("--compare-python", "--python"):
        with pytest.raises(ConfigError) as err:
            bench_cmd.check(parse(option, path))
        message = err.value.message
        assert message.startswith(f"{option} {path}: cannot run the bench's processes"), message
        assert ("exit status 1" if fault == "/bin/false" else "No module named 'zmq'") in message


def test_a_payload_over_the_nodes_max_payload_is_refused_before_the_run():
    """Fault: ``--payload 2147483647``: the producer would build 2 GiB for a
    node that takes 1 MiB. The option check bounds it by the max_payload of
    the node the bench starts, less what the task's encoding adds."""
    from miyaq.cli import bench_cmd
    from miyaq.errors import ConfigError
    largest = 1048576 - 8       # a node's default max_payload, less msgpack's [[bin32], {}]
    for payload in (2147483647, largest + 1):
        with pytest.raises(ConfigError) as err:
            bench_cmd.check(parse("--payload", str(payload)))
        assert err.value.message.startswith(f"--payload {payload}: more than the bench's node takes "
                                            f"(at most {largest}: its max_payload is 1048576 bytes")
    bench_cmd.check(parse("--payload", str(largest)))
    bench_cmd.check(parse("--payload", "2147483647", "--connect", "tcp://127.0.0.1:9"))   # asked once reached


def test_the_largest_payload_allowed_is_one_the_node_takes():
    """The bound is exact: a run at the largest payload the check lets
    through completes every task (3 tasks of about 1 MiB)."""
    import json

    largest = 1048576 - 8
    proc = subprocess.run(bench_argv("-n", "3", "-w", "1", "-c", "2", "--payload", str(largest), "--json",
                                     "--timeout", "60"), capture_output=True, text=True, timeout=140, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["completed"] == 3 and result["errors"] == []


def test_a_payload_over_a_given_nodes_max_payload_is_refused_before_workers_start():
    """Fault: ``--connect`` to a node started with ``--max-payload 4096`` and
    ``--payload 5000``. The bench asks the node its limits once it answers
    and stops there: one line, exit 2 (before: every submit refused, exit 1,
    after the workers and the producer had started)."""
    from miyaq.testing.ports import free_port
    port = free_port()
    node = subprocess.Popen([sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(port),
                             "--http-port", "0", "--log-level", "WARNING", "--max-payload", "4096"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"tcp://127.0.0.1:{port}"
        proc = subprocess.run(bench_argv("-n", "10", "-w", "1", "--payload", "5000", "--connect", endpoint,
                                         "--timeout", "30"),
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (f"miyaq: error: --payload 5000: more than the node at {endpoint} takes "
                                       f"(at most 4088: its max_payload is 4096 bytes, the task's encoding adds 8)")
        assert node.poll() is None, "the bench must not stop a node it did not start"
    finally:
        node.terminate()
        node.wait(10)


@pytest.mark.parametrize("output", ["", "Traceback: something broke"])
def test_a_child_that_exits_is_described_by_its_output_not_by_a_deleted_log_file(tmp_path, output):
    """Fault: the producer exits at once (its interpreter: a script that
    prints ``output`` and fails). The message quotes its output and names
    no file in the run's temporary directory: that is deleted before the
    message prints (before: "last lines of /tmp/miyaq-bench-.../producer.log")."""
    from miyaq.bench.procs import ProcessGroup
    from miyaq.bench.producer import Producer
    from miyaq.errors import MiyaqError
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\necho '{output}' >&2\nexit 3\n" if output else "#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    run_dir = tmp_path / "miyaq-bench-run"
    run_dir.mkdir()
    procs = ProcessGroup(str(run_dir))
    try:
        with pytest.raises(MiyaqError) as err:
            Producer(procs, str(script), "miyaq", "tcp://127.0.0.1:9", "q").start(30.0)
    finally:
        procs.close()
    message = err.value.message
    assert "exited with status 3; last lines of its output:\n" in message, message
    assert message.endswith(output or "(none)") and str(run_dir) not in message, message


def test_the_launch_shim_runs_a_command_named_without_its_path():
    """Fault: ``miyaq chaos``'s ``clock`` fault restarts a node as
    ``faketime -f +20 miyaq node ...`` through the launch shim, which
    ``execv``ed its first word as a path: ``faketime`` was not found, the
    skewed node never started, and the fault was a 15-second kill in every
    chaos run since 2026-11-24 -- no node ever ran with a skewed clock. The
    shim looks a bare name up on PATH now (``execvp``)."""
    from miyaq.bench import launch

    done = subprocess.run([sys.executable, launch.__file__, str(os.getpid()), "sh", "-c", "exit 7"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 7, done.stderr


def test_the_bench_reads_its_producer_on_a_descriptor_past_1023():
    """Fault (seen in CI: five bench tests failed with "filedescriptor out
    of range in select()"): the bench read its producer's output with
    ``select()``, which refuses a descriptor past 1023 -- any process with
    many files open (a test worker late in the suite, a program running the
    bench among others). It now polls."""
    import resource
    import select

    from miyaq.bench.producer import _readable

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = 1500
    if hard != resource.RLIM_INFINITY and hard <= high:
        pytest.fail(f"this machine's open-files limit ({hard}) is below {high}: the test cannot run")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, high + 1), hard))
    read_end, write_end = os.pipe()
    try:
        os.dup2(read_end, high)
        with pytest.raises(ValueError, match="out of range"):
            select.select([high], [], [], 0)            # what the bench used: the fault
        assert not _readable(high, 0.0)
        os.write(write_end, b"x\n")
        assert _readable(high, 1.0)
    finally:
        for fd in (read_end, write_end, high):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
