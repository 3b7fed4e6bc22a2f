"""When a dev cluster is ready: the waits of
:meth:`DevCluster.start <miyaq.devcluster.cluster.DevCluster.start>` until every node
is in the published ring with one of them leading and answers STATUS on its
service endpoint, then until every node has the workers registered.

Each wait polls (every 0.2 s) within ``ready_timeout`` and raises
``Timeout`` saying how far it got, raises ``MiyaqError`` with the end of
its log when a node or the workers exit meanwhile (a node that lost one of
its ports to another process is first started again on another block:
``start_again``), and returns ``False``
as soon as the cluster is asked to stop. The ring is read from ZooKeeper
(:class:`~miyaq.cluster.ring_admin.RingAdmin`, within
``zk_connect_timeout``); a ZooKeeper that cannot be reached is
``Unavailable``, naming the logs.

:class:`ReadyWaits` is :class:`~miyaq.devcluster.cluster.DevCluster`'s base: the
cluster starts and stops the processes, this part tells when they serve.
Blocking (``time.sleep``-like waits): use from a plain thread.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from miyaq.cluster.ring_admin import RingAdmin
from miyaq.cluster.zk_auth import ZkAuth
from miyaq.devcluster.node import DevNode
from miyaq.errors import MiyaqError, Timeout, Unavailable
from miyaq.testing.harness import Proc

__all__ = ["ReadyWaits"]


class ReadyWaits:
    """The waits of a :class:`~miyaq.devcluster.cluster.DevCluster`'s start (its
    base). The cluster sets the attributes below and gives its nodes,
    ``zk_hosts`` (where its ZooKeeper is), ``dead_nodes`` (its node
    processes that exited) and ``start_again`` (a node that exited because
    another process took one of its ports, on another block)."""

    nodes: list[DevNode]
    cluster: str
    zk_auth: ZkAuth | None
    zk_connect_timeout: float
    ready_timeout: float
    log_dir: str
    workers_app: str | None
    worker_processes: int
    key: str | None
    server_key: str | None
    _stop: threading.Event
    dead_nodes: Callable[[], list[DevNode]]
    start_again: Callable[[DevNode], bool]

    if TYPE_CHECKING:       # the cluster's property: its ZooKeeper's, or the one given
        @property
        def zk_hosts(self) -> str: ...

    def _wait_ready(self) -> bool:
        wanted = {n.node_id for n in self.nodes}
        admin = RingAdmin(self.zk_hosts, self.cluster, connect_timeout=self.zk_connect_timeout, timeout=10.0,
                          auth=self.zk_auth)
        try:
            return self._poll_ring(admin, wanted)
        except Unavailable as exc:
            raise Unavailable(f"{exc.message}; the nodes cannot form a ring without it "
                              f"(logs in {self.log_dir})", hosts=self.zk_hosts) from None
        finally:
            admin.close()

    def _poll_ring(self, admin: RingAdmin, wanted: set[str]) -> bool:
        """Poll until ``wanted`` are all in the ring with one of them leading and every node serving."""
        deadline = time.monotonic() + self.ready_timeout
        last = "no ring yet"
        while True:
            if self._stop.is_set():
                return False
            dead = [n for n in self.dead_nodes() if not self.start_again(n)]
            if dead:
                node = dead[0]
                tries = f" (started {node.starts} times, each on another block)" if node.starts > 1 else ""
                raise MiyaqError(f"node {node.node_id} exited with code {node.exit_code} "
                                 f"during start{tries}; its log ({node.proc.log_path}) ends:\n"
                                 f"{node.proc.log_tail(30)}")
            status = admin.status()
            in_ring = {k for k, m in status["members"].items() if m["in_ring"]}
            last = f"epoch {status['epoch']}, in ring {sorted(in_ring)}, leader {status['leader']}"
            if wanted <= in_ring and status["leader"] in wanted and self._all_serving():
                return True
            if time.monotonic() >= deadline:
                raise Timeout(f"the dev cluster was not ready within {self.ready_timeout:g}s "
                              f"({last}); logs in {self.log_dir}")
            self._stop.wait(0.2)

    def _wait_workers(self, workers: Proc) -> bool:
        """Poll until every node has the workers registered (each worker
        process registers with every node); raise if they exit first (an
        APP that does not import, a bad option), naming their log."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self._stop.is_set():
                return False
            if not workers.alive():
                raise MiyaqError(f"the workers ({self.workers_app}) exited with code {workers.exit_code} during "
                                 f"start; their log ({workers.log_path}) ends:\n{workers.log_tail(30)}")
            registered = self._workers_registered()
            if registered >= self.worker_processes:
                return True
            if time.monotonic() >= deadline:
                raise Timeout(f"the workers ({self.workers_app}) had not registered with every node within "
                              f"{self.ready_timeout:g}s ({registered} of {self.worker_processes} on the node with "
                              f"fewest); their log: {workers.log_path}")
            self._stop.wait(0.2)

    def _workers_registered(self) -> int:
        """Workers registered with the node that has fewest (0 if a node does not answer)."""
        statuses = self._statuses()
        if not statuses:
            return 0
        try:
            return min(int(status["totals"]["workers"]) for status in statuses)
        except (KeyError, TypeError, ValueError):
            return 0

    def _all_serving(self) -> bool:
        """True when every node answers STATUS on its service endpoint."""
        return self._statuses() is not None

    def _statuses(self) -> list[dict[str, Any]] | None:
        """Every node's STATUS, asked on its service endpoint; None as soon as one does not answer."""
        from miyaq.client.client import Client
        statuses = []
        for node in self.nodes:
            client = Client(node.service, request_timeout=1.0, green=False, key=self.key,
                            server_key=self.server_key)
            try:
                statuses.append(client.status())
            except MiyaqError:
                return None
            finally:
                client.close(flush=False)
        return statuses
