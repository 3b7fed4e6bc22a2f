"""Real clusters for tests: K node processes on the session's ZooKeeper,
with helpers to find a task's holders and to read every node's view."""
from __future__ import annotations

from typing import Any

import miyaq
from miyaq.protocol.ring import Ring
from miyaq.testing.harness import NodeProc, wait_for


class Cluster:
    def __init__(self, procs: Any, zk_hosts: str, name: str, client_for: Any) -> None:
        self.procs = procs
        self.zk = zk_hosts
        self.name = name
        self.client_for = client_for
        self.nodes: dict[str, NodeProc] = {}
        self.clients: dict[str, miyaq.Client] = {}

    def start_node(self, node_id: str, *extra: str, port: int | None = None, env: dict | None = None,
                   wait: bool = True) -> NodeProc:
        """Start ``node_id``; with ``wait`` (the default) return once it answers.
        Without ``port`` the harness picks it, and picks again if another
        process takes it before the node binds it (miyaq.testing.harness):
        with ``wait=False`` the node's endpoint and client are the final ones
        only after :meth:`ready`."""
        args = ["--zk", self.zk, "--cluster", self.name, "--node-id", node_id, "--heartbeat", "0.25",
                "--zk-session-timeout", "2", "--replica-offset", "1", *extra]
        proc = self.procs.node(*args, port=port, env=env, wait=wait)
        # NodeProc names the node n<port>; the last --node-id wins.
        self.nodes[node_id] = proc
        self.clients[node_id] = self.client_for(proc.endpoint, submit_timeout=20.0)
        return proc

    def start(self, k: int, *extra: str, env: dict | None = None) -> "Cluster":
        """``k`` nodes n0.. started together (each process's start-up, a
        second or more, overlaps the others'), then their ring and streams."""
        node_ids = [f"n{i}" for i in range(k)]
        for node_id in node_ids:
            self.start_node(node_id, *extra, env=env, wait=False)
        for node_id in node_ids:
            self.ready(node_id)
        self.wait_ring(set(self.nodes))
        self.wait_streams()
        return self

    def ready(self, node_id: str) -> NodeProc:
        """Until ``node_id`` (started with ``wait=False``) answers; if it was
        started again on other ports, its client is a new one to them."""
        proc = self.nodes[node_id]
        endpoint = proc.endpoint
        proc.wait_ready()
        if proc.endpoint != endpoint:
            self.clients[node_id] = self.client_for(proc.endpoint, submit_timeout=20.0)
        return proc

    def wait_streams(self, nodes: list[str] | None = None) -> None:
        """Until every node hears every other's replication stream (a new
        subscription misses what was published before it took effect)."""
        wait_for(lambda: all(self.stats(n)["cluster"]["streams_ready"] for n in (nodes or self.nodes)),
                 timeout=20, interval=0.1, what="replication streams up")

    def client(self, node_id: str | None = None) -> miyaq.Client:
        return self.clients[node_id or next(iter(self.nodes))]

    def endpoints(self) -> list[str]:
        return [p.endpoint for p in self.nodes.values()]

    def ring(self, via: str) -> dict[str, Any]:
        return self.clients[via].ring()

    def wait_ring(self, members: set[str], via: list[str] | None = None, timeout: float = 30.0) -> None:
        """Until every node named in ``via`` (default: members) sees exactly ``members``."""
        def agreed() -> bool:
            for node_id in via or members:
                try:
                    if set(self.ring(node_id)["members"]) != members:
                        return False
                except miyaq.MiyaqError:
                    return False
            return True
        wait_for(agreed, timeout=timeout, interval=0.1, what=f"ring of {sorted(members)}")

    def holders(self, routing_key: str, n: int, members: list[str] | None = None) -> list[str]:
        return Ring({m: 1.0 for m in (members or self.nodes)}).preference_list(routing_key, n)

    def task_on(self, node_id: str, task_id: str) -> dict[str, Any] | None:
        """``task_id`` as ``node_id`` holds it (TASK), or None if it does not know it."""
        try:
            return self.clients[node_id].request(miyaq.client.client.c.TASK, {"id": task_id}, node=0)["task"]
        except miyaq.NotFound:
            return None

    def holds(self, node_id: str, task_id: str) -> str | None:
        """The state of ``task_id`` on ``node_id``, or None if it does not know it."""
        task = self.task_on(node_id, task_id)
        return None if task is None else task["state"]

    def stats(self, node_id: str) -> dict[str, Any]:
        return self.clients[node_id].status()

    def kill(self, node_id: str) -> None:
        """kill -9: the fault of a crashed node."""
        self.nodes[node_id].kill()
