"""``miyaq bench`` under the faults of a second audit: a bare relay's late
answer taken for the next drain check, a producer that stalls or exits
mid-phase (and a node that stalls under a producer's submit), and option
combinations that measured nothing or the wrong thing (``--connect`` with a
baseline or ``--idle``, ``--delayed`` with options it ignores, sizes the
started processes would refuse). Each test names the fault it simulates;
real processes only where the fault is theirs, every one stopped. No
timing assertions."""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import msgpack
import pytest
import zmq
from process_tree import children_of
from test_bench_faults import FakeSystem, wait_until

from miyaq.bench import agent
from miyaq.bench import producer as producer_mod
from miyaq.bench.bare_client import RelayProbe
from miyaq.bench.measure import Phase, run_system
from miyaq.bench.procs import ProcessGroup
from miyaq.bench.producer import Producer
from miyaq.cli import bench_cmd
from miyaq.errors import ConfigError, Timeout
from miyaq.testing.ports import free_port

pytestmark = [pytest.mark.timeout(150), pytest.mark.loads_cpu]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


# -- 1. the relay's late answer ----------------------------------------------------------------

def test_a_late_relay_answer_is_not_taken_for_the_next_one():
    """Fault: the bare relay is slow to answer (stopped, as a loaded machine
    stops a process starting up) while the bench asks for its counts; the
    ask times out and the answer arrives later. The next ask must read the
    relay's counts of now -- one task received -- not that late answer of
    (0, 0, 0) (before: it did, so the first drain check after a phase saw
    nothing received and ended the phase early)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    relay = subprocess.Popen([sys.executable, "-m", "miyaq.bench.bare", "relay", "--bind", endpoint],
                             stderr=subprocess.DEVNULL)
    probe = RelayProbe(endpoint)
    ctx = zmq.Context()
    producer = ctx.socket(zmq.DEALER)
    producer.setsockopt(zmq.LINGER, 0)
    try:
        assert probe.stats(30.0) == (0, 0, 0)          # up
        relay.send_signal(signal.SIGSTOP)
        with pytest.raises(Timeout):
            probe.stats(0.2)                         # its answer comes once the relay runs again
        relay.send_signal(signal.SIGCONT)
        producer.connect(endpoint)
        producer.send(msgpack.packb(["T", "t-0", "noop", msgpack.packb([[b""], {}]), False]))
        assert producer.poll(30_000), "the relay did not ack the task"
        assert msgpack.unpackb(producer.recv())[0] == "A"
        assert probe.stats(30.0) == (1, 0, 0)
    finally:
        producer.close()
        ctx.term()
        probe.close()
        relay.send_signal(signal.SIGCONT)
        relay.kill()
        relay.wait()


def test_the_relay_still_answers_a_stats_request_without_a_number():
    """``["S"]`` (an older asker's request) gets the old answer, without a number."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    relay = subprocess.Popen([sys.executable, "-m", "miyaq.bench.bare", "relay", "--bind", endpoint],
                             stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb(["S"]))
        assert sock.poll(30_000)
        assert msgpack.unpackb(sock.recv()) == ["S", 0, 0, 0]
    finally:
        sock.close()
        ctx.term()
        relay.kill()
        relay.wait()


# -- 2. submits bounded by the phase's deadline ------------------------------------------------

