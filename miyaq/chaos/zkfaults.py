"""The run's ZooKeeper (one server, or an ensemble with ``--zk-servers``)
and the faults of an ensemble.

:class:`RunZooKeeper` wraps :class:`~miyaq.testing.zk_ensemble.ZooKeeperEnsemble`
in ``<run>/zookeeper``, each server with a ``java`` that dies with the
run; with ``--partitions`` each server runs in a network namespace of its
own (:mod:`.netns`), so its links can be cut. Every call that forks runs
on the spawner thread (:mod:`.procs`); waits for the ensemble run on the
caller's thread.

Fault kinds (``--zk-servers`` of 3 or more):

- ``zkserver``: kill -9 one server that is not the ensemble's leader; the
  nodes connected to it move to another one with their sessions.
- ``zkleader``: kill -9 the ensemble's leader server; the others elect a
  new one.
- ``zkquorum``: kill -9 a majority of the servers: the ensemble serves no
  one until they are back. The cluster must keep serving tasks on the ring
  it has (no node fences itself: every node hears the others, none has
  ZooKeeper) and refuse ring changes: before the heal the fault asks for
  one (``RingAdmin.set_weight`` of a node to its own weight) and records
  whether it was refused (``ring_change``); an accepted one fails the run.
  Healed by starting the servers again; sessions resume.
- ``zkminority`` (also ``--partitions``): a node and a minority of the
  servers are cut off from the servers' majority -- the node still reaches
  its peers, clients and workers, and the minority's servers still reach
  the other nodes. The minority's servers stop serving; the node cannot
  reach one that serves, its session expires on the majority, and the ring
  goes on without it: it must fence itself (checked like ``zkcut``).

One ZooKeeper fault at a time (``zk`` included); the first three take no
node away, ``zkminority`` takes its node.
"""
from __future__ import annotations

import itertools
import logging
import os
from typing import Any

from ..errors import MiyaqError
from ..testing.zk_ensemble import ZooKeeperEnsemble
from .fault_kind import FaultKind
from .netfaults import FENCED_HOLD, FENCED_MIN_HOLD
from .procs import java_wrapper, spawn

logger = logging.getLogger(__name__)

START_TIMEOUT = 60.0
RING_CHANGE_TIMEOUT = 3.0


class RunZooKeeper:
    """The run's ZooKeeper servers (see the module docstring). ``net`` is the
    run's :class:`~.netns.Loopback` or :class:`~.netns.Namespaces`."""

    def __init__(self, run_dir: str, servers: int, net: Any) -> None:
        directory = os.path.join(run_dir, "zookeeper")
        os.makedirs(directory, exist_ok=True)
        addresses, namespaces = net.zk_placement(servers)
        javas = [java_wrapper(directory, ns) for ns in namespaces]
        self.ensemble = ZooKeeperEnsemble(servers, workdir=directory, java=javas, addresses=addresses)

    @property
    def hosts(self) -> str:
        """The nodes' connection string (every server)."""
        return self.ensemble.hosts

    @property
    def size(self) -> int:
        return self.ensemble.size

    def start(self) -> None:
        """Start every server that is not running; return once all serve."""
        for i in range(self.size):
            self._start_process(i)
        self.ensemble.wait_for_quorum(START_TIMEOUT, everyone=True)

    def _start_process(self, i: int) -> None:
        server = self.ensemble.servers[i]
        if not server.running:
            # Forks on the spawner thread; waits there only until the JVM answers.
            spawn(lambda: server.start(START_TIMEOUT, wait_serving=self.size == 1))

    def stop(self) -> None:
        self.ensemble.stop()

    def kill(self, servers: list[int]) -> None:
        for i in servers:
            self.ensemble.kill(i)

    def restart(self, servers: list[int]) -> None:
        """Start the given servers again (same data); returns once every running server serves."""
        for i in servers:
            self._start_process(i)
        self.ensemble.wait_for_quorum(START_TIMEOUT, everyone=True)

    def leader(self) -> int | None:
        return self.ensemble.leader()

    def running(self) -> list[int]:
        return self.ensemble.running()

    def close(self) -> None:
        self.ensemble.close()


