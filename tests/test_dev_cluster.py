"""``miyaq dev-cluster`` as a user runs it: a subprocess that starts ZooKeeper,
three nodes and workers, reports "ready", is checked with ``miyaq ring --json``
(and changed with ``miyaq ring weight``, ``miyaq leave``, ``miyaq join``), and
is stopped with SIGTERM -- after which none of the processes it started may be
left.

Every wait is a bounded poll that fails at its deadline; every process this
test starts is killed at teardown whatever happens.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from process_tree import descendants_of

from miyaq.cli.dev_cluster_cmd import banner
from miyaq.cluster.ring_admin import RingAdmin
from miyaq.devcluster import ports
from miyaq.devcluster.busy import TakenPort, taken_port
from miyaq.devcluster.cluster import MAX_STARTS, DevCluster
from miyaq.devcluster.node import DevNode
from miyaq.devstate import STATE_FILE
from miyaq.errors import MiyaqError
from miyaq.testing import ports as test_ports
from miyaq.testing.harness import free_port, refusing_port

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 90.0


def descendants(root: int) -> dict[int, str]:
    """Every live process under ``root`` (children, grandchildren, ...): pid -> command line."""
    return {pid: _cmdline(pid) for pid in descendants_of(root)}


def stop_and_find_nothing_left(cluster: DevClusterProc, children: dict[int, str], signum: int) -> None:
    """Send ``signum`` to dev-cluster: it must exit 0 saying it stopped, and
    none of ``children`` (what it started) may be left running."""
    cluster.proc.send_signal(signum)
    assert cluster.proc.wait(STOP_TIMEOUT) == 0, cluster.output()
    deadline = time.monotonic() + 30
    while left := {pid: c for pid, c in children.items() if still_running(pid, c)}:
        if time.monotonic() >= deadline:
            pytest.fail(f"processes left after dev-cluster stopped: {left}")
        time.sleep(0.1)
    assert "stopped; logs kept in" in cluster.output()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def still_running(pid: int, cmdline: str) -> bool:
    """True if ``pid`` is still the process we saw (not gone, not a zombie, not a reused pid)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and _cmdline(pid) == cmdline


