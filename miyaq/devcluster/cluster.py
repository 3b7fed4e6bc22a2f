"""A whole cluster on this machine for development: ZooKeeper (one server or an
ensemble), N nodes, optional workers.

Used by ``miyaq dev-cluster``. Everything binds to loopback. Each process
runs as ``python -m miyaq.cli.main ...`` in its own session (so a Ctrl-C in
the terminal reaches only the dev-cluster process, which stops the rest in
order), with its output in ``<log_dir>/<name>.log``.

Constraints:

* Node ``nI`` listens on the ``I``-th free block of ports at or after
  ``base_port`` (:mod:`miyaq.devcluster.ports`). A node that exits during
  start because another process took one of its ports after the check
  (:mod:`miyaq.devcluster.busy`; no other failure) is started again, under
  the same id, on the next free block above, at most ``MAX_STARTS`` times
  in all; :attr:`DevCluster.notes` says so, and :attr:`nodes`, the
  endpoints and the state file name the ports it runs on.
* Each node gets ``zk_connect_timeout`` as its ``--zk-connect-timeout``,
  and the wait for the ring connects to ZooKeeper within it too (a
  ZooKeeper given with ``zk`` that is not there fails the start in that
  long, not in 10 s).
* ``secure``: a key directory is made in ``<log_dir>/keys`` (the cluster key
  and one admin key, ``dev``); the nodes run with ``--keys``, the workers
  and the readiness checks with the ``dev`` key, and the state file
  records it so the commands run in that directory use it too.
* Once the ring is whole, what was started is written to
  ``<state_dir>/.miyaq-dev.json`` (:mod:`miyaq.devstate`), from which the
  CLI and clients run in that directory take their defaults; :meth:`stop`
  removes it.
* :meth:`DevCluster.start` returns only once every node is in the published
  ring with a leader and answers STATUS, or raises ``MiyaqError`` (a node
  that exited, or ``Timeout``) -- or returns ``False`` early when
  :meth:`DevCluster.request_stop` was called (safe from a signal handler).
  Those waits are :mod:`miyaq.devcluster.ready`'s (the cluster's base); a node
  process is a :class:`~miyaq.devcluster.node.DevNode`.
* :meth:`DevCluster.stop` never raises and is idempotent: workers, then
  nodes (SIGTERM, then SIGKILL of the process group after ``stop_timeout``),
  then the ZooKeeper it started. Logs are kept.
* Blocking calls (``time.sleep``, subprocess waits): use from a plain
  thread, not from inside a gevent program's event loop.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from miyaq.cluster.zk_auth import ZkAuth
from miyaq.devcluster.busy import taken_port
from miyaq.config import check_zk_connect_timeout
from miyaq.devcluster.node import DevNode
from miyaq.devcluster.ports import HOST, HTTP_OFFSET, next_block, port_blocks
from miyaq.devcluster.ready import ReadyWaits
from miyaq.devstate import remove_state, write_state
from miyaq.errors import ConfigError, MiyaqError
from miyaq.security.keystore import KeyStore
from miyaq.testing.harness import Proc
from miyaq.testing.zk_ensemble import ZooKeeperEnsemble
from miyaq.testing.zookeeper import ZooKeeperServer

logger = logging.getLogger(__name__)

MAX_STARTS = 3
"""Starts of one node, in all, while other processes take one of its ports."""


class DevCluster(ReadyWaits):
    """ZooKeeper (unless ``zk`` is given: one server, or an ensemble of ``zk_servers``),
    ``nodes`` node processes and optional workers."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        zk: str | None = None,
        zk_servers: int = 1,
        zk_auth: ZkAuth | None = None,
        zk_connect_timeout: float = 10.0,
        base_port: int = 7450,
        cluster: str = "dev",
        replicas: int | None = None,
        data_dir: str | None = None,
        workers: str | None = None,
        worker_processes: int = 1,
        log_dir: str | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        state_dir: str | None = None,
        secure: bool = False,
    ) -> None:
        if nodes < 1:
            raise ConfigError("a dev cluster needs at least one node")
        if worker_processes < 1:
            raise ConfigError("--worker-processes must be at least 1")
        if replicas is not None and replicas < 1:
            raise ConfigError("--replicas must be at least 1")
        if not 1 <= zk_servers <= 9:
            raise ConfigError("--zk-servers must be 1 to 9 (3 or 5 make sense)")
        if zk is not None and zk_servers != 1:
            raise ConfigError("--zk-servers starts ZooKeeper servers; it cannot be combined with --zk")
        self.size = nodes
        self.zk_given = zk
        self.zk_servers = zk_servers
        self.zk_auth = zk_auth
        self.zk_connect_timeout = check_zk_connect_timeout(zk_connect_timeout)
        self.base_port = base_port
        self.cluster = cluster
        self.replicas = replicas if replicas is not None else min(3, nodes)
        self.data_dir = data_dir
        self.workers_app = workers
        self.worker_processes = worker_processes
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="miyaq-dev-")
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.state_dir = state_dir
        self.secure = secure
        self.key_dir: str | None = None      # with secure: the key directory the nodes read
        self.key: str | None = None          # ... the admin key commands use
        self.server_key: str | None = None   # ... and the nodes' public key
        self.zookeeper: ZooKeeperServer | ZooKeeperEnsemble | None = None
        self.nodes: list[DevNode] = []
        self.first_block: int | None = None   # the first node's block as picked, before any start again
        self.notes: list[str] = []            # "note: ..." lines for the banner (a node started again)
        self.workers: Proc | None = None
        self.state_path: str | None = None
        self._stop = threading.Event()
        self._stopped = False

    # -- what users connect to ------------------------------------------------

    @property
    def zk_hosts(self) -> str:
        if self.zk_given:
            return self.zk_given
        if self.zookeeper is None:
            raise MiyaqError("the dev cluster's ZooKeeper is not started")
        return self.zookeeper.hosts

    @property
    def endpoints(self) -> list[str]:
        return [n.service for n in self.nodes]

    def request_stop(self) -> None:
        """Ask a running :meth:`start` or :meth:`wait` to return; safe from a signal handler."""
        self._stop.set()

    # -- starting ---------------------------------------------------------------

    def start(self) -> bool:
        """Start everything and wait until the ring is whole; ``False`` if asked to stop first."""
        os.makedirs(self.log_dir, exist_ok=True)
        if self.secure:
            self._make_keys()
        if self.zk_given is None:
            workdir = Path(self.log_dir) / "zookeeper"
            if self.zk_servers > 1:
                self.zookeeper = ZooKeeperEnsemble(self.zk_servers, workdir)
            else:
                self.zookeeper = ZooKeeperServer(workdir=workdir)
            self.zookeeper.start(cancelled=self._stop.is_set)
        if self._stop.is_set():
            return False
        blocks = port_blocks(self.base_port, self.size)
        self.first_block = blocks[0]
        for index, port in enumerate(blocks, 1):
            self.nodes.append(self._start_node(f"n{index}", port))
        if not self._wait_ready():
            return False
        if self.workers_app:
            self.workers = Proc(["worker", self.workers_app, "--processes", str(self.worker_processes),
                                 "--connect", ",".join(self.endpoints)],
                                name="workers", env=self._key_env(), log_dir=self.log_dir).start()
            if not self._wait_workers(self.workers):
                return False
        if self.state_dir is not None:
            self.state_path = str(self._write_state(self.state_dir))
        return True

    def _make_keys(self) -> None:
        """The cluster key and one admin key, ``dev``, in ``<log_dir>/keys``."""
        self.key_dir = os.path.join(self.log_dir, "keys")
        store = KeyStore(self.key_dir)
        self.server_key = store.init()
        _, self.key = store.add("dev", "admin")

    def _key_env(self) -> dict[str, str] | None:
        """The environment that gives a worker (or any command) the ``dev`` key."""
        if self.key is None or self.server_key is None:
            return None
        return {"MIYAQ_KEY": self.key, "MIYAQ_SERVER_KEY": self.server_key}

    def _write_state(self, directory: str) -> Path:
        return write_state(
            directory, pid=os.getpid(), zk=self.zk_hosts, cluster=self.cluster, connect=self.endpoints,
            http=[f"http://{HOST}:{n.http_port}" for n in self.nodes], logs=self.log_dir,
            key=self.key, server_key=self.server_key,
            zookeeper_pid=self._zookeeper_pids(),
            nodes=[{"id": n.node_id, "service": n.service, "http": f"http://{HOST}:{n.http_port}",
                    "pid": n.proc.pid} for n in self.nodes])

    def _zookeeper_pids(self) -> int | list[int | None] | None:
        """The started ZooKeeper's pid, the ensemble's pids, or None (given with --zk)."""
        if isinstance(self.zookeeper, ZooKeeperEnsemble):
            return self.zookeeper.pids
        return self.zookeeper.pid if self.zookeeper is not None else None

    def start_again(self, node: DevNode) -> bool:
        """Start ``node`` again on the next free block above its own, if it
        exited because another process took one of its ports and has not had
        ``MAX_STARTS`` starts; False (nothing done) otherwise."""
        taken = taken_port(node)
        if taken is None or node.starts >= MAX_STARTS:
            return False
        port = next_block(node.port, [n.port for n in self.nodes if n is not node])
        if port is None:        # no free block left above its own: the node's error stands
            return False
        again = self._start_node(node.node_id, port, starts=node.starts + 1)
        self.nodes[self.nodes.index(node)] = again
        self.notes.append(f"note: node {node.node_id} could not bind port {taken.port} ({taken.what}): another "
                          f"process took it after it was checked free; started it again on the next free block, "
                          f"{again.service} (HTTP {again.http_port})")
        logger.info("dev cluster: %s exited, port %d (%s) taken; started it again on port %d",
                    node.node_id, taken.port, taken.what, port)
        return True

    def _start_node(self, node_id: str, port: int, starts: int = 1) -> DevNode:
        args = ["node", "--zk", self.zk_hosts, "--cluster", self.cluster, "--node-id", node_id,
                "--host", HOST, "--port", str(port), "--http-port", str(port + HTTP_OFFSET),
                "--replicas", str(self.replicas), "--zk-connect-timeout", repr(self.zk_connect_timeout)]
        if self.data_dir:
            path = os.path.join(self.data_dir, node_id)
            os.makedirs(path, mode=0o700, exist_ok=True)   # as a node makes its own: owner only
            args += ["--data-dir", path]
        if self.key_dir:
            args += ["--keys", self.key_dir]
        # Credentials go by environment, not by flag: any user can read a command line.
        env = {"MIYAQ_ZK_AUTH": f"{self.zk_auth.user}:{self.zk_auth.password}"} if self.zk_auth else None
        proc = Proc(args, name=node_id, env=env, log_dir=self.log_dir)
        log_start = os.path.getsize(proc.log_path) if os.path.exists(proc.log_path) else 0
        proc.start()
        logger.info("dev cluster: started %s on port %d (pid %d)", node_id, port, proc.pid)
        return DevNode(node_id, port, proc, starts=starts, log_start=log_start)

    # -- running ----------------------------------------------------------------

    def dead_nodes(self) -> list[DevNode]:
        """Nodes whose process has exited."""
        return [n for n in self.nodes if not n.proc.alive()]

    def exited(self) -> list[tuple[str, Proc]]:
        """(name, process) of every node process and of the workers that
        has exited: ``n2``, ``workers``."""
        gone = [(n.node_id, n.proc) for n in self.dead_nodes()]
        if self.workers is not None and not self.workers.alive():
            gone.append(("workers", self.workers))
        return gone

    def wait(self, duration: float | None = None,
             on_exit: Callable[[str, Proc], None] | None = None) -> list[str]:
        """Block until :meth:`request_stop` or ``duration`` seconds; report
        each node and the workers if they exit meanwhile (``on_exit(name,
        process)``, once each). Returns the names of those that exited."""
        deadline = None if duration is None else time.monotonic() + duration
        reported: list[str] = []
        while True:
            for name, proc in self.exited():
                if name not in reported:
                    reported.append(name)
                    if on_exit is not None:
                        on_exit(name, proc)
            if self._stop.is_set():
                return reported
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return reported
            self._stop.wait(1.0 if left is None else min(1.0, left))

    # -- stopping ---------------------------------------------------------------

    def stop(self) -> None:
        """Workers, then nodes (SIGTERM, then SIGKILL), then our ZooKeeper. Never raises."""
        if self._stopped:
            return
        self._stopped = True
        if self.state_dir is not None:
            remove_state(self.state_dir, os.getpid())
        if self.workers is not None:
            self._end([self.workers])
        self._end([n.proc for n in self.nodes])
        if self.zookeeper is not None:
            try:
                self.zookeeper.stop()
            except Exception:
                logger.exception("dev cluster: stopping ZooKeeper failed")

    def _end(self, procs: list[Proc]) -> None:
        """SIGTERM every process at once, wait, then SIGKILL what is left of their process groups."""
        for proc in procs:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in procs:
            if proc.proc is None:
                continue
            try:
                proc.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("dev cluster: %s did not stop within %gs; killing it", proc.name, self.stop_timeout)
            # Each process leads its own group (start_new_session): this also
            # takes down any child it left behind (worker processes).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.proc.poll() is None:
                proc.proc.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
