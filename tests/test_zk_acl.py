"""ZooKeeper ACLs: with --zk-auth a cluster's znodes open only to its credentials.

Against the real server: a stranger (no credentials, or other ones) can
neither read nor write the ring, the desired state, the members or the
leader's records; a client with the credentials can; an open cluster is
protected when its nodes restart with credentials; a node or a CLI command
without them gets a clear error. A cluster of node processes runs with them.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE

from cluster_harness import Cluster
from miyaq.cluster.periodic_store import ZkPeriodicStore
from miyaq.cluster.ring_admin import RingAdmin
from miyaq.cluster.zk_auth import ZkAuth, same_acl
from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
from miyaq.cluster.zk_layout import ROOT, Layout, RingRecord
from miyaq.errors import ConfigError, Forbidden
from miyaq.gateway.tokens import TokenTable
from miyaq.testing.harness import NodeProc, free_port, wait_for
from miyaq.testing.zookeeper import ZooKeeperServer
from zk_fixtures import DEADLINE, member, wait_until

pytestmark = pytest.mark.timeout(120)

AUTH = ZkAuth.parse("miyaq:correct-horse")
WRONG = ZkAuth.parse("miyaq:battery-staple")


# -- the credentials themselves ------------------------------------------------------


def test_credentials_parse_and_never_show_the_password(tmp_path):
    auth = ZkAuth.parse("ops:pa:ss\n")
    assert (auth.user, auth.password) == ("ops", "pa:ss")
    assert "pa:ss" not in repr(auth) and auth.auth_data == [("digest", "ops:pa:ss")]
    assert auth.acl[0].id.scheme == "digest" and auth.acl[0].id.id.startswith("ops:")
    assert ZkAuth.from_options(None, None) is None and ZkAuth.from_options("", "") is None
    path = tmp_path / "zk-auth"
    path.write_text("ops:from-file\n")
    path.chmod(0o600)
    assert ZkAuth.from_options(None, str(path)) == ZkAuth("ops", "from-file")


@pytest.mark.parametrize("text", ["", "nopassword", ":secret", "user:", "us\ner:x", "user:two\nlines"])
def test_bad_credentials_are_refused_without_echoing_them(text):
    """Bad input: credentials ZooKeeper's digest cannot carry."""
    with pytest.raises(ConfigError) as info:
        ZkAuth.parse(text)
    assert "user:password" in info.value.message
    if text.partition(":")[2]:
        assert text.partition(":")[2] not in info.value.message


def test_credentials_given_twice_or_unreadable_are_refused(tmp_path):
    """Bad input: both --zk-auth and --zk-auth-file; a file that cannot be read."""
    with pytest.raises(ConfigError, match="not both"):
        ZkAuth.from_options("a:b", str(tmp_path / "f"))
    with pytest.raises(ConfigError, match="cannot read the ZooKeeper credentials") as info:
        ZkAuth.from_options(None, str(tmp_path / "missing"))
    # Said what to do: the deploy/systemd environment file names the file,
    # and an operator who has not made it yet met only "No such file or
    # directory" (the sre audit).
    assert "MIYAQ_ZK_AUTH_FILE" in info.value.message and "user:password" in info.value.message


