"""Faults of the ring commands (``miyaq ring``/``join``/``leave``/``ring weight``)
and of what they read, each simulated against a real ZooKeeper where it needs one.

No timing assertions: waits are bounded polls; every coordinator, client,
server and process a test starts is stopped at its end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from kazoo.security import OPEN_ACL_UNSAFE

from miyaq.cli.main import main
from miyaq.cluster.ring_admin import RingAdmin
from miyaq.cluster.zk_auth import ZkAuth
from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
from miyaq.cluster.zk_layout import ROOT, Layout, RingRecord
from miyaq.devstate import STATE_FILE, read_state
from miyaq.errors import ConfigError, MiyaqError, Timeout
from miyaq.testing.zookeeper import ZooKeeperServer, free_port
from zk_fixtures import DEADLINE, member, wait_until

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
AUTH = ZkAuth.parse("miyaq:correct-horse")


@pytest.fixture
def make(make_coordinator: Callable[..., ZooKeeperCoordinator]) -> Callable[..., ZooKeeperCoordinator]:
    """Start coordinators of this test's cluster; all stopped at teardown."""
    return make_coordinator


def published(zk_client, cluster: str) -> RingRecord:
    return RingRecord.from_bytes(zk_client.get(Layout(cluster).ring)[0])


def cli(*args: str, cwd: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``miyaq ARGS`` in a subprocess (bounded by ``timeout``)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "miyaq.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


# -- 1: a weight that would make the ring too large, for a node out of it --------------


def test_a_weight_too_large_for_a_node_out_of_the_ring_is_refused(make, zk_server, zk_cluster_name,
                                                                 zk_client):
    """Fault: `ring weight n3 1000` for a node that left, then `join n3`. Before
    the fix the weight was stored, the join too, and the leader then refused
    every ring: no join, leave or weight was published any more."""
    a = make("a")
    make("b", auto_join=False)
    wait_until(lambda: a.is_leader and "b" in a.registered(), "a to lead and b to register")
    desired = Layout(zk_cluster_name).desired
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE) as admin:
        with pytest.raises(ConfigError, match="cannot set the weight of b to 1000: a ring of .* points"):
            admin.set_weight("b", 1000)
        with pytest.raises(ConfigError, match="points"):
            admin.set_weight("nobody", 1000)      # not even registered: it joins when it starts
        assert b'"b"' not in zk_client.get(desired)[0]
        # A weight stored before the fix: the join is what is refused now.
        zk_client.set(desired, json.dumps({"nodes": {"a": {"join": True, "weight": None},
                                                     "b": {"join": False, "weight": 1000}}}).encode())
        with pytest.raises(ConfigError, match="cannot join b: a ring of .* points"):
            admin.join("b")
        assert json.loads(zk_client.get(desired)[0])["nodes"]["b"]["join"] is False
        assert "b joined" not in admin.set_weight("b", 2) and "b joined" in admin.join("b")


def test_the_coordinators_own_join_and_weight_refuse_a_ring_too_large(make, zk_server, zk_cluster_name,
                                                                     zk_client):
    """Fault: the same weight of 1000 for a node out of the ring, then its
    join, through the Python API of a running node's coordinator
    (``ZooKeeperCoordinator.set_weight``/``join``) instead of the CLI. Before,
    these stored what the CLI refuses, and the leader then published no
    ring again. Now each is a ConfigError naming the change, and nothing is stored."""
    a = make("a")
    make("b", auto_join=False)
    wait_until(lambda: a.is_leader and "b" in a.registered(), "a to lead and b to register")
    desired = Layout(zk_cluster_name).desired
    before = zk_client.get(desired)[0]
    with pytest.raises(ConfigError, match="cannot set the weight of b to 1000: a ring of .* points"):
        a.set_weight("b", 1000)
    assert zk_client.get(desired)[0] == before
    a.set_weight("b", 2)
    a.join("b")
    wait_until(lambda: "b" in a.view.members and a.view.members["b"].weight == 2, "b in the ring at weight 2")
    zk_client.set(desired, json.dumps({"nodes": {"a": {"join": True, "weight": None},
                                                 "c": {"join": False, "weight": 1000}}}).encode())
    with pytest.raises(ConfigError, match="cannot join c: a ring of .* points"):
        a.join("c")
    assert json.loads(zk_client.get(desired)[0])["nodes"]["c"]["join"] is False


