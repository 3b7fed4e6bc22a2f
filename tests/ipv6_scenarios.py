"""IPv6 scenarios, run by tests/test_ipv6.py inside a network namespace of
their own (``unshare --net``, loopback up), so their traffic to ``::1``
never leaves it. Each prints one JSON line of what it saw, last.

    python ipv6_scenarios.py standalone|dual_stack|cluster
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
from typing import Any

import miyaq
from miyaq.cli.main import main as cli
from miyaq.cluster.ring_view import local_member
from miyaq.protocol.reach import explain
from miyaq.testing.harness import ThreadNode, ThreadWorker, wait_for
from miyaq.testing.ports import free_port
from miyaq.testing.zookeeper import ZooKeeperServer

from peer_fixtures import FixedRing

WAIT = 20.0     # seconds: a guard against a hang, not a timing assertion
V6ONLY = "fd00:6d69:7961:71::7"     # a unique local address, on the namespace's loopback only

app = miyaq.App()


@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


def http_json(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("::1", port, timeout=WAIT)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def each_sees_done(endpoints: list[str], task_ids: list[str]) -> bool:
    """Wait until the node at each of ``endpoints`` (a client of its own)
    says every task of ``task_ids`` is done."""
    for endpoint in endpoints:
        with miyaq.Client(endpoint) as client:
            wait_for(lambda: all(client.status(t, node=0)["state"] == "done" for t in task_ids), timeout=WAIT,
                     what=f"{endpoint} sees every task done")
    return True


def streams_ready(endpoints: list[str]) -> None:
    """Wait until each node heard and synced every peer's replication
    stream (so its peer links are up): a submit made before may find a
    holder it cannot reach yet, whose copy then waits an offset -- an hour
    here -- before it asks and runs (docs/cluster.md)."""
    for endpoint in endpoints:
        with miyaq.Client(endpoint) as client:
            wait_for(lambda: (client.status(node=0).get("cluster") or {}).get("streams_ready"), timeout=WAIT,
                     what=f"{endpoint}'s replication streams ready")


class Hooks(http.server.BaseHTTPRequestHandler):
    """Records each webhook it receives (its Host header and body)."""

    received: list[dict[str, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        Hooks.received.append({"host": self.headers.get("Host", ""), "path": self.path, "body": body})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class IPv6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def standalone() -> dict[str, Any]:
    """A node bound to ``::1``: a worker and a client over IPv6, its HTTP
    gateway, a webhook it delivers to an IPv6 address, and ``miyaq status``."""
    http_port = free_port()
    hooks = IPv6Server(("::1", 0), Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    with ThreadNode(host="::1", http_port=http_port, webhook_allow_private=True) as node:
        seen: dict[str, Any] = {"endpoint": node.endpoint}
        with ThreadWorker(app, [node.endpoint], concurrency=2), miyaq.Client(node.endpoint) as client:
            seen["call"] = client.call("add", (2, 3), timeout=WAIT)
            status, accepted = http_json(http_port, "POST", "/tasks", {"name": "add", "args": [4, 5]})
            seen["http_submit"] = status
            status, outcome = http_json(http_port, "GET", f"/tasks/{accepted['id']}/result?timeout={WAIT:g}")
            seen["http_result"] = [status, outcome.get("result")]
            hook_url = f"http://[::1]:{hooks.server_address[1]}/hook"
            seen["webhook_enqueued"] = http_json(http_port, "POST", "/queue", {"url": hook_url, "params": {"a": 1}})[0]
            wait_for(lambda: Hooks.received, timeout=WAIT, what="the webhook delivered")
            seen["webhook"] = Hooks.received[0]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                seen["cli_status"] = cli(["status", "--connect", node.endpoint])
            seen["cli_said"] = out.getvalue()
        seen["unroutable"] = explain("tcp://[2001:db8::7]:7450")
        seen["refused"] = explain(f"tcp://[::1]:{free_port()}")
    hooks.shutdown()
    hooks.server_close()
    return seen


def dual_stack() -> dict[str, Any]:
    """A node bound to ``::`` serves IPv6 and IPv4 clients alike."""
    with ThreadNode(host="::", insecure=True) as node:
        port = node.config.port
        seen: dict[str, Any] = {}
        with ThreadWorker(app, [f"tcp://[::1]:{port}"], concurrency=2):
            for endpoint in (f"tcp://[::1]:{port}", f"tcp://127.0.0.1:{port}"):
                with miyaq.Client(endpoint) as client:
                    seen[endpoint] = client.call("add", (1, 1), timeout=WAIT)
    return seen


def cluster() -> dict[str, Any]:
    """Two nodes on ``::1`` holding every task (replicas 2, ``min_acks`` 2):
    each accepted submit went over the peer link, each finish over the
    replication stream, and a client that knew one node dialled the other at
    the endpoint the ring gave."""
    nodes: dict[str, ThreadNode] = {}

    def ring(config: Any) -> FixedRing:
        others = [local_member(n.config) for name, n in nodes.items() if name != config.node_id]
        return FixedRing(local_member(config), others, leader="a")

    for name in ("a", "b"):
        nodes[name] = ThreadNode(coordinator=ring, host="::1", node_id=name, peer_port=free_port(),
                                 pub_port=free_port(), replicas=2, min_acks=2, replica_offset=3600.0,
                                 heartbeat=0.25)
    a, b = nodes["a"], nodes["b"]
    seen: dict[str, Any] = {"ring": [local_member(n.config).peer for n in nodes.values()]}
    with a, b, ThreadWorker(app, [a.endpoint, b.endpoint], concurrency=4):
        streams_ready([a.endpoint, b.endpoint])
        with miyaq.Client(a.endpoint) as client:
            handles = [client.submit("add", (i, i), wait=True, timeout=WAIT) for i in range(20)]
            seen["results"] = [h.result(timeout=WAIT) for h in handles]
            wait_for(lambda: len(client.nodes.endpoints) == 2, timeout=WAIT, what="the other node discovered")
            seen["dialled"] = sorted(client.nodes.endpoints)
            seen["dialled_up"] = client.status(node=1)["accepting"]

            seen["both_done"] = each_sees_done([a.endpoint, b.endpoint], [h.id for h in handles])
    return seen


def zookeeper() -> dict[str, Any]:
    """A real ZooKeeper on ``::1`` and two nodes that join it there
    (``--zk [::1]:PORT``): the ring they register names their IPv6
    endpoints, and a task submitted to one is held and finished by both."""
    server = ZooKeeperServer(host="::1").start()
    seen: dict[str, Any] = {"zk": server.hosts}
    try:
        nodes = [ThreadNode(host="::1", port=free_port(span=3, host="::1"), zk=server.hosts, cluster="v6",
                            replicas=2, heartbeat=0.25) for _ in range(2)]
        with nodes[0], nodes[1], ThreadWorker(app, [nodes[0].endpoint], concurrency=4):
            with miyaq.Client(nodes[0].endpoint) as client:
                def both_in_ring() -> dict[str, Any] | None:
                    members = client.ring()["members"]
                    return members if len(members) == 2 else None
                members = wait_for(both_in_ring, timeout=WAIT, what="both nodes in the ring")
                seen["services"] = sorted(m["service"] for m in members.values())
                streams_ready([n.endpoint for n in nodes])
                handles = [client.submit("add", (i, 1), wait=True, timeout=WAIT) for i in range(10)]
                seen["results"] = [h.result(timeout=WAIT) for h in handles]

                seen["both_done"] = each_sees_done([n.endpoint for n in nodes], [h.id for h in handles])
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                seen["cli_ring"] = cli(["ring", "--zk", server.hosts, "--cluster", "v6", "--json"])
            seen["ring_said"] = json.loads(out.getvalue())
    finally:
        server.close()   # stops it and removes the directory it made
    return seen


def names() -> dict[str, Any]:
    """Host names and ``MIYAQ_IP_VERSION``, in a namespace whose /etc/hosts
    (the test's) names ``v6only.miyaq.test`` ``V6ONLY`` (an address given to
    this namespace's loopback: not ``::1``, which glibc also answers as
    127.0.0.1 to an IPv4 lookup) and ``v4only.miyaq.test`` ``127.0.0.1``: a
    node bound to V6ONLY is reached by the first name with version 6, not
    with the default 4; a node bound to ``127.0.0.1`` is reached by the
    second with either (a name without an IPv6 address falls back to its
    IPv4 one)."""
    subprocess.run(["ip", "address", "add", f"{V6ONLY}/128", "dev", "lo", "nodad"], check=True, timeout=10)
    seen: dict[str, Any] = {}

    def answers(endpoint: str) -> Any:
        try:
            with miyaq.Client(endpoint, request_timeout=3.0) as client:
                return client.status()["accepting"]
        except miyaq.MiyaqError as err:
            return type(err).__name__

    with ThreadNode(host=V6ONLY, insecure=True) as v6, ThreadNode(host="127.0.0.1") as v4:
        for version in ("4", "6"):
            os.environ["MIYAQ_IP_VERSION"] = version
            seen[f"v6only over {version}"] = answers(f"tcp://v6only.miyaq.test:{v6.config.port}")
            seen[f"v4only over {version}"] = answers(f"tcp://v4only.miyaq.test:{v4.config.port}")
            seen[f"v6only explained over {version}"] = explain(f"tcp://v6only.miyaq.test:{v6.config.port}")
        os.environ["MIYAQ_IP_VERSION"] = "5"
        try:
            miyaq.Client(f"tcp://v4only.miyaq.test:{v4.config.port}")
        except miyaq.errors.ConfigError as err:
            seen["bad version"] = str(err)
        finally:
            os.environ.pop("MIYAQ_IP_VERSION")
    return seen


if __name__ == "__main__":
    scenarios = {"standalone": standalone, "dual_stack": dual_stack, "cluster": cluster, "zookeeper": zookeeper,
                 "names": names}
    print(json.dumps(scenarios[sys.argv[1]]()))
