"""``--advertise HOST``: the address a node tells others to reach it by (the
ring in ZooKeeper, RING answers, discovery), apart from the address it binds
(docs/configuration.md, "Advertised addresses").

The nodes bind 127.0.0.1 and advertise 127.0.0.2, another loopback address
(nothing listens there: only what they advertise is checked, never traffic to
it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from miyaq.config import NodeConfig
from miyaq.testing.harness import free_port, wait_for

MIYAQ = [sys.executable, "-m", "miyaq.cli.main"]


def test_standalone_node_advertises_its_advertised_host(make_node, client_for):
    """RING names the advertised host for the service and HTTP endpoints, and a
    client that reached the node at its bound address discovers that one."""
    http = free_port()
    node = make_node(advertise="127.0.0.2", http_port=http)
    port = node.config.port
    client = client_for(node.endpoint)
    member = client.ring()["members"][node.config.id]
    assert member["service"] == f"tcp://127.0.0.2:{port}"
    assert member["http"] == f"http://127.0.0.2:{http}"
    wait_for(lambda: f"tcp://127.0.0.2:{port}" in client.nodes.endpoints, what="the advertised endpoint discovered")
    assert client.status()["accepting"] is True      # still served on the bound address


def test_clustered_node_registers_its_advertised_endpoints_in_zookeeper(make_node, zk_server, zk_cluster_name):
    """The member znode a clustered node registers, and so the ring every node,
    client and worker reads, carries the advertised host for the service,
    peer, replication and HTTP endpoints."""
    http = free_port()
    node = make_node(zk=zk_server.hosts, cluster=zk_cluster_name, advertise="127.0.0.2", http_port=http,
                     replicas=1)
    port = node.config.port
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}

    def ring() -> dict:
        done = subprocess.run([*MIYAQ, "ring", "--zk", zk_server.hosts, "--cluster", zk_cluster_name, "--json"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def in_ring() -> dict | None:
        member = ring()["members"].get(node.config.id) or {}
        return member if member.get("in_ring") else None

    member = wait_for(in_ring, what="the node in the ring")
    assert (member["service"], member["peer"], member["pub"], member["http"]) == (
        f"tcp://127.0.0.2:{port}", f"tcp://127.0.0.2:{port + 1}", f"tcp://127.0.0.2:{port + 2}",
        f"http://127.0.0.2:{http}")


def test_advertise_without_host_is_the_bound_host_or_the_hostname():
    """Without --advertise a node advertises --host, or its hostname when bound to every interface."""
    assert NodeConfig(host="127.0.0.1").endpoint(7450) == "tcp://127.0.0.1:7450"
    assert NodeConfig(host="127.0.0.1", advertise="queue-1.example.internal").endpoint(7450) == \
        "tcp://queue-1.example.internal:7450"
    assert NodeConfig(host="0.0.0.0", insecure=True).advertised_host not in ("0.0.0.0", "")


def test_bad_advertise_is_refused():
    """Fault: --advertise given a URL (scheme and port) instead of a host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    done = subprocess.run([*MIYAQ, "node", "--port", str(free_port()), "--http-port", "0",
                           "--advertise", "tcp://10.0.0.1:7450"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("miyaq: error: advertise takes a host name or address, IPv4 or "
                                                    "IPv6 (no scheme, no port), not 'tcp://10.0.0.1:7450'")
