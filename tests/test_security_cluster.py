"""A 3-node cluster with keys, against the session's real ZooKeeper: it keeps
replicating while a worker's key is rotated (a new key added, the old one
revoked, SIGHUP to every node), without a restart (issue 9)."""
from __future__ import annotations

import os
import signal

import pytest

import miyaq
from apps import basic
from cluster_harness import Cluster
from miyaq.testing.harness import wait_for

from secure_harness import make_keys

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def keys(tmp_path):
    return make_keys(os.path.join(str(tmp_path), "keys"), ("ops", "admin"), ("workers-2024", "worker"))


@pytest.fixture
def cluster(procs, zk_server, zk_cluster_name, client_for, keys, monkeypatch):
    # The test's own clients (the harness's readiness checks included) act as the operator.
    monkeypatch.setenv("MIYAQ_KEY", keys.secret("ops"))
    monkeypatch.setenv("MIYAQ_SERVER_KEY", keys.server_key)
    return Cluster(procs, zk_server.hosts, zk_cluster_name, client_for)


def reloads(cluster: Cluster, node_id: str) -> int:
    return cluster.stats(node_id)["security"]["reloads"].get("ok", 0)


def sighup_all(cluster: Cluster) -> None:
    """SIGHUP every node and wait until each has read its keys again."""
    before = {n: reloads(cluster, n) for n in cluster.nodes}
    for proc in cluster.nodes.values():
        proc.signal(signal.SIGHUP)
    wait_for(lambda: all(reloads(cluster, n) > before[n] for n in cluster.nodes), timeout=30,
             what="every node reloaded its keys")


def run_batch(cluster: Cluster, tag: str, path: str) -> None:
    """Ten tasks submitted through every node; each done on all three holders, run once."""
    handles = []
    for node_id in cluster.nodes:
        client = cluster.client(node_id)
        handles += [client.submit("echo", [tag, i]) for i in range(10)]
        client.flush()
    for h in handles:
        h.result(60)
        wait_for(lambda: all(cluster.holds(n, h.id) == "done" for n in cluster.nodes), timeout=30,
                 what=f"{h.id} done on every holder")
    runs = [e for e in basic.read_events(path) if e[0] == "echo" and e[1] in {h.id for h in handles}]
    assert len(runs) == len(handles)


def test_cluster_keeps_replicating_across_a_worker_key_rotation(cluster, procs, keys, tmp_path):
    """Fault: a worker key is rotated while the cluster runs: the new key is
    added, every node gets SIGHUP, the workers restart with it, the old key is
    revoked and every node gets SIGHUP again. Tasks keep being replicated to
    all three holders and run once before, during and after; the old key is
    refused afterwards; no node restarted."""
    path = str(tmp_path / "events.jsonl")
    cluster.start(3, "--replicas", "3", "--keys", keys.dir)
    pids = {n: p.pid for n, p in cluster.nodes.items()}
    endpoints = ",".join(cluster.endpoints())

    def worker(name: str):
        return procs.worker("apps.basic:app", endpoints, 4, "--key", keys.secret(name),
                            "--server-key", keys.server_key, env={"MIYAQ_TEST_EVENTS": path})

    old = worker("workers-2024")
    wait_for(lambda: all(cluster.stats(n)["totals"]["workers"] == 1 for n in cluster.nodes), timeout=30,
             what="the worker on every node")
    run_batch(cluster, "before", path)

    keys.store.add("workers-2025", "worker")
    sighup_all(cluster)
    new = worker("workers-2025")
    wait_for(lambda: all(cluster.stats(n)["totals"]["workers"] == 2 for n in cluster.nodes), timeout=30,
             what="both workers on every node")
    run_batch(cluster, "during", path)

    old.terminate()
    keys.store.revoke("workers-2024")
    sighup_all(cluster)
    run_batch(cluster, "after", path)

    assert {n: p.pid for n, p in cluster.nodes.items()} == pids and all(p.alive() for p in cluster.nodes.values())
    for node_id in cluster.nodes:
        status = cluster.stats(node_id)
        assert status["cluster"]["duplicates"] == 0
        assert status["security"]["roles"] == {"peer": 1, "admin": 1, "worker": 1}
    assert new.alive()
    revoked = os.path.join(keys.dir, "revoked", "workers-2024.key_secret")
    stale = miyaq.Client(endpoints, key=revoked, server_key=keys.server_key, request_timeout=2.0)
    try:
        with pytest.raises(miyaq.Unavailable):
            stale.status()
    finally:
        stale.close(flush=False)
