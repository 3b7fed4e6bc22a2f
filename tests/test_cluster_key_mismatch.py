"""A node of another cluster key joins no ring (docs/security.md, "One cluster
key"), against the session's real ZooKeeper.

Before 2026-12-06 a node started with another key directory (``miyaq keys
init`` run on a new machine instead of copying the cluster's) registered and
auto-joined the ring although no peer handshake with it could complete: a
quarter of the keys were then held by a node nobody could reach, and most
submits failed. Each member now publishes its key's fingerprint in its
member znode and a starting node compares it with the live members'
(:mod:`miyaq.cluster.zk_keys`).
"""
from __future__ import annotations

import os
import shutil

import pytest
from kazoo.exceptions import NoNodeError

from cluster_harness import Cluster
from miyaq.cluster.zk_keys import check_after_register
from miyaq.cluster.zk_layout import NO_CLUSTER_KEY, Layout, PublishedKey, dump_json, other_cluster_keys
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.errors import ConfigError
from miyaq.security import certs
from miyaq.security.curve import key_fingerprint
from miyaq.testing.harness import Proc, free_port, wait_for
from secure_harness import Keys, make_keys
from zk_fixtures import member, wait_until

pytestmark = pytest.mark.timeout(180)


def fingerprint(keys: Keys) -> str:
    return key_fingerprint(certs.read(keys.server_key).public)


@pytest.fixture
def keys(tmp_path) -> Keys:
    return make_keys(os.path.join(str(tmp_path), "keys"), ("ops", "admin"), ("prod", "producer"))


@pytest.fixture
def other_keys(tmp_path, keys) -> Keys:
    """Another cluster key (``miyaq keys init`` on a new machine) with the
    same authorized keys copied over: the easy mistake."""
    other = make_keys(os.path.join(str(tmp_path), "other-keys"))
    shutil.rmtree(os.path.join(other.dir, "authorized"))
    shutil.copytree(os.path.join(keys.dir, "authorized"), os.path.join(other.dir, "authorized"))
    return other


@pytest.fixture
def cluster(procs, zk_server, zk_cluster_name, client_for, keys, monkeypatch):
    monkeypatch.setenv("MIYAQ_KEY", keys.secret("ops"))
    monkeypatch.setenv("MIYAQ_SERVER_KEY", keys.server_key)
    return Cluster(procs, zk_server.hosts, zk_cluster_name, client_for)


def members_in_zookeeper(zk_client, cluster: str) -> set[str]:
    """The member znodes' names. Through kazoo's retry: the test's client may
    have dropped its connection (not its session) while the test waited
    without yielding to it for longer than its read timeout (CI, 2026-12-06:
    ConnectionLoss on a loaded machine)."""
    try:
        return set(zk_client.retry(zk_client.get_children, Layout(cluster).members))
    except NoNodeError:
        return set()