def run_miyaq(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    return subprocess.run([sys.executable, "-m", "miyaq.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def miyaq(*args: str) -> str:
    """Run ``miyaq ARGS``; its stdout, or a test failure with its stderr."""
    answer = run_miyaq(*args)
    assert answer.returncode == 0, f"miyaq {' '.join(args)} exited {answer.returncode}:\n{answer.stderr}"
    return answer.stdout


class DevClusterProc:
    """The ``miyaq dev-cluster`` subprocess, its output read line by line by a thread."""

    def __init__(self, *args: str, cwd: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "miyaq.cli.main", "dev-cluster", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=cwd,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no line starting with {prefix!r} within {timeout:g}s:\n" + "\n".join(self.lines))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"dev-cluster exited ({self.proc.wait()}) before {prefix!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def output(self) -> str:
        self._reader.join(10)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return "\n".join(self.lines)
            if line is not None:
                self.lines.append(line)


class DevClusters:
    """Starts dev-cluster subprocesses and remembers every process they spawned."""

    def __init__(self) -> None:
        self.started: list[DevClusterProc] = []
        self.seen: dict[int, str] = {}

    def start(self, *args: str, cwd: str | None = None) -> DevClusterProc:
        p = DevClusterProc(*args, cwd=cwd)
        self.started.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.started:
            self.seen.update(descendants(p.proc.pid))
            if p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait(10)
        for pid, cmdline in self.seen.items():  # nothing the test saw may outlive it
            if still_running(pid, cmdline):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def dev_clusters() -> Iterator[DevClusters]:
    clusters = DevClusters()
    yield clusters
    clusters.kill_all()


def test_dev_cluster_forms_a_ring_and_sigterm_stops_every_process(dev_clusters, tmp_path):
    """Fault: the operator stops a running dev cluster with SIGTERM (as systemd or kill would)."""
    cluster = dev_clusters.start("--nodes", "3", "--base-port", str(free_port()), "--cluster", "devtest",
                                 "--workers", "apps.basic:app", "--worker-processes", "2",
                                 "--duration", "300", "--log-dir", str(tmp_path / "logs"))
    ready = cluster.wait_for_line("ready ", READY_TIMEOUT)
    info = dict(part.split("=", 1) for part in ready.split()[1:])
    assert info["cluster"] == "devtest" and len(info["connect"].split(",")) == 3

    ring = json.loads(miyaq("ring", "--zk", info["zk"], "--cluster", "devtest", "--json"))
    in_ring = {node_id for node_id, m in ring["members"].items() if m["in_ring"]}
    assert in_ring == {"n1", "n2", "n3"}
    assert ring["leader"] in in_ring and ring["epoch"] >= 1
    assert {m["service"] for m in ring["members"].values()} == set(info["connect"].split(","))
    assert all(m["tasks"] == 0 for m in ring["members"].values())

    # The operator commands against the running cluster, each waiting for the leader.
    zk = ["--zk", info["zk"], "--cluster", "devtest"]
    out = miyaq("ring", "weight", "n1", "2", *zk)
    assert "weight of n1: 1 -> 2 at epoch" in out and "n1: weight 1 -> 2, share" in out
    out = miyaq("leave", "n3", *zk)
    assert "n3 left the ring at epoch" in out and "n3: left the ring" in out
    out = miyaq("join", "n3", *zk)
    assert "n3 joined the ring at epoch" in out and "n3: joined the ring" in out
    after = json.loads(miyaq("ring", *zk, "--json"))
    assert {k for k, m in after["members"].items() if m["in_ring"]} == {"n1", "n2", "n3"}
    assert after["members"]["n1"]["weight"] == 2.0 and after["epoch"] > ring["epoch"]

    # Nodes, ZooKeeper, the worker supervisor and its two worker processes
    # (grandchildren, started by the supervisor shortly after it starts).
    deadline = time.monotonic() + 30
    while True:
        children = descendants(cluster.proc.pid)
        kinds = [(" node " in c, "QuorumPeerMain" in c, "miyaq.worker.main" in c) for c in children.values()]
        counts = [sum(k[i] for k in kinds) for i in range(3)]
        if counts == [3, 1, 2]:
            break
        if time.monotonic() >= deadline:
            pytest.fail(f"expected 3 nodes, 1 ZooKeeper, 2 worker processes; saw {children}")
        time.sleep(0.1)
    dev_clusters.seen.update(children)

    stop_and_find_nothing_left(cluster, children, signal.SIGTERM)
    assert (tmp_path / "logs" / "n1.log").is_file()


def test_a_hangup_stops_the_dev_cluster_and_everything_it_started(dev_clusters, tmp_path):
    """Fault: the terminal running ``miyaq dev-cluster`` closes (SIGHUP).
    ZooKeeper and the nodes run in sessions of their own, so the hangup
    reaches dev-cluster alone: it ended at once and left them running, on
    their ports, with its state file. Now it stops them as for Ctrl-C."""
    cluster = dev_clusters.start("--nodes", "1", "--base-port", str(free_port()), "--cluster", "hup",
                                 "--duration", "300", "--log-dir", str(tmp_path / "logs"), cwd=str(tmp_path))
    cluster.wait_for_line("ready ", READY_TIMEOUT)
    deadline = time.monotonic() + 30
    while sorted(("QuorumPeerMain" in c, " node " in c) for c in descendants(cluster.proc.pid).values()) \
            != [(False, True), (True, False)]:
        if time.monotonic() >= deadline:
            pytest.fail(f"expected a node and ZooKeeper; saw {descendants(cluster.proc.pid)}")
        time.sleep(0.1)
    children = descendants(cluster.proc.pid)
    dev_clusters.seen.update(children)

    stop_and_find_nothing_left(cluster, children, signal.SIGHUP)
    assert not (tmp_path / STATE_FILE).exists()


def test_ring_command_with_unreachable_zookeeper_exits_2():
    """Fault: `miyaq ring` is pointed at a ZooKeeper that is not there."""
    with refusing_port() as port:
        hosts = f"127.0.0.1:{port}"
        answer = run_miyaq("ring", "--zk", hosts, "--cluster", "x", "--timeout", "1")
    assert answer.returncode == 2
    assert f"cannot reach ZooKeeper at {hosts}" in answer.stderr and "MIYAQ_ZK" in answer.stderr
    assert answer.stdout == ""


def test_dev_cluster_with_unreachable_zookeeper_fails_cleanly(dev_clusters, tmp_path):
    """Fault: --zk names a ZooKeeper that is not there; the nodes cannot register.
    --zk-connect-timeout bounds the wait, of the nodes and of the dev cluster
    itself (2 s here; before 2026-12-06 a fixed 10 s)."""
    with refusing_port() as port:
        cluster = dev_clusters.start("--nodes", "1", "--zk", f"127.0.0.1:{port}", "--zk-connect-timeout", "2",
                                     "--base-port", str(free_port()), "--log-dir", str(tmp_path / "logs"))
        code = cluster.proc.wait(STOP_TIMEOUT)
    output = cluster.output()
    assert code == 2, output
    assert "miyaq: error:" in output and "stopped; logs kept in" in output
    assert f"cannot reach ZooKeeper at 127.0.0.1:{port} within 2s" in output
    node_log = (tmp_path / "logs" / "n1.log").read_text()
    assert "within 2s (--zk-connect-timeout)" in node_log     # the node got it too


@pytest.mark.parametrize("value", ["0", "-1", "nan", "3601"])
def test_dev_cluster_refuses_a_zk_connect_timeout_out_of_range(value):
    """Bad input: --zk-connect-timeout 0 (or NaN, or past an hour) is a usage
    error before anything starts."""
    answer = run_miyaq("dev-cluster", "--zk", "127.0.0.1:1", "--zk-connect-timeout", value)
    assert answer.returncode == 2 and "--zk-connect-timeout" in answer.stderr
    assert "Traceback" not in answer.stderr


def test_dev_cluster_on_a_zookeeper_ensemble(dev_clusters, tmp_path):
    """`--zk-servers 3` runs a real 3-server ensemble; the nodes get every server's address."""
    cluster = dev_clusters.start("--nodes", "2", "--zk-servers", "3", "--base-port", str(free_port()),
                                 "--cluster", "ensemble", "--duration", "300", "--log-dir", str(tmp_path / "logs"))
    ready = cluster.wait_for_line("ready ", READY_TIMEOUT)
    info = dict(part.split("=", 1) for part in ready.split()[1:])
    assert len(info["zk"].split(",")) == 3
    assert sum(line.startswith("ZooKeeper server ") for line in cluster.lines) == 3
    ring = json.loads(miyaq("ring", "--zk", info["zk"], "--cluster", "ensemble", "--json"))
    assert {k for k, m in ring["members"].items() if m["in_ring"]} == {"n1", "n2"}
    children = descendants(cluster.proc.pid)
    assert sum("QuorumPeerMain" in c for c in children.values()) == 3
    dev_clusters.seen.update(children)
    stop_and_find_nothing_left(cluster, children, signal.SIGTERM)


def test_dev_cluster_refuses_zk_servers_with_a_given_zookeeper():
    """Bad input: --zk-servers (start servers) together with --zk (use that one)."""
    answer = run_miyaq("dev-cluster", "--zk", "127.0.0.1:1", "--zk-servers", "3")
    assert answer.returncode == 2
    assert "--zk-servers" in answer.stderr and "--zk" in answer.stderr


def test_dev_cluster_with_zookeeper_credentials(dev_clusters, tmp_path):
    """`--zk-auth-file` protects the dev cluster's znodes; its nodes get the credentials by
    environment (never on a command line), and the ring commands need them."""
    secret = tmp_path / "zk-auth"
    secret.write_text("dev:not-on-any-command-line\n")
    secret.chmod(0o600)
    cluster = dev_clusters.start("--nodes", "1", "--zk-auth-file", str(secret), "--base-port", str(free_port()),
                                 "--cluster", "protected", "--duration", "300", "--log-dir", str(tmp_path / "logs"))
    ready = cluster.wait_for_line("ready ", READY_TIMEOUT)
    info = dict(part.split("=", 1) for part in ready.split()[1:])
    where = ["--zk", info["zk"], "--cluster", "protected"]
    refused = run_miyaq("ring", *where, "--timeout", "5")
    assert refused.returncode == 2 and "NoAuth" in refused.stderr and "--zk-auth" in refused.stderr
    ring = json.loads(miyaq("ring", *where, "--zk-auth-file", str(secret), "--json"))
    assert {k for k, m in ring["members"].items() if m["in_ring"]} == {"n1"}
    children = descendants(cluster.proc.pid)
    assert children and not any("not-on-any-command-line" in c for c in children.values())
    dev_clusters.seen.update(children)
    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(STOP_TIMEOUT) == 0, cluster.output()


def test_secure_dev_cluster_runs_keys_on_every_socket(dev_clusters, tmp_path):
    """``--secure``: keys are made next to the logs, the nodes serve CURVE only,
    the workers run with the dev key, and the state file hands it to the
    commands run in that directory (a submit runs on those workers); a command
    elsewhere, without a key, gets no answer."""
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    cluster = dev_clusters.start("--nodes", "2", "--secure", "--base-port", str(free_port()), "--cluster",
                                 "securedev", "--workers", "apps.basic:app", "--duration", "300",
                                 "--log-dir", str(tmp_path / "logs"), cwd=str(here))
    ready = cluster.wait_for_line("ready ", READY_TIMEOUT)
    info = dict(part.split("=", 1) for part in ready.split()[1:])
    assert info["keys"] == str(tmp_path / "logs" / "keys")
    state = json.loads((here / ".miyaq-dev.json").read_text())
    assert state["key"] == str(tmp_path / "logs" / "keys" / "dev.key_secret")
    assert state["server_key"] == str(tmp_path / "logs" / "keys" / "node.key")
    answer = run_miyaq("status", "--json", cwd=str(here))
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["security"]["keys"] is True
    added = run_miyaq("submit", "add", "--args", "[2, 3]", "--wait", "--wait-timeout", "30", cwd=str(here))
    assert added.returncode == 0 and added.stdout.strip().endswith("5"), (added.stdout, added.stderr)
    stranger = run_miyaq("status", "--connect", info["connect"].split(",")[0], cwd=str(elsewhere))
    assert stranger.returncode == 2 and "cannot reach any node" in stranger.stderr, stranger.stderr
    dev_clusters.seen.update(descendants(cluster.proc.pid))
    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(STOP_TIMEOUT) == 0, cluster.output()


def test_workers_that_exit_at_start_fail_the_dev_cluster(dev_clusters, tmp_path):
    """Fault: ``--workers`` names an app that does not import, so the
    workers exit at once. The start fails (exit 2) naming the workers and
    the end of their log, and no ``ready`` line is printed; it printed
    ``ready`` and ran (and exited 0) with no workers at all."""
    cluster = dev_clusters.start("--nodes", "1", "--workers", "no_such_module_here:app", "--duration", "60",
                                 "--base-port", str(free_port()), "--log-dir", str(tmp_path / "logs"),
                                 cwd=str(tmp_path))
    code = cluster.proc.wait(READY_TIMEOUT)
    output = cluster.output()
    assert code == 2, output
    assert "miyaq: error: the workers (no_such_module_here:app) exited with code 2 during start" in output
    assert "cannot import 'no_such_module_here'" in output
    assert not any(line.startswith("ready ") for line in output.splitlines()), output


def test_a_node_that_dies_while_the_cluster_runs_makes_the_exit_status_1(dev_clusters, tmp_path):
    """Fault: a node is killed (SIGKILL) while the dev cluster runs. The
    cluster says so, and once stopped exits 1 naming it, so a script that
    ran it knows the cluster did not stay whole; it exited 0."""
    cluster = dev_clusters.start("--nodes", "1", "--base-port", str(free_port()),
                                 "--log-dir", str(tmp_path / "logs"), cwd=str(tmp_path))
    cluster.wait_for_line("ready ", READY_TIMEOUT)
    node_line = next(line for line in cluster.lines if line.startswith("node n1 "))
    pid = int(re.search(r"\(pid (\d+),", node_line).group(1))
    os.kill(pid, signal.SIGKILL)
    cluster.wait_for_line("node n1 exited with code -9", 30)
    os.kill(cluster.proc.pid, signal.SIGTERM)
    code = cluster.proc.wait(STOP_TIMEOUT)
    output = cluster.output()
    assert code == 1, output
    assert "exit status 1: n1 exited while the cluster ran" in output


class PortThief:
    """Another process on a busy machine: it takes a port right after
    ``port_blocks`` has found it free, before the node that is handed it
    binds it. ``steals(port)`` says which checked ports it takes."""

    def __init__(self, steals: Callable[[int], bool]) -> None:
        self.steals = steals
        self.held: dict[int, socket.socket] = {}
        self._check = ports.port_free

    def port_free(self, port: int, host: str = ports.HOST) -> bool:
        free = self._check(port, host)
        if free and port not in self.held and self.steals(port):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(8)
            self.held[port] = listener
        return free

    def close(self) -> None:
        for listener in self.held.values():
            listener.close()


@pytest.fixture
def thief(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[int], bool]], PortThief]]:
    made: list[PortThief] = []

    def make(steals: Callable[[int], bool]) -> PortThief:
        made.append(PortThief(steals))
        monkeypatch.setattr(ports, "port_free", made[-1].port_free)
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_a_node_whose_port_is_taken_between_the_check_and_its_bind_starts_again_on_the_next_block(tmp_path, thief):
    """Fault: another process takes node n2's HTTP port after ``port_blocks``
    checked it free and before n2 binds it (a CI run with three pytest
    workers: ``node n3 exited with code 2 during start; ... port 20986 is in
    use (HTTP gateway on 127.0.0.1)``). The start failed; now n2 is started
    again on the next free block (n3 has the one after its own), a note says
    so, and the ring, the state file and the banner name the ports it runs on."""
    base = test_ports.free_port(span=60)
    stolen = base + 10 + ports.HTTP_OFFSET
    taker = thief(lambda port: port == stolen)
    cluster = DevCluster(3, base_port=base, cluster="stolen", log_dir=str(tmp_path / "logs"),
                         state_dir=str(tmp_path), ready_timeout=45.0, stop_timeout=20.0)
    try:
        assert cluster.start()
        assert list(taker.held) == [stolen]
        assert [(n.node_id, n.port, n.starts) for n in cluster.nodes] == \
            [("n1", base, 1), ("n2", base + 30, 2), ("n3", base + 20, 1)]
        assert cluster.notes == [
            f"note: node n2 could not bind port {stolen} (HTTP gateway): another process took it after it was "
            f"checked free; started it again on the next free block, tcp://127.0.0.1:{base + 30} "
            f"(HTTP {base + 38})"]
        admin = RingAdmin(cluster.zk_hosts, "stolen", connect_timeout=10.0, timeout=10.0)
        try:
            members = admin.status()["members"]
        finally:
            admin.close()
        assert {k: (m["service"], m["in_ring"]) for k, m in members.items()} == {
            "n1": (f"tcp://127.0.0.1:{base}", True), "n2": (f"tcp://127.0.0.1:{base + 30}", True),
            "n3": (f"tcp://127.0.0.1:{base + 20}", True)}
        state = json.loads((tmp_path / STATE_FILE).read_text())
        assert state["connect"] == [f"tcp://127.0.0.1:{p}" for p in (base, base + 30, base + 20)]
        assert state["http"] == [f"http://127.0.0.1:{p}" for p in (base + 8, base + 38, base + 28)]
        assert [n["pid"] for n in state["nodes"]] == [n.proc.pid for n in cluster.nodes]
        lines = banner(cluster)
        assert cluster.notes[0] in lines
        assert not any("was in use (a node already running?" in line for line in lines), lines
        assert lines[-1].startswith(f"ready zk={cluster.zk_hosts} cluster=stolen connect=tcp://127.0.0.1:{base},"
                                    f"tcp://127.0.0.1:{base + 30},tcp://127.0.0.1:{base + 20} ")
        first_run = (tmp_path / "logs" / "n2.log").read_text()
        assert f"miyaq: error: port {stolen} is in use (HTTP gateway on 127.0.0.1)" in first_run
    finally:
        cluster.stop()
    assert all(not n.proc.alive() for n in cluster.nodes)


def test_a_node_whose_port_is_taken_at_every_start_fails_the_start_after_three(tmp_path, thief):
    """Fault: another process takes the node's HTTP port after each check,
    at every block it is given. The node is started ``MAX_STARTS`` (3) times,
    each on the next block, then the start fails as it did at once before:
    the node exited, with the end of its log, which names the port."""
    base = test_ports.free_port(span=60)
    taker = thief(lambda port: port % ports.PORT_STEP == (base + ports.HTTP_OFFSET) % ports.PORT_STEP)
    cluster = DevCluster(1, base_port=base, cluster="thief", log_dir=str(tmp_path / "logs"),
                         ready_timeout=45.0, stop_timeout=20.0)
    try:
        with pytest.raises(MiyaqError) as failed:
            cluster.start()
    finally:
        cluster.stop()
    last = base + 10 * (MAX_STARTS - 1)
    assert sorted(taker.held) == [base + 8 + 10 * i for i in range(MAX_STARTS)]
    assert [(n.port, n.starts) for n in cluster.nodes] == [(last, MAX_STARTS)]
    assert failed.value.message.startswith(
        f"node n1 exited with code 2 during start (started {MAX_STARTS} times, each on another block); its log")
    assert f"miyaq: error: port {last + 8} is in use (HTTP gateway on 127.0.0.1)" in failed.value.message
    assert len(cluster.notes) == MAX_STARTS - 1


def _exited(tmp_path: Path, code: int | None, *runs: str) -> DevNode:
    """A node on port 7450 whose process exited with ``code``, its log holding
    ``runs`` (the last one its last run's)."""
    log = tmp_path / "n1.log"
    log.write_text("".join(runs[:-1]))
    start = log.stat().st_size
    log.write_text("".join(runs))
    return DevNode("n1", 7450, SimpleNamespace(exit_code=code, log_path=str(log)), log_start=start)  # type: ignore[arg-type]


IN_USE = ("miyaq: error: port {} is in use (HTTP gateway on 127.0.0.1): another process listens there; pass "
          "--http-port N, or --http-port 0 to disable it\n")


def test_only_a_port_of_its_own_in_use_counts_as_a_taken_port(tmp_path):
    """Bad input to the retry: of the ways a node exits during start, only
    its own message for one of its ports in use (exit 2, last line) is
    retried on another block; a data dir it cannot use, ZooKeeper out of
    reach, a traceback that mentions the words, another port, an earlier
    run's line are the node's own errors and fail the start as before."""
    assert taken_port(_exited(tmp_path, 2, "starting\n", IN_USE.format(7458))) == TakenPort(7458, "HTTP gateway")
    service = "miyaq: error: port 7450 is in use (service port on 127.0.0.1): another process listens there; x\n"
    assert taken_port(_exited(tmp_path, 2, service)) == TakenPort(7450, "service port")
    assert taken_port(_exited(tmp_path, 2, IN_USE.format(8088))) is None            # not one of its ports
    assert taken_port(_exited(tmp_path, 1, IN_USE.format(7458))) is None            # not a ConfigError exit
    assert taken_port(_exited(tmp_path, None, IN_USE.format(7458))) is None         # still running
    assert taken_port(_exited(tmp_path, 2, "miyaq: error: cannot use data dir /x: Permission denied\n")) is None
    assert taken_port(_exited(tmp_path, 2, IN_USE.format(7458), "miyaq: error: cannot reach ZooKeeper\n")) is None
    assert taken_port(_exited(tmp_path, 2, IN_USE.format(7458) + "Traceback (most recent call last):\n")) is None
    assert taken_port(_exited(tmp_path, 2, IN_USE.format(7458), "")) is None       # an earlier run's line


def test_the_block_of_a_node_started_again_is_above_its_own_and_clear_of_the_others():
    """Bad input to the retry: the next block must share no port with the
    other nodes' blocks (n1's next block above base is n2's, then n3's), and
    there is none past 65535 (then the node's own error stands)."""
    base = test_ports.free_port(span=60)
    assert ports.next_block(base, [base + 10, base + 20]) == base + 30
    assert ports.next_block(base + 10, [base, base + 30]) == base + 20
    assert ports.next_block(65520, []) is None