def test_a_desired_ring_the_leader_cannot_build_is_logged_once_not_at_every_try(make, zk_cluster_name,
                                                                               zk_client, caplog):
    """Fault: a desired state no ring can be built from (left by an older
    version). The leader tries again every reconcile interval (1 s here)
    and said so at ERROR every time, for as long as it lasted; now once,
    and once more when it can publish again."""
    a = make("a")
    make("b", auto_join=False)
    wait_until(lambda: a.is_leader and "b" in a.registered(), "a to lead and b to register")
    leader = a._leader
    desired = Layout(zk_cluster_name).desired
    with caplog.at_level("INFO", logger="miyaq.cluster.zk_leader"):
        zk_client.set(desired, json.dumps({"nodes": {"a": {"join": True, "weight": None},
                                                     "b": {"join": True, "weight": 1000}}}).encode())
        wait_until(lambda: leader.refusals >= 3, "three reconciles refused")
        zk_client.set(desired, json.dumps({"nodes": {"a": {"join": True, "weight": 2}}}).encode())
        wait_until(lambda: a.view.members["a"].weight == 2, "the ring published again")
    lines = [r.getMessage() for r in caplog.records if r.name == "miyaq.cluster.zk_leader"]
    assert len([m for m in lines if "cannot reconcile the ring" in m]) == 1, lines
    assert any("can be published again" in m for m in lines), lines


def test_the_timeout_says_why_the_leader_did_not_publish(make, zk_server, zk_cluster_name, zk_client):
    """Fault: a desired state the leader cannot publish (left by an older
    version). The change times out saying why, and that it stays stored;
    before the fix it asked whether any node was running."""
    a = make("a")
    make("b", auto_join=False)
    wait_until(lambda: a.is_leader and "b" in a.registered(), "a to lead and b to register")
    desired = Layout(zk_cluster_name).desired
    zk_client.set(desired, json.dumps({"nodes": {"a": {"join": True, "weight": None},
                                                 "b": {"join": True, "weight": 1000}}}).encode())
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=3.0) as admin:
        with pytest.raises(Timeout) as info:
            admin.leave("a")
    message = info.value.message
    assert "the leader cannot publish the ring it asks for: a ring of" in message
    assert f"the request stays stored in {desired}" in message


# -- 2: a corrupt desired znode ------------------------------------------------------------


def test_a_corrupt_desired_znode_is_shown_and_rebuilt_from_the_ring(make, zk_server, zk_cluster_name,
                                                                   zk_client):
    """Fault: `desired` cut short (a truncated write, a hand edit). Before the
    fix even `miyaq ring` failed, and the next node to start rewrote it as
    itself only: the leader took every other node out of the ring."""
    a = make("a")
    make("b")
    wait_until(lambda: set(published(zk_client, zk_cluster_name).members) == {"a", "b"} and a.is_leader,
               "a ring of a and b")
    admin = RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE)
    admin.set_weight("b", 2)
    desired = Layout(zk_cluster_name).desired
    zk_client.set(desired, zk_client.get(desired)[0][:20])

    status = admin.status()
    admin.close()
    assert {k for k, m in status["members"].items() if m["in_ring"]} == {"a", "b"}
    assert desired in status["desired_error"] and "rebuilds it" in status["desired_error"]
    out = cli("ring", "--zk", zk_server.hosts, "--cluster", zk_cluster_name)
    assert out.returncode == 0, out.stderr
    assert f"warning: the desired znode {desired} is unreadable" in out.stdout and "\nb " in out.stdout

    make("c")        # auto-joins: rewrites desired
    intents = json.loads(zk_client.get(desired)[0])["nodes"]
    assert intents == {"a": {"join": True, "weight": 1.0}, "b": {"join": True, "weight": 2.0},
                       "c": {"join": True, "weight": None}}
    wait_until(lambda: set(published(zk_client, zk_cluster_name).members) == {"a", "b", "c"},
               "c to join a ring that keeps a and b")
    assert published(zk_client, zk_cluster_name).weights["b"] == 2.0


def test_a_corrupt_desired_znode_without_a_ring_is_not_rewritten_empty(zk_server, zk_cluster_name, zk_client):
    """Fault: `desired` unreadable and no ring published: nothing to rebuild
    from, so a change is refused (saying so) and the znode is left alone."""
    desired = Layout(zk_cluster_name).desired
    zk_client.create(desired, b'{"nodes": {"a"', makepath=True)
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE) as admin:
        with pytest.raises(ConfigError, match="no ring is published to rebuild it from"):
            admin.join("x")
    assert zk_client.get(desired)[0] == b'{"nodes": {"a"'


# -- 3: the read-only `miyaq ring` creates nothing; /miyaq gets the root ACL ---------