def test_node_of_another_cluster_key_refuses_to_start_and_stays_out_of_the_ring(
        cluster, zk_server, zk_cluster_name, zk_client, keys, other_keys, tmp_path):
    """Fault: a third node is started with another cluster key (its own
    ``miyaq keys init``, the cluster's authorized keys copied) next to two
    nodes of one key. It must refuse to start -- exit status 2, one line
    naming both fingerprints and what to do -- with nothing registered in
    ZooKeeper and nothing asked of the ring. Before the fix it registered,
    auto-joined the ring and answered /readyz ready."""
    cluster.start(2, "--replicas", "2", "--keys", keys.dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    stranger = Proc(["node", "--port", str(free_port()), "--http-port", "0", "--node-id", "n2",
                     "--zk", zk_server.hosts, "--cluster", zk_cluster_name, "--zk-session-timeout", "2",
                     "--replicas", "2", "--heartbeat", "0.25", "--keys", other_keys.dir, "--shutdown-grace", "1"],
                    name="stranger", env=env, log_dir=str(tmp_path))
    # Proc adds os.environ back: the MIYAQ_KEY of the test's clients is harmless to a node.
    stranger.start()
    try:
        wait_for(lambda: not stranger.alive() or "n2" in cluster.ring("n0")["members"], timeout=60,
                 what="the node of another key to exit or join the ring")
        assert not stranger.alive(), f"the node of another cluster key joined the ring:\n{stranger.log_tail()}"
        assert stranger.exit_code == 2, stranger.log_tail()
        errors = [line for line in stranger.log_tail(400).splitlines() if line.startswith("miyaq: error: ")]
        assert len(errors) == 1, stranger.log_tail()
        line = errors[0]
        assert f"n2 cannot join cluster {zk_cluster_name}" in line
        assert f"fingerprint {fingerprint(other_keys)}" in line and f"fingerprint {fingerprint(keys)}" in line
        assert "n0, n1" in line and "copy the cluster's key directory" in line
        assert "stop every node first" in line
        secret = certs.read(os.path.join(other_keys.dir, "node.key_secret")).secret
        assert secret is not None and secret.decode() not in stranger.log_tail(400)
    finally:
        stranger.kill()
    assert members_in_zookeeper(zk_client, zk_cluster_name) == {"n0", "n1"}
    desired, _ = zk_client.retry(zk_client.get, Layout(zk_cluster_name).desired)
    assert b'"n2"' not in desired, desired
    assert set(cluster.ring("n0")["members"]) == {"n0", "n1"}
    cluster.client("n0").submit("add", [1, 2], wait=True)


def test_full_restart_with_a_new_cluster_key_starts(cluster, zk_client, zk_cluster_name, keys, other_keys,
                                                    monkeypatch):
    """Fault (a guard of the documented offline rotation): every node of a
    cluster is killed (SIGKILL: its registration lingers until its session
    expires) and all are started again with a new cluster key. The old
    registrations, of the old key, are waited out: every node starts, the
    ring forms again and takes submits."""
    cluster.start(2, "--replicas", "2", "--keys", keys.dir)
    for proc in cluster.nodes.values():
        proc.kill()
    assert members_in_zookeeper(zk_client, zk_cluster_name) == {"n0", "n1"}, "the registrations linger"
    # The test's clients: ops's key stays (the authorized keys were copied), the node key is the new one.
    monkeypatch.setenv("MIYAQ_SERVER_KEY", other_keys.server_key)
    for client in cluster.clients.values():
        client.close(flush=False)
    cluster.nodes.clear()
    cluster.clients.clear()
    cluster.start(2, "--replicas", "2", "--keys", other_keys.dir)
    published = ZnodeStore(zk_client, Layout(zk_cluster_name), "test", 5.0).read_cluster_keys()
    assert {n: k.fingerprint for n, k in published.items()} == {"n0": fingerprint(other_keys),
                                                                "n1": fingerprint(other_keys)}
    cluster.client("n0").submit("add", [1, 2], wait=True)


def test_coordinator_of_another_key_registers_nothing(make_coordinator, zk_client, zk_cluster_name):
    """Fault: a coordinator of another cluster key starts next to a live
    member: ``ConfigError`` naming both fingerprints, no member znode, no
    join asked; one of the same key starts and joins as before."""
    first = make_coordinator("a", cluster_key="1111aaaa1111aaaa")
    with pytest.raises(ConfigError) as refused:
        make_coordinator("b", cluster_key="2222bbbb2222bbbb")
    assert "b cannot join cluster" in refused.value.message
    assert "fingerprint 2222bbbb2222bbbb" in refused.value.message
    assert "live member(s) a (fingerprint 1111aaaa1111aaaa)" in refused.value.message
    assert members_in_zookeeper(zk_client, zk_cluster_name) == {"a"}
    assert "b" not in first.registered()
    desired, _ = zk_client.get(Layout(zk_cluster_name).desired)
    assert b'"b"' not in desired, desired
    same = make_coordinator("c", cluster_key="1111aaaa1111aaaa")
    wait_until(lambda: set(same.view.members) == {"a", "c"}, "the ring of a and c")


def test_node_without_keys_refused_by_a_cluster_with_keys(make_coordinator, zk_cluster_name):
    """Fault: a node started without --keys next to members with keys
    (mechanism mismatch: no handshake either): refused, and told it has none."""
    make_coordinator("a", cluster_key="1111aaaa1111aaaa")
    with pytest.raises(ConfigError) as refused:
        make_coordinator("b", cluster_key=NO_CLUSTER_KEY)
    assert "its cluster key (none: started without --keys)" in refused.value.message


def test_member_of_an_older_build_is_not_compared(make_coordinator, zk_client, zk_cluster_name):
    """Fault: a rolling upgrade -- members of a build before 2026-12-06
    publish no fingerprint (a member znode of the Member's fields only). They
    are not compared, either way: a node of the new build starts and joins,
    and an old member does not count as "another key"."""
    old = member("old")
    zk_client.create(Layout(zk_cluster_name).member("old"), dump_json(old.to_dict()), ephemeral=True,
                     makepath=True)
    make_coordinator("older", cluster_key=None)      # publishes nothing, compares nothing
    new = make_coordinator("new", cluster_key="1111aaaa1111aaaa")
    wait_until(lambda: "new" in new.view.members, "the new node in the ring")
    published = ZnodeStore(zk_client, Layout(zk_cluster_name), "test", 5.0).read_cluster_keys()
    assert published["old"].fingerprint is None and published["older"].fingerprint is None
    assert published["new"].fingerprint == "1111aaaa1111aaaa"
    assert other_cluster_keys("2222bbbb2222bbbb", published, "x") == {"new": "1111aaaa1111aaaa"}
    assert other_cluster_keys("1111aaaa1111aaaa", published, "x") == {}


@pytest.mark.parametrize("stray", ["not a member", "another node's member", "persistent member"])
def test_a_stray_znode_under_members_refuses_no_node(make_coordinator, zk_client, zk_cluster_name, stray):
    """Fault (a review audit): a child of ``members/`` the ring does not
    take for a member -- not a Member, one that describes another node, or
    a persistent znode no session owns (an operator's leftover, anyone's on
    a ZooKeeper without auth) -- published another fingerprint: every node
    of the cluster, same key or not, refused to start, for good. Only the
    ephemeral znodes of valid members are compared now."""
    layout = Layout(zk_cluster_name)
    body = {"not a member": {"cluster_key": "ffffffffffffffff"},
            "another node's member": {**member("n9").to_dict(), "cluster_key": "ffffffffffffffff"},
            "persistent member": {**member("ghost").to_dict(), "cluster_key": "ffffffffffffffff"}}[stray]
    zk_client.create(layout.member("ghost"), dump_json(body), ephemeral=stray != "persistent member",
                     makepath=True)
    node = make_coordinator("a", cluster_key="1111aaaa1111aaaa")
    wait_until(lambda: "a" in node.view.members, "the node in the ring")
    assert "ghost" not in ZnodeStore(zk_client, layout, "test", 5.0).read_cluster_keys()


def test_comparison_skips_older_members_and_the_node_itself():
    """Fault: the comparison counted a member of an older build (no
    fingerprint) as another key, or this node's own previous registration
    (restarted with a new key)."""
    published = {"old": PublishedKey(None, 1), "me": PublishedKey("9999", 2), "same": PublishedKey("1234", 3),
                 "other": PublishedKey("5678", 4)}
    assert other_cluster_keys("1234", published, "me") == {"other": "5678"}
    assert other_cluster_keys("1234", {"old": PublishedKey(None, 1)}, "me") == {}


def test_of_two_nodes_started_together_the_later_registered_refuses(zk_client, zk_cluster_name):
    """Fault: two nodes of different keys start at the same moment and both
    find no member of another key before registering. Once registered, the
    one registered later (its znode is younger) refuses; the earlier stays."""
    store = ZnodeStore(zk_client, Layout(zk_cluster_name), "test", 5.0)
    store.register(member("early"), wait=1.0, cluster_key="1111aaaa1111aaaa")
    store.register(member("late"), wait=1.0, cluster_key="2222bbbb2222bbbb")
    check_after_register(store, "early", "1111aaaa1111aaaa")
    with pytest.raises(ConfigError) as refused:
        check_after_register(store, "late", "2222bbbb2222bbbb")
    assert "live member(s) early (fingerprint 1111aaaa1111aaaa)" in refused.value.message