class TimedDriver:
    """Stands in for a driver: records the timeout each submit or call got."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def submit(self, task_id: str, body: bytes, wait: bool, countdown: float | None, timeout: float) -> None:
        self.timeouts.append(timeout)

    def call(self, task_id: str, body: bytes, timeout: float) -> None:
        self.timeouts.append(timeout)

    def flush(self, timeout: float) -> int:
        return len(self.timeouts)

    def cancel(self, task_id: str) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.mark.parametrize("mode", ["bulk", "confirmed", "call"])
def test_each_submit_may_wait_only_what_is_left_of_the_phase(tmp_path, mode):
    """Fault: the node stalls under a confirmed submit. The agent gives each
    submit (and call) what is left of the load's ``seconds``, so the submit
    fails in time for the bench to read the answer (before: a submit
    waited the client's own 30 s ``submit_timeout``, past the bench's read)."""
    driver = TimedDriver()
    answer = agent.load(driver, {"mode": mode, "tag": "x", "tasks": 5, "seconds": 5.0,
                                 "times": str(tmp_path / "t")})
    assert answer["errors"] == [] and answer["submitted"] == 5
    assert len(driver.timeouts) == 5 and all(0 < t <= 5.0 for t in driver.timeouts), driver.timeouts


def test_the_miyaq_driver_hands_the_time_left_to_the_client():
    """The miyaq driver sets the client's ``submit_timeout`` (what a submit
    waits for room in the window and for its acknowledgement) to the time
    left, before each submit and each call."""
    seen: list[tuple[str, float]] = []

    class Client:
        submit_timeout = 30.0

        def submit(self, *args, **kwargs):
            seen.append(("submit", self.submit_timeout))

        def call(self, *args, **kwargs):
            seen.append(("call", self.submit_timeout))

    driver = agent.MiyaqDriver.__new__(agent.MiyaqDriver)
    driver.client, driver.name, driver.queue, driver.handles = Client(), "noop", "q", []
    driver.submit("x-0", b"", True, None, 2.5)
    driver.call("x-1", b"", 1.5)
    assert seen == [("submit", 2.5), ("call", 1.5)]


def test_a_stalled_relay_fails_a_confirmed_submit_within_the_phase(tmp_path):
    """Fault: the bare relay stops (SIGSTOP) under a confirmed load of 0.5 s.
    The load ends with its error when the 0.5 s are over -- the driver's
    wait is what was left of them -- (before: 30 s, whatever the load's
    deadline; the bench had stopped reading by then)."""
    from miyaq.bench.bare_client import BareDriver
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    relay = subprocess.Popen([sys.executable, "-m", "miyaq.bench.bare", "relay", "--bind", endpoint],
                             stderr=subprocess.DEVNULL)
    driver = BareDriver(endpoint)
    try:
        relay.send_signal(signal.SIGSTOP)
        answer = agent.load(driver, {"mode": "confirmed", "tag": "x", "tasks": 3, "seconds": 0.5,
                                     "times": str(tmp_path / "t")})
        assert answer["submitted"] == 0, answer
        [error] = answer["errors"]
        assert error.startswith("submit stopped after 0 tasks: the relay did not answer within 0.")
    finally:
        driver.close()
        relay.send_signal(signal.SIGCONT)
        relay.kill()
        relay.wait()


# -- 3. a producer that stalls or exits mid-phase ----------------------------------------------

#: A producer that says it is ready and then, at its first command, stalls or exits.
STUB = """
import json, os, signal, sys, time
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
sys.stdin.readline()
if sys.argv[1] == "exit":
    sys.exit(3)