def test_showing_the_ring_creates_nothing_and_a_join_makes_root_shared():
    """Fault: `miyaq ring --zk-auth` on a fresh ensemble. Before the fix it
    created /miyaq (and the election path) with a digest-only ACL: no other
    cluster could be created there."""
    server = ZooKeeperServer()
    try:
        server.start()
        from kazoo.client import KazooClient
        look = KazooClient(hosts=server.hosts)
        look.start(timeout=10)
        try:
            with RingAdmin(server.hosts, "c1", auth=AUTH, timeout=DEADLINE) as admin:
                status = admin.status()
                assert status["contenders"] == [] and status["members"] == {}
                assert look.exists(ROOT) is None
                assert "not registered" in admin.join("n1")
            acl, _ = look.get_acls(ROOT)
            world = [(a.perms, a.id.id) for a in acl if a.id.scheme == "world"]
            assert world == [(AUTH.root_acl[0].perms, "anyone")]
            look.create(f"{ROOT}/another-cluster", b"", acl=OPEN_ACL_UNSAFE)   # others may add a cluster
        finally:
            look.stop()
            look.close()
    finally:
        server.close()


def test_contenders_are_read_without_creating_the_election_path(make, zk_server, zk_cluster_name):
    make("a")
    make("b")
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE) as admin:
        wait_until(lambda: sorted(admin.status()["contenders"]) == ["a", "b"], "both contenders")


# -- 4: a malformed ZooKeeper connection string ----------------------------------------


BAD_HOSTS = ["localhost:abc", "127.0.0.1:99999", "[::1", ",", "127.0.0.1:-1", "zk1:21810000"]


@pytest.mark.parametrize("hosts", BAD_HOSTS)
def test_malformed_zookeeper_hosts_are_a_config_error(hosts, zk_supervisor):
    """Fault: a typo in --zk / MIYAQ_ZK. Before the fix kazoo's ValueError was a traceback."""
    with pytest.raises(ConfigError, match="invalid ZooKeeper hosts"):
        RingAdmin(hosts, "c1").status()
    with pytest.raises(ConfigError, match="invalid ZooKeeper hosts"):
        ZooKeeperCoordinator(hosts, "c1", member("a"), supervisor=zk_supervisor)


def test_malformed_zookeeper_hosts_exit_2_from_the_cli(capsys, monkeypatch):
    assert main(["ring", "--zk", "localhost:abc", "--cluster", "c1", "--timeout", "2"]) == 2
    assert "miyaq: error: invalid ZooKeeper hosts 'localhost:abc'" in capsys.readouterr().err
    monkeypatch.setenv("MIYAQ_ZK", "zk1:21810000")
    assert main(["leave", "n1", "--cluster", "c1"]) == 2
    assert "invalid ZooKeeper hosts 'zk1:21810000'" in capsys.readouterr().err


def test_a_node_started_with_malformed_zookeeper_hosts_exits_2(tmp_path):
    out = cli("node", "--zk", "localhost:abc", "--node-id", "n1", "--port", str(free_port()),
              "--peer-port", str(free_port()), "--pub-port", str(free_port()), "--http-port", "0",
              cwd=str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert "invalid ZooKeeper hosts 'localhost:abc'" in out.stderr and "Traceback" not in out.stderr


# -- 8: the dev-cluster state file -----------------------------------------------------


def test_ring_commands_given_zk_and_cluster_do_not_read_the_state_file(tmp_path):
    """Fault: a FIFO named .miyaq-dev.json. Before the fix every ring command
    blocked on it for good, even with --zk and --cluster."""
    os.mkfifo(tmp_path / STATE_FILE)
    out = cli("ring", "--zk", f"127.0.0.1:{free_port()}", "--cluster", "x", "--timeout", "1",
              cwd=str(tmp_path), timeout=30)
    assert out.returncode == 2 and "cannot" in out.stderr and "Traceback" not in out.stderr


def test_a_state_file_that_is_a_fifo_is_ignored(tmp_path):
    os.mkfifo(tmp_path / STATE_FILE)
    code = f"from miyaq.devstate import read_state; print(read_state({str(tmp_path)!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.strip() == "None", out.stderr


@pytest.mark.parametrize("pid", [99999999999999999999, 2**31, 0, -1])
def test_a_state_file_with_a_nonsense_pid_is_stale(tmp_path, pid):
    """Fault: a pid past C long (OverflowError traceback), or 0 / -1 (kill()
    signals a group and succeeds: a stale file counted as a running cluster)."""
    (tmp_path / STATE_FILE).write_text(json.dumps({"pid": pid, "zk": "127.0.0.1:1", "cluster": "x",
                                                   "connect": ["tcp://127.0.0.1:1"], "http": []}))
    try:
        assert read_state(tmp_path) is None
    except (MiyaqError, OverflowError) as exc:       # pragma: no cover - the fault
        pytest.fail(f"read_state raised {exc!r}")