def test_a_credentials_file_that_is_no_plain_file_or_too_long_is_refused_not_cut(tmp_path):
    """Bad input: --zk-auth-file names a FIFO (its read blocked the start for
    good), or a file over 4,096 bytes (cut there before 2026-12-05: a wrong
    password, found only as a Forbidden later). Both are refused, naming the
    file. A UTF-8 byte-order mark is not part of the user name."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        ZkAuth.from_file(str(fifo))
    long = tmp_path / "long"
    long.write_text("ops:" + "x" * 5000)
    with pytest.raises(ConfigError, match="larger than 4096 bytes"):
        ZkAuth.from_file(str(long))
    bom = tmp_path / "bom"
    bom.write_bytes("\ufeffops:secret\n".encode("utf-8"))
    bom.chmod(0o600)
    assert ZkAuth.from_file(str(bom)).user == "ops"


def test_a_credentials_file_others_may_read_is_warned_about(tmp_path, caplog):
    path = tmp_path / "zk-auth"
    path.write_text("ops:secret")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="miyaq.cluster.zk_auth"):
        assert ZkAuth.from_file(str(path)).user == "ops"
    assert "chmod 600" in caplog.text and "secret" not in caplog.text


@pytest.mark.parametrize("mode,group,warned", [
    (0o440, "own", False),      # a Kubernetes secret: 0440 with the pod's fsGroup, the process's own group
    (0o640, "other", True),     # a group bit for a group this process is not in
    (0o604, "own", True),       # a bit for others
    (0o600, "other", False),
])
def test_only_a_file_others_than_this_process_may_read_is_warned_about(tmp_path, caplog, mode, group, warned):
    """The ZooKeeper credentials and the HTTP tokens file: a group bit for
    the process's own group exposes nothing (the deploy manifest's read-only
    Secret, 0440 with fsGroup, was warned about with a `chmod 600` it cannot
    take); a group bit for another group, or any bit for others, is."""
    gid = os.getegid() if group == "own" else max({os.getegid(), *os.getgroups()}) + 4242
    for name, text, read in (("zk-auth", "ops:secret", ZkAuth.from_file),
                             ("tokens", "t0k3n-" + "x" * 20 + " admin\n", lambda p: TokenTable("", p))):
        path = tmp_path / name
        path.write_text(text)
        os.chown(path, -1, gid)
        path.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            read(str(path))
        assert ("chmod 600" in caplog.text) is warned, (name, caplog.text)


# -- against the real server ------------------------------------------------------------


@pytest.fixture
def clients(zk_server: ZooKeeperServer, zk_clients: Callable[..., KazooClient]) -> Callable[..., KazooClient]:
    """Plain kazoo clients of the shared server, with or without credentials."""
    return lambda auth=None: zk_clients(zk_server.hosts, auth)


@pytest.fixture
def coordinators(make_coordinator: Callable[..., ZooKeeperCoordinator]) -> Callable[..., ZooKeeperCoordinator]:
    """Coordinators of this test's cluster, with the cluster's credentials
    unless ``auth`` says otherwise (``make_coordinator``: stopped at teardown)."""
    return lambda node_id, auth=AUTH: make_coordinator(node_id, auth=auth)


def test_a_stranger_can_neither_read_nor_write_a_protected_cluster(coordinators, clients, zk_cluster_name):
    """Fault: someone who can reach ZooKeeper, without the cluster's credentials (none, or others),
    tries to read or rewrite the ring, the desired state, a member and the leader's records."""
    layout = Layout(zk_cluster_name)
    a = coordinators("a")
    a.wait_for_view(lambda v: "a" in v.members and v.leader == "a", DEADLINE)
    ZkPeriodicStore(a.client, zk_cluster_name, "test").save_last("nightly", 1000, a.view.epoch, "a")
    ticks = f"{layout.base}/periodic/nightly"
    paths = [layout.base, layout.ring, layout.desired, layout.member("a"), layout.members, ticks]
    for stranger in (clients(), clients(WRONG)):
        for path in paths:
            with pytest.raises(NoAuthError):
                stranger.get(path)
            with pytest.raises(NoAuthError):
                stranger.set(path, b'{"epoch": 999}')
            with pytest.raises(NoAuthError):
                stranger.set_acls(path, OPEN_ACL_UNSAFE)
        with pytest.raises(NoAuthError):
            stranger.create(layout.member("intruder"), b"{}", ephemeral=True)
        with pytest.raises(NoAuthError):
            stranger.delete(layout.member("a"))
        with pytest.raises(NoAuthError):
            stranger.get_children(layout.election)
        assert stranger.exists(layout.ring) is not None      # existence is not protected by ZooKeeper

    owner = clients(AUTH)
    record = RingRecord.from_bytes(owner.get(layout.ring)[0])
    assert record.leader == "a"
    for path in paths:
        assert same_acl(owner.get_acls(path)[0], AUTH.acl), path
    owner.set(layout.desired, owner.get(layout.desired)[0])   # the credentials may write


def test_miyaq_root_made_with_credentials_stays_open_to_other_clusters(zk_server, zk_cluster_name, clients,
                                                                       zk_supervisor):
    """/miyaq is shared: made by a node with credentials, anyone may read it and add a cluster,
    nobody else may change its ACL. (In a chroot of its own: the suite's /miyaq exists already.)"""
    chroot = f"/{zk_cluster_name}"
    clients().create(chroot, b"")
    c = ZooKeeperCoordinator(zk_server.hosts + chroot, "shared", member("a"), supervisor=zk_supervisor,
                             auth=AUTH, session_timeout=2.0, connect_timeout=5.0)
    c.start()
    try:
        owner, other = clients(AUTH), clients()
        assert same_acl(owner.get_acls(chroot + ROOT)[0], AUTH.root_acl)
        assert other.get_children(chroot + ROOT) == ["shared"]
        other.create(f"{chroot}{ROOT}/another-cluster", b"")
        with pytest.raises(NoAuthError):
            other.set_acls(chroot + ROOT, OPEN_ACL_UNSAFE)
        with pytest.raises(NoAuthError):
            other.delete(f"{chroot}{ROOT}/shared/ring")
    finally:
        c.stop()


