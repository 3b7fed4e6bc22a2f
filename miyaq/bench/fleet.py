"""miyaq's side of a bench run: its node(s) and workers, up and ready.

:class:`Fleet` starts a standalone node -- or, with ``nodes > 1``, a
ZooKeeper (:mod:`miyaq.testing.zookeeper`) and that many nodes holding
every task on ``nodes`` holders with ``min_acks = nodes`` -- or uses
``--connect``; waits until every node answers STATUS (and, in a cluster,
every node sees the whole ring), starts W worker processes running
:mod:`miyaq.bench.tasks` on a queue of their own, and waits until the node
counts W workers on that queue. Every wait is bounded by the run's deadline
and checks that the children are still alive, so a node that fails to
start is reported with its log instead of a bare timeout.

``python`` is the interpreter that runs the node(s) and workers (and the
producer): another build's, to compare builds on one machine in one run.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..client.client import Client
from ..errors import ConfigError, MiyaqError, Timeout
from ..security.keystore import KeyStore
from ..testing.ports import free_port
from . import tasks
from .cpu import rss_bytes
from .procs import Child, ProcessGroup, launcher
from .producer import PAYLOAD_ENVELOPE, largest_payload

logger = logging.getLogger(__name__)

#: With --keys, the roles that get a key: the bench's own client (admin), the producer, the workers.
ROLES = ("admin", "producer", "worker")
#: What a cluster's nodes count that a phase should not need: a copy run by
#: a standby holder (``takeovers``; each such task started an offset late),
#: a standby that asked and waited (``deferrals``), a replication stream gap
#: and its resync, a submit refused while coordinating.
CLUSTER_COUNTERS = ("takeovers", "deferrals", "stream_gaps", "resyncs", "submits_rejected", "stream_dropped")
CONNECT_WAIT = 5.0      # longest wait for a given (--connect) node to answer its first STATUS
POLL = 0.05
LIVE_STATES = ("scheduled", "ready", "running", "retrying")


class Fleet:
    kind = "miyaq"

    def __init__(self, procs: ProcessGroup, *, connect: str | None, workers: int, concurrency: int,
                 queue: str, records_dir: str, deadline: float, prefetch: int | None = None,
                 fsync: str | None = None, data_dir: str = "", python: str | None = None, nodes: int = 1,
                 node_args: tuple[str, ...] = (), keys: bool = False, pool: str | None = None,
                 work: str = "", payload: int | None = None) -> None:
        self.procs = procs
        self.fsync = fsync
        self.data_dir = data_dir
        self.connect = connect
        self.n_workers = workers
        self.concurrency = concurrency
        self.prefetch = prefetch            # the workers' --prefetch (None: their default)
        self.pool = pool                    # the workers' --pool (None: their default)
        self.work = work                    # what each task does (miyaq.bench.tasks.ENV_WORK)
        self.payload = payload              # --payload, checked against the nodes' max_payload
        self.queue = queue
        self.records_dir = records_dir
        self.deadline = deadline            # time.monotonic() value
        self.python = python or sys.executable
        self.n_nodes = nodes
        self.node_args = list(node_args)
        self.nodes: list[Child] = []
        self.workers: list[Child] = []
        self.endpoints: list[str] = [e for e in (connect or "").split(",") if e]
        self.client: Client | None = None
        self.zookeeper: Any = None
        self.keys = keys
        self.key_dir: str | None = None

    @property
    def endpoint(self) -> str:
        return ",".join(self.endpoints)

    # -- starting ------------------------------------------------------------------
    def start(self) -> None:
        """Bring everything up. Raises MiyaqError."""
        if self.keys:
            self._make_keys()
        if not self.connect:
            zk = self._start_zookeeper() if self.n_nodes > 1 else None
            for i in range(self.n_nodes):
                self._start_node(i, zk)
        key, server_key = self.credentials("admin")
        self.client = Client(self.endpoint, submit_timeout=self._left(), request_timeout=2.0, key=key,
                             server_key=server_key)
        self._wait_for_nodes()
        self._check_payload()
        env = dict(os.environ, **{tasks.ENV_CONNECT: self.endpoint, tasks.ENV_RECORDS: self.records_dir,
                                  tasks.ENV_WORK: self.work}, **self.key_env("worker"))
        options = ["--pool", self.pool] if self.pool else []
        if self.prefetch is not None:
            options += ["--prefetch", str(self.prefetch)]
        for i in range(self.n_workers):
            self.workers.append(self.procs.start(f"worker-{i}", [
                self.python, "-m", "miyaq.cli.main", "worker", "miyaq.bench.tasks:app",
                "--processes", "1", "--concurrency", str(self.concurrency), "--connect", self.endpoint,
                "--queues", self.queue, "--grace", "2", "--log-level", "WARNING", *options], env))
        self._wait_for_workers()

    # -- keys (--keys: CURVE on every socket, one key per role) -----------------------------
    def _make_keys(self) -> None:
        if self.connect:
            raise ConfigError("--keys starts its own node with keys: not with --connect")
        store = KeyStore(os.path.join(self.records_dir, "keys"))
        store.init()
        for role in ROLES:
            store.add(f"bench-{role}", role)
        self.key_dir = store.dir
        self.node_args += ["--keys", store.dir]

    def credentials(self, role: str) -> tuple[str | None, str | None]:
        """(secret certificate, the node's public one) of ``role``; (None, None) without keys."""
        if self.key_dir is None:
            return None, None
        return os.path.join(self.key_dir, f"bench-{role}.key_secret"), os.path.join(self.key_dir, "node.key")

    def key_env(self, role: str) -> dict[str, str]:
        """``MIYAQ_KEY``/``MIYAQ_SERVER_KEY`` for a child acting as ``role`` (empty without keys)."""
        key, server_key = self.credentials(role)
        return {"MIYAQ_KEY": key, "MIYAQ_SERVER_KEY": server_key} if key and server_key else {}

    def _start_zookeeper(self) -> str:
        from ..testing.zookeeper import ZooKeeperServer
        # Through the launch shim, as every other child: it dies with the bench
        # even when the bench is SIGKILLed or interrupted again while closing.
        self.zookeeper = ZooKeeperServer(workdir=Path(self.procs.log_dir) / "zookeeper", launcher=launcher())
        self.zookeeper.start()
        return str(self.zookeeper.hosts)

    def _start_node(self, index: int, zk: str | None) -> None:
        port = free_port(span=3)     # and port + 1, port + 2: the peer and stream sockets
        self.endpoints.append(f"tcp://127.0.0.1:{port}")
        durable = []
        if self.fsync:
            durable = ["--data-dir", os.path.join(self.data_dir, f"n{index}"), "--fsync", self.fsync]
        cluster = []
        if zk is not None:
            n = str(self.n_nodes)
            cluster = ["--zk", zk, "--cluster", f"bench-{os.getpid()}", "--replicas", n, "--min-acks", n]
        name = "node" if self.n_nodes == 1 else f"node-{index}"
        self.nodes.append(self.procs.start(name, [
            self.python, "-m", "miyaq.cli.main", "node", "--port", str(port), "--http-port", "0",
            "--node-id", f"bench{index}", "--log-level", "WARNING", *durable, *cluster, *self.node_args]))

    def _left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check_children(self) -> None:
        """Raise if a node or a worker has exited."""
        for child in self.nodes + self.workers:
            if not child.alive():
                raise MiyaqError(child.describe_exit())

    def _wait_for_nodes(self) -> None:
        assert self.client is not None
        limit = min(self._left(), CONNECT_WAIT) if self.connect else self._left()
        stop = time.monotonic() + limit
        last: str = "no answer"
        while time.monotonic() < stop:
            self.check_children()
            try:
                ready = all(self._node_ready(i) for i in range(len(self.endpoints)))
                if ready:
                    return
                last = "the ring is not whole, or a replication stream not up, yet"
            except MiyaqError as err:   # not connected yet, or not answering yet
                last = err.message
            time.sleep(POLL)
        if self.nodes:
            tails = "\n".join(f"--- {n.name}:\n{n.log_tail()}" for n in self.nodes)
            raise Timeout(f"the bench's node(s) at {self.endpoint} were not ready within {limit:.1f}s "
                          f"(last: {last}); last lines of their logs:\n{tails}")
        raise Timeout(f"cannot reach a miyaq node at {self.endpoint}: no answer to STATUS within "
                      f"{limit:.1f}s (last: {last}). Is a node running there?")

    def _check_payload(self) -> None:
        """A ConfigError, before any worker or producer starts, if a node
        takes no task of ``payload`` bytes (its RING reply's ``limits``; a
        node that gives none is not checked). For the bench's own nodes
        ``miyaq bench``'s option check has refused such a payload already;
        this is for ``--connect``."""
        assert self.client is not None
        if self.payload is None:
            return
        for index, endpoint in enumerate(self.endpoints):
            limits = self.client.request(b"RING", {}, node=index).get("limits")
            max_payload = limits.get("max_payload") if isinstance(limits, dict) else None
            if type(max_payload) is int and self.payload > largest_payload(max_payload):
                raise ConfigError(f"--payload {self.payload}: more than the node at {endpoint} takes (at most "
                                  f"{largest_payload(max_payload)}: its max_payload is {max_payload} bytes, the "
                                  f"task's encoding adds {PAYLOAD_ENVELOPE})")

    def _node_ready(self, index: int) -> bool:
        assert self.client is not None
        if self.n_nodes == 1 or self.connect:
            self.client.status(node=index)
            return True
        ring = self.client.request(b"RING", {}, node=index)
        if len(ring.get("members") or {}) < self.n_nodes:
            return False
        # Every peer's replication stream heard and synced once: a node's first
        # message from a peer makes it resync from that peer, which belongs to
        # the cluster's start, not to the phases measured.
        return bool((self.client.status(node=index).get("cluster") or {}).get("streams_ready"))

    def _wait_for_workers(self) -> None:
        seen = 0
        while time.monotonic() < self.deadline:
            self.check_children()
            row = self.queue_row()
            seen = int(row.get("workers", 0)) if row else 0
            if seen >= self.n_workers:
                return
            time.sleep(POLL)
        tails = "\n".join(f"--- {w.name}:\n{w.log_tail()}" for w in self.workers)
        raise Timeout(f"only {seen} of {self.n_workers} workers registered with {self.endpoint} "
                      f"before the timeout\n{tails}")

    # -- watching ------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        """The processes whose CPU a phase counts, by role."""
        out = {n.name: n.pid for n in self.nodes}
        out.update((w.name, w.pid) for w in self.workers)
        return out

    def queue_row(self, node: int = 0) -> dict[str, Any] | None:
        """A node's counters for the bench queue (None until it exists)."""
        assert self.client is not None
        row = self.client.status(node=node).get("queues", {}).get(self.queue)
        return row if isinstance(row, dict) else None

    def unfinished(self) -> tuple[int, int]:
        """(live tasks of the bench queue, dead ones), on the node that has the most."""
        live = dead = 0
        for i in range(len(self.endpoints)):
            row = self.queue_row(i) or {}
            live = max(live, sum(int(row.get(s, 0)) for s in LIVE_STATES))
            dead = max(dead, int(row.get("dead", 0)))
        return live, dead

    def peak_rss(self) -> int | None:
        return self.node_rss(peak=True)

    def counters(self) -> dict[str, int]:
        """A cluster's standby and stream counters, summed over its nodes
        (:data:`CLUSTER_COUNTERS`); empty for one node, or when a node does
        not answer (its exit is reported elsewhere)."""
        if self.n_nodes == 1 or self.connect:
            return {}
        assert self.client is not None
        total = dict.fromkeys(CLUSTER_COUNTERS, 0)
        try:
            for i in range(len(self.endpoints)):
                cluster = self.client.status(node=i).get("cluster") or {}
                for name in CLUSTER_COUNTERS:
                    value = cluster.get(name)
                    total[name] += value if isinstance(value, int) else 0
        except MiyaqError:
            return {}
        return total

    def node_rss(self, peak: bool = False) -> int | None:
        """VmRSS (or VmHWM) of the first node; None with --connect (not ours to read)."""
        if not self.nodes or not self.nodes[0].alive():
            return None
        return rss_bytes(self.nodes[0].pid, "VmHWM" if peak else "VmRSS")

    # -- stopping ------------------------------------------------------------------
    def stop_workers(self, grace: float = 5.0) -> None:
        """SIGTERM the workers and wait: they flush their record files on exit."""
        self.procs.stop(self.workers, grace)

    def close(self) -> None:
        """Close the client and stop every child, the ZooKeeper last. Never
        raises but a second KeyboardInterrupt or SystemExit (Ctrl-C, SIGTERM)
        during it: then every child, the ZooKeeper too, is SIGKILLed before
        it propagates (and, were that interrupted as well, each dies with the
        bench through :mod:`~miyaq.bench.launch`)."""
        try:
            if self.client is not None:
                try:
                    self.client.close(flush=False)
                except Exception:   # closing must not mask the error that got us here
                    logger.exception("closing the bench client failed")
                self.client = None
            self.procs.close()
        except BaseException:
            self._end_zookeeper(kill=True)
            raise
        self._end_zookeeper(kill=False)

    def _end_zookeeper(self, kill: bool) -> None:
        if self.zookeeper is None:
            return
        try:
            if kill:
                self.zookeeper.kill()
            else:
                self.zookeeper.stop()
        except Exception:
            logger.exception("stopping the bench's ZooKeeper failed")
        self.zookeeper = None