def server_indexes(target: str) -> list[int]:
    """``zk0+zk2`` -> ``[0, 2]``."""
    return [int(part[2:]) for part in target.split("+")]


def try_ring_change(cluster: Any) -> str:
    """Ask for a ring change (a node's weight set to what it is) and say how
    it went: ``refused: ...`` or ``accepted: ...``."""
    from ..cluster.ring_admin import RingAdmin
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)    # its refused connections: the answer says it
    node_id = cluster.node_ids[0]
    try:
        with RingAdmin(cluster.zk_hosts, cluster.name, connect_timeout=RING_CHANGE_TIMEOUT,
                       timeout=RING_CHANGE_TIMEOUT, session_timeout=RING_CHANGE_TIMEOUT) as admin:
            return f"accepted: {admin.set_weight(node_id, 1.0)}"
    except MiyaqError as exc:
        return f"refused: {exc.code}: {str(exc).splitlines()[0][:200]}"


class _EnsembleFault(FaultKind):
    holder = False

    def choose(self, zk: RunZooKeeper) -> list[str]:
        raise NotImplementedError

    def targets(self, cluster: Any, down: set[str], ctx: dict[str, Any]) -> list[str]:
        zk = cluster.zookeeper
        if ctx.get("zk_down") or zk is None or zk.size < 3 or len(zk.running()) < zk.size:
            return []
        return self.choose(zk)

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        cluster.zookeeper.kill(server_indexes(target))
        return {}

    def heal(self, cluster: Any, target: str) -> dict[str, Any] | None:
        cluster.zookeeper.restart(server_indexes(target))
        return None


class ZkServer(_EnsembleFault):
    name = "zkserver"
    help = "kill -9 one ZooKeeper server that is not the ensemble's leader (--zk-servers 3+)"

    def choose(self, zk: RunZooKeeper) -> list[str]:
        leader = zk.leader()
        return [f"zk{i}" for i in range(zk.size) if i != leader]


class ZkLeader(_EnsembleFault):
    name = "zkleader"
    help = "kill -9 the ZooKeeper ensemble's leader server (--zk-servers 3+)"

    def choose(self, zk: RunZooKeeper) -> list[str]:
        leader = zk.leader()
        return [] if leader is None else [f"zk{leader}"]


class ZkQuorum(_EnsembleFault):
    name = "zkquorum"
    help = ("kill -9 a majority of the ZooKeeper servers: the ensemble loses its quorum, ring changes "
            "must be refused (--zk-servers 3+)")

    def choose(self, zk: RunZooKeeper) -> list[str]:
        majority = zk.size // 2 + 1
        return ["+".join(f"zk{j % zk.size}" for j in range(i, i + majority)) for i in range(zk.size)]

    def heal(self, cluster: Any, target: str) -> dict[str, Any] | None:
        answer = try_ring_change(cluster)
        if answer.startswith("accepted"):
            logger.error("a ring change was accepted while the ZooKeeper ensemble had no quorum: %s", answer)
        cluster.zookeeper.restart(server_indexes(target))
        return {"ring_change": answer}


class ZkMinority(FaultKind):
    name = "zkminority"
    hold = FENCED_HOLD
    min_hold = FENCED_MIN_HOLD
    help = ("a node and a minority of the ZooKeeper servers cut off from the servers' majority; the node "
            "still reaches its peers (--partitions, --zk-servers 3+)")

    def __init__(self) -> None:
        self._turn = itertools.count()

    def targets(self, cluster: Any, down: set[str], ctx: dict[str, Any]) -> list[str]:
        zk = cluster.zookeeper
        if ctx.get("zk_down") or zk is None or zk.size < 3 or len(zk.running()) < zk.size:
            return []
        return super().targets(cluster, down, ctx)

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        size = cluster.zookeeper.size
        first = next(self._turn)          # each time another minority of servers
        minority = [(first + j) % size for j in range((size - 1) // 2)]
        cluster.cut_from_zk_majority(target, minority)
        return {"zk_minority": [f"zk{j}" for j in minority]}

    def heal(self, cluster: Any, target: str) -> dict[str, Any] | None:
        cluster.heal_zk_majority(target)
        return None


ZK_KINDS = (ZkServer, ZkLeader, ZkQuorum, ZkMinority)