def test_ring_admin_needs_the_credentials(coordinators, zk_server, zk_cluster_name):
    """Fault: an operator runs ring commands without the credentials, or with wrong ones."""
    a = coordinators("a")
    a.wait_for_view(lambda v: "a" in v.members, DEADLINE)
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=5.0) as admin:
        with pytest.raises(Forbidden, match="give the cluster's credentials with --zk-auth"):
            admin.status()
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=5.0, auth=WRONG) as admin:
        with pytest.raises(Forbidden, match="refused these credentials"):
            admin.leave("a")
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE, auth=AUTH) as admin:
        assert admin.status()["leader"] == "a"
        assert "a left the ring" in admin.leave("a")
        assert "a joined the ring" in admin.join("a")


def test_a_node_without_the_credentials_cannot_join(coordinators, zk_server, zk_cluster_name, zk_supervisor):
    """Fault: a node of a protected cluster is started without credentials, or with wrong ones."""
    coordinators("a").wait_for_view(lambda v: "a" in v.members, DEADLINE)
    for auth, message in ((None, "give the cluster's credentials"), (WRONG, "refused these credentials")):
        c = ZooKeeperCoordinator(zk_server.hosts, zk_cluster_name, member("b"), supervisor=zk_supervisor,
                                 auth=auth, session_timeout=2.0, connect_timeout=5.0)
        with pytest.raises(Forbidden, match=message):
            c.start()
        c.stop()
        assert [name for name in zk_supervisor.live() if name.startswith("zk-b:")] == []


def test_an_open_cluster_is_protected_when_its_nodes_get_credentials(coordinators, clients, zk_cluster_name):
    """An existing cluster made without credentials: the first node started with them puts
    their ACL on every znode, other sessions' ephemeral members included."""
    layout = Layout(zk_cluster_name)
    a = coordinators("a", auth=None)
    a.wait_for_view(lambda v: "a" in v.members, DEADLINE)
    stranger = clients()
    stranger.set(layout.desired, stranger.get(layout.desired)[0])        # open: anyone may write

    b = coordinators("b")                  # registered once start returns
    owner = clients(AUTH)
    for path in (layout.base, layout.ring, layout.desired, layout.members, layout.member("a"),
                 layout.member("b"), layout.election):
        assert same_acl(owner.get_acls(path)[0], AUTH.acl), path
    with pytest.raises(NoAuthError):
        stranger.set(layout.desired, b"{}")
    wait_until(lambda: not a.is_leader, "the open node to lose the leadership it cannot exercise")
    a.stop()                               # the open node goes; b (with credentials) leads
    b.wait_for_view(lambda v: set(v.members) == {"b"} and v.leader == "b", DEADLINE)


# -- a cluster of node processes with credentials ----------------------------------------------


def miyaq_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_ZK_AUTH")}
    return subprocess.run([sys.executable, "-m", "miyaq.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, **(env or {})})


def test_a_cluster_with_credentials_runs_and_keeps_strangers_out(procs, zk_server, zk_cluster_name, client_for,
                                                                 tmp_path):
    """A cluster whose nodes get --zk-auth by environment serves tasks; the ring commands need the
    credentials (flag, file or environment); a node started without them exits with a clear error."""
    env = {"MIYAQ_ZK_AUTH": "miyaq:correct-horse"}
    cluster = Cluster(procs, zk_server.hosts, zk_cluster_name, client_for)
    cluster.start(2, "--replicas", "2", env=env)
    procs.worker("apps.basic:app", cluster.nodes["n0"].endpoint, 2)
    assert cluster.client("n1").call("add", [20, 22], timeout=30) == 42

    where = ["--zk", zk_server.hosts, "--cluster", zk_cluster_name]
    refused = miyaq_cli("ring", *where)
    assert refused.returncode == 2 and "--zk-auth" in refused.stderr and "NoAuth" in refused.stderr
    secret = tmp_path / "zk-auth"
    secret.write_text("miyaq:correct-horse\n")
    secret.chmod(0o600)
    shown = miyaq_cli("ring", *where, "--zk-auth-file", str(secret), "--json")
    assert shown.returncode == 0, shown.stderr
    changed = miyaq_cli("ring", "weight", "n1", "2", *where, env=env)
    assert changed.returncode == 0 and "weight of n1: 1 -> 2" in changed.stdout, changed.stderr

    port = free_port()
    intruder = NodeProc(port=port, extra=["--zk", zk_server.hosts, "--cluster", zk_cluster_name,
                                          "--node-id", "intruder", "--zk-auth", "miyaq:guess"],
                        log_dir=str(tmp_path)).start()
    try:
        wait_for(lambda: not intruder.alive(), timeout=30, what="the node without the credentials to exit")
        assert "refused these credentials" in intruder.log_tail()
    finally:
        intruder.kill()
    assert "intruder" not in cluster.ring("n0")["members"]
