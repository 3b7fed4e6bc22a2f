"""The local cluster a chaos run starts and faults: ZooKeeper, K nodes,
W workers, each node with its own data directory.

Constraints:

* Every process dies with the run (:mod:`.procs`; ZooKeeper through a
  ``java`` wrapper that execs the launch shim), and :meth:`LocalCluster.close`
  stops workers, then nodes, then ZooKeeper, then the network, never raising.
* A node restarts on the same port (chosen below the ephemeral port range,
  so no outgoing connection takes it while the node is down), with the
  same id and data directory, so it replays its log; :meth:`LocalCluster.start_node` with ``wipe=True``
  empties the directory first (the "disk replaced" fault).
* :meth:`LocalCluster.whole` answers from the nodes themselves (ring and
  replication-stream state over the service socket) with short timeouts;
  a paused or dead node makes it False, never blocks long.
* Blocking calls (subprocess waits, sleeps): use from plain threads.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import threading
from typing import Any, Callable

from ..client.client import Client
from ..errors import MiyaqError
from ..security.keystore import KeyStore
from .faults import KINDS_NETWORK, KINDS_ZK, KINDS_ZK_NETWORK
from .cluster_network import ClusterNetwork
from .disk import SmallDisks
from .netns import Loopback
from .nodespec import NodeSpec
from ..testing.ports import free_port
from .zkfaults import RunZooKeeper
from .procs import Child, miyaq_argv, stop_all
from .tasks import ENV_DIR, ENV_WORKER

logger = logging.getLogger(__name__)

APP = "miyaq.chaos.tasks:app"
NODE_DEFAULTS = ("--zk-session-timeout", "3", "--heartbeat", "0.5", "--replica-offset", "2",
                 "--shutdown-grace", "5", "--http-port", "0")
"""Faster than production defaults so a one-minute run sees failovers; --node-arg overrides."""
PROBE_TIMEOUT = 0.5
#: With --secure, the key each role's clients use.
ROLE_KEYS = {"admin": "chaos-ops", "producer": "chaos-producer", "worker": "chaos-workers"}



#: Where Debian's (and most distributions') libfaketime lives.
FAKETIME_LIBRARIES = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                      "/usr/local/lib/faketime/libfaketime.so.1")


def faketime_library() -> str | None:
    """The libfaketime library to preload, or None (no ``clock`` fault)."""
    for pattern in FAKETIME_LIBRARIES:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def skewed_clock_env(skew: float) -> dict[str, str]:
    """The environment that runs a node with its wall clock ``skew`` seconds
    off: libfaketime preloaded with ``FAKETIME`` (what ``faketime -f`` sets).
    Not the ``faketime`` command: it forks and waits for its child, so a
    SIGTERM ended only the wrapper and left the skewed node running, and the
    node restarted with the true time found its port taken (and before
    2026-12-05 the launch shim could not even find the command: no node
    ever ran skewed)."""
    library = faketime_library()
    if library is None:
        raise MiyaqError("the clock fault needs libfaketime: apt-get install faketime")
    return {"LD_PRELOAD": library, "FAKETIME": f"{skew:+g}"}

class LocalCluster(ClusterNetwork):
    """ZooKeeper + nodes + workers on this machine (see the module docstring).

    ``pool``: the workers' pool (``miyaq chaos --pool``, checked by
    :class:`~.runner.ChaosConfig`), ``concurrency`` the handlers each runs at once.
    ``secure``: every socket runs CURVE (``miyaq chaos --secure``): keys in
    ``<run_dir>/keys``, one per role -- ``chaos-ops`` (admin: the probes and
    the final check), ``chaos-producer`` and ``chaos-workers`` -- so the
    roles' checks run under the faults too. Its network faults
    (``--partitions``) are :class:`~.cluster_network.ClusterNetwork`'s."""

    key_dir: str | None = None

    def __init__(self, run_dir: str, *, nodes: int = 3, replicas: int = 2, workers: int = 2,
                 concurrency: int = 32, fsync: str = "interval", node_args: list[str] | None = None,
                 name: str = "chaos", net: Any = None, disks: SmallDisks | None = None,
                 secure: bool = False, zk_servers: int = 1, pool: str = "gevent") -> None:
        self.run_dir = run_dir
        self.replicas = replicas
        self.concurrency = concurrency
        self.pool = pool
        self.fsync = fsync
        self.node_args = list(node_args or [])
        self.name = name
        self.net: Any = net or Loopback()
        self.disks = disks
        self.skews: dict[str, float] = {}
        self.zk_servers = zk_servers
        self.zookeeper: RunZooKeeper | None = None
        self.zk_hosts = ""
        self.specs = {}
        for i in range(nodes):
            node_id = f"n{i}"
            self.specs[node_id] = NodeSpec(node_id, i, self.net.host(i), free_port(span=3),
                                           os.path.join(run_dir, "data", node_id), self.net.netns(i))
        self.procs: dict[str, Child] = {}
        self.retired: dict[str, Child] = {}      # nodes replaced by new ones (--rolling)
        self.helpers: dict[str, Child] = {}      # processes a fault runs in a node's namespace
        self.worker_count = workers
        self.workers: list[Child] = []
        self._worker_seq = 0
        self._clients: dict[str, Client] = {}
        self._zk_cut: dict[str, tuple[list[str], list[str]]] = {}     # zkminority: node -> the two sides
        self._lock = threading.Lock()
        if secure:
            self._make_keys()
        self.capabilities = {"kill", "pause", "leader", "worker", "zk", "wipe"}
        if self.net.partitions:
            self.capabilities |= set(KINDS_NETWORK)
        if faketime_library() is not None:
            self.capabilities.add("clock")
        if disks is not None:
            self.capabilities.add("diskfull")
        if zk_servers >= 3:
            self.capabilities |= set(KINDS_ZK)
            if self.net.partitions:
                self.capabilities |= set(KINDS_ZK_NETWORK)

    # -- keys ----------------------------------------------------------------------------
    def _make_keys(self) -> None:
        store = KeyStore(os.path.join(self.run_dir, "keys"))
        store.init()
        for role, name in ROLE_KEYS.items():
            store.add(name, role)
        self.key_dir = store.dir

    def credentials(self, role: str) -> tuple[str | None, str | None]:
        """(secret certificate, the nodes' public one) for a client acting as
        ``role`` (admin, producer, worker); (None, None) without keys."""
        if self.key_dir is None:
            return None, None
        return (os.path.join(self.key_dir, ROLE_KEYS[role] + ".key_secret"),
                os.path.join(self.key_dir, "node.key"))

    # -- views -------------------------------------------------------------------------
    @property
    def node_ids(self) -> list[str]:
        return list(self.specs)

    @property
    def endpoints(self) -> list[str]:
        return [s.endpoint for s in self.specs.values()]

    def node_of(self, endpoint: str | None) -> str | None:
        for spec in self.specs.values():
            if spec.endpoint == endpoint:
                return spec.node_id
        return None

    def client(self, node_id: str) -> Client:
        """A probe client for one node (short timeouts); made once, reused."""
        with self._lock:
            client = self._clients.get(node_id)
            if client is None:
                key, server_key = self.credentials("admin")
                client = Client(self.specs[node_id].endpoint, request_timeout=PROBE_TIMEOUT, submit_timeout=5.0,
                                key=key, server_key=server_key)
                self._clients[node_id] = client
            return client

    def up(self, node_id: str) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.alive() and not proc.paused

    def ring(self) -> dict[str, Any] | None:
        """The ring as the first node that answers sees it."""
        for node_id in self.node_ids:
            if self.up(node_id):
                try:
                    return self.client(node_id).ring()
                except MiyaqError:
                    continue
        return None

    def leader(self) -> str | None:
        ring = self.ring()
        return ring.get("leader") if ring else None

    def whole(self) -> tuple[bool, str]:
        """(True, "") when every node runs, sees every node in its ring and
        hears every other node's replication stream; else (False, why)."""
        for node_id in self.node_ids:
            if not self.up(node_id):
                return False, f"{node_id} is not running"
        return ring_whole(self.client, list(self.node_ids))

    def live_endpoints(self) -> list[str]:
        """Endpoints of the nodes that run and answer STATUS now."""
        live = []
        for node_id in self.node_ids:
            if self.up(node_id):
                try:
                    self.client(node_id).status()
                except MiyaqError:
                    continue
                live.append(self.specs[node_id].endpoint)
        return live

    def stats(self) -> dict[str, Any]:
        """Every answering node's cluster counters (duplicates, takeovers...),
        totals, refused requests by code and security section."""
        out: dict[str, Any] = {}
        for node_id in self.node_ids:
            if self.up(node_id):
                try:
                    status = self.client(node_id).status()
                    out[node_id] = {"cluster": status.get("cluster"), "totals": status.get("totals"),
                                    "errors": status.get("errors"), "security": status.get("security")}
                except MiyaqError:
                    continue
        return out

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """ZooKeeper, then every node, then the workers. Does not wait for the ring."""
        os.makedirs(self.run_dir, exist_ok=True)
        self.zookeeper = RunZooKeeper(self.run_dir, self.zk_servers, self.net)
        self.zookeeper.start()
        self.zk_hosts = self.zookeeper.hosts
        for node_id in self.node_ids:
            self.start_node(node_id)
        for _ in range(self.worker_count):
            self.start_worker()

    def start_node(self, node_id: str, wipe: bool = False) -> Child:
        spec = self.specs[node_id]
        if self.disks is not None:
            self.disks.mount(spec.data_dir)
        if wipe:
            for name in os.listdir(spec.data_dir):      # the directory may be a mount point
                path = os.path.join(spec.data_dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
        os.makedirs(spec.data_dir, exist_ok=True)
        args = ["node", "--zk", self.zk_hosts, "--cluster", self.name, "--node-id", node_id,
                "--host", spec.host, "--port", str(spec.port), "--replicas", str(self.replicas),
                "--data-dir", spec.data_dir, "--fsync", self.fsync, *NODE_DEFAULTS, *self.node_args]
        if self.key_dir is not None:
            args += ["--keys", self.key_dir]
        elif spec.netns:
            args.append("--insecure")   # a namespace's 10.x address: reachable only from this run
        argv = miyaq_argv(*args)
        skew = self.skews.get(node_id)
        env = skewed_clock_env(skew) if skew is not None else None
        child = Child(node_id, argv, os.path.join(self.run_dir, f"{node_id}.log"), env=env,
                      netns=spec.netns).start()
        self.procs[node_id] = child
        logger.info("node %s started (pid %s, port %d%s%s)", node_id, child.pid, spec.port,
                    ", data wiped" if wipe else "", f", clock {skew:+g}s" if skew is not None else "")
        return child

    def restart_node(self, node_id: str, skew: float | None = None) -> None:
        """SIGTERM (a clean stop, its grace included), then start again; with
        ``skew`` through faketime, its clock that many seconds off."""
        self.procs[node_id].stop(30.0)
        if skew is None:
            self.skews.pop(node_id, None)
        else:
            self.skews[node_id] = skew
        self.start_node(node_id)

    def replace_node(self, old: str) -> str:
        """``old`` is gone for good (stopped, out of the ring): start a new
        node in its place under a new id, with an empty data directory and a
        new port. Returns the new id."""
        spec = self.specs.pop(old)
        index = max(s.index for s in self.specs.values()) + 1 if self.specs else 0
        new_id = f"n{index}"
        while new_id in self.specs or new_id == old:
            index += 1
            new_id = f"n{index}"
        self.specs[new_id] = NodeSpec(new_id, spec.index, spec.host, free_port(span=3),
                                      os.path.join(self.run_dir, "data", new_id), spec.netns)
        self.retired[old] = self.procs.pop(old)
        self.start_node(new_id)
        return new_id

    def fill_disk(self, node_id: str) -> int:
        if self.disks is None:
            raise MiyaqError("no small disks in this run")
        return self.disks.fill(self.specs[node_id].data_dir)

    def free_disk(self, node_id: str) -> None:
        if self.disks is not None:
            self.disks.free(self.specs[node_id].data_dir)

    def kill_node(self, node_id: str) -> None:
        self.procs[node_id].kill()

    def pause_node(self, node_id: str) -> None:
        import signal
        self.procs[node_id].signal(signal.SIGSTOP)

    def resume_node(self, node_id: str) -> None:
        import signal
        self.procs[node_id].signal(signal.SIGCONT)


    def worker_args(self) -> list[str]:
        """``miyaq worker`` arguments of every worker the run starts (the
        restarted ones and ``--rolling``'s and ``--zk``'s too)."""
        return ["worker", APP, "--processes", "1", "--pool", self.pool, "--concurrency", str(self.concurrency),
                "--connect", ",".join(self.endpoints), "--heartbeat", "0.5", "--grace", "5"]

    def worker_child(self) -> Child:
        """The next worker, not started: named ``workerK`` (never reused in a
        run), the name in its environment (:data:`.tasks.ENV_WORKER`) --
        inherited by a processes pool's children, so their records name the
        worker that the ``worker`` fault kills."""
        self._worker_seq += 1
        name = f"worker{self._worker_seq}"
        env = {ENV_DIR: self.run_dir, ENV_WORKER: name}
        key, server_key = self.credentials("worker")
        if key is not None and server_key is not None:
            env.update(MIYAQ_KEY=key, MIYAQ_SERVER_KEY=server_key)
        return Child(name, miyaq_argv(*self.worker_args()), os.path.join(self.run_dir, f"{name}.log"), env=env)

    def start_worker(self) -> Child:
        child = self.worker_child().start()
        self.workers.append(child)
        return child

    def live_workers(self) -> list[Child]:
        return [w for w in self.workers if w.alive()]

    def stop_zk(self) -> None:
        assert self.zookeeper is not None
        self.zookeeper.stop()

    def start_zk(self) -> None:
        assert self.zookeeper is not None
        self.zookeeper.start()

    def stop_workers(self, grace: float = 10.0) -> None:
        stop_all(self.workers, grace)

    def close(self) -> None:
        """Workers, nodes, ZooKeeper, network, probe clients. Never raises."""
        try:
            self.stop_workers()
            stop_all(list(self.helpers.values()), 5.0)
            stop_all(list(self.procs.values()) + list(self.retired.values()), 15.0)
        finally:
            if self.zookeeper is not None:
                try:
                    self.zookeeper.close()
                except Exception:
                    logger.exception("stopping ZooKeeper failed")
            try:
                self.net.close()
            except Exception:
                logger.exception("removing the network namespaces failed")
            if self.disks is not None:
                self.disks.close()
            with self._lock:
                clients, self._clients = list(self._clients.values()), {}
            for client in clients:
                try:
                    client.close(flush=False)
                except Exception:
                    logger.exception("closing a probe client failed")


def ring_whole(client_for: Callable[[str], Client], node_ids: list[str]) -> tuple[bool, str]:
    """(True, "") when every node answers, sees exactly ``node_ids`` in its
    ring and hears every other node's replication stream; else (False, why)."""
    wanted = set(node_ids)
    for node_id in node_ids:
        try:
            client = client_for(node_id)
            members = set(client.ring()["members"])
            cluster = client.status().get("cluster") or {}
        except MiyaqError as exc:
            return False, f"{node_id} does not answer ({exc.code})"
        if members != wanted:
            return False, f"{node_id} sees ring {sorted(members)}"
        if not cluster.get("streams_ready"):
            return False, f"{node_id} is still resyncing"
    return True, ""