os.kill(os.getpid(), signal.SIGSTOP)
time.sleep(600)
"""


@pytest.mark.parametrize("fault, words", [("exit", "the producer exited"),
                                          ("stall", "the producer did not answer")])
def test_a_producer_that_fails_a_phase_is_that_phases_error(tmp_path, monkeypatch, fault, words):
    """Fault: the producer exits (status 3) or stops (SIGSTOP) at the first
    phase's load. That phase carries the error, the next one is reported as
    not run, the stopped producer is killed, and the system's run ends
    normally, so the other systems are still measured and the bench exits 1
    (before: the error ended the whole run with exit 2 and no report)."""
    monkeypatch.setattr(producer_mod, "SLACK", 0.5)      # the stalled one: not 15 s more
    script = tmp_path / "stub.py"
    script.write_text(STUB)
    with tempfile.TemporaryDirectory() as tmp:
        procs = ProcessGroup(tmp)
        made: list[Producer] = []

        def make(system):
            p = Producer(procs, sys.executable, "miyaq", system.endpoint, "q")
            p.argv = [sys.executable, str(script), fault]
            made.append(p)
            return p
        try:
            done = run_system(FakeSystem(tmp), make, [Phase("confirmed", "confirmed", 5),
                                                           Phase("call", "call", 5)],
                              payload=1, timeout=1.0, start_deadline=time.monotonic() + 30, idle=0.0,
                              progress_stream=None)
            first, second = done.measurements
            assert first["phase"] == "confirmed" and first["submitted"] == 0
            assert len(first["errors"]) == 1 and first["errors"][0].startswith(
                f"the producer failed, so nothing it submitted is counted: {words}"), first["errors"]
            assert second["errors"] == ["not run: the producer failed in an earlier phase"]
            assert made[0].lost is not None and not made[0].child.alive()
        finally:
            procs.close()


def test_a_producer_killed_mid_phase_leaves_a_report_and_exit_1(tmp_path):
    """Fault: the producer is SIGKILLed while miyaq's rate phase runs, with
    ``--baseline``. The bench prints its report: miyaq's phase with the
    producer's error, the baseline measured in full; exit 1 (before: exit 2,
    no report, the baseline never run)."""
    argv = [sys.executable, "-m", "miyaq.cli.main", "bench", "-w", "1", "-c", "8", "-n", "500", "--rate", "100",
            "--timeout", "60", "--baseline", "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        # A worker's record file: the first task ran, the producer is mid-phase.
        wait_until("the first task ran", lambda: glob.glob(str(tmp_path / "miyaq-bench-*" / "worker-*.rec")))
        pid = wait_until("the producer's pid", lambda: producer_pid(proc.pid))
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, f"exit {proc.returncode}\n{err}"
    result = json.loads(out)
    miyaq, baseline = result["runs"]
    assert miyaq["system"] == "miyaq" and baseline["system"] == "baseline"
    assert any(e.startswith("the producer failed, so nothing it submitted is counted: the producer exited")
               for e in miyaq["errors"]), miyaq["errors"]
    assert baseline["errors"] == [] and baseline["completed"] == 500


def producer_pid(bench: int) -> int | None:
    """The pid of the bench's producer (agent.py): a child of the bench (its launch shim execs it)."""
    for pid in children_of(bench):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"agent.py" in fh.read():
                    return pid
        except OSError:
            continue
    return None


# -- 4. options that measured nothing, or the wrong thing ---------------------------------------

@pytest.mark.parametrize("option", [["--baseline"], ["--baseline-gevent"], ["--idle", "2"]])
def test_connect_with_a_baseline_or_idle_is_refused(option):
    """Fault: ``--connect`` with ``--baseline`` (or ``--baseline-gevent``,
    ``--idle``): the given node's CPU is not read, so miyaq's total left it
    out and compared as cheaper than the relay with its relay (0.84x where
    miyaq cost more). Now a usage error before anything starts."""
    with pytest.raises(ConfigError) as err:
        bench_cmd.check(parse("--connect", "tcp://127.0.0.1:9", *option))
    assert option[0] in err.value.message and "--connect" in err.value.message


@pytest.mark.parametrize("option", [
    ["--keys"], ["--repeat", "3"], ["--fsync", "always"], ["--idle", "2"], ["--workers", "4"],
    ["--profile", "/nonexistent/profiles"], ["--concurrency", "8"], ["--tasks", "10"], ["--pool", "threads"],
    ["--compare-python", sys.executable], ["--task-ms", "5"],
])
def test_delayed_refuses_the_options_it_would_ignore(option):
    """Fault: ``--delayed`` with an option it does not use (before: silently
    ignored, the run looked configured when it was not)."""
    with pytest.raises(ConfigError) as err:
        bench_cmd.check(parse("--delayed", "10", *option))
    assert "--delayed" in err.value.message and option[0] in err.value.message


@pytest.mark.parametrize("argv, words", [
    (["--workers", "1025"], "--workers must be 1..1024"),
    (["--cluster", "17"], "--cluster must be 2..16"),
    (["--concurrency", "10001"], "concurrency must be 1..10,000"),
    (["--concurrency", "8", "--prefetch", "200000"], "concurrency + prefetch must be at most 100,000"),
])
def test_sizes_the_processes_would_refuse_are_refused_before_the_run(argv, words):
    """Fault: a size the started processes refuse (a worker's concurrency
    cap, a cluster's MAX_REPLICAS) -- before: found out after the node (or
    the ZooKeeper) had started, as a child that exited."""
    with pytest.raises(ConfigError) as err:
        bench_cmd.check(parse(*argv))
    assert words in err.value.message


def test_the_largest_sizes_pass_the_checks():
    bench_cmd.check(parse("--workers", "1024", "--cluster", "16", "--concurrency", "10000"))
