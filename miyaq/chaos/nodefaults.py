"""Faults on a whole process: a node killed (``kill``, ``leader``,
``wipe``) or stopped (``pause``), a worker killed in the middle of a task
(``worker``), ZooKeeper stopped (``zk``), and a node cut off from its peers
(``partition``) or from everything (``isolate``). The default mix, with
the two cuts that ``--partitions`` adds.
"""
from __future__ import annotations

from typing import Any

from .fault_kind import FaultKind


class Kill(FaultKind):
    name = "kill"
    help = "kill -9 a random node, restart it (same data dir) after the fault duration"

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        pid = cluster.procs[target].pid
        cluster.kill_node(target)
        return {"pid": pid}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.start_node(target)


class KillLeader(Kill):
    name = "leader"
    help = "kill -9 the ring's leader, restart it after the fault duration"

    def targets(self, cluster: Any, down: set[str], ctx: dict[str, Any]) -> list[str]:
        leader = cluster.leader()
        return [leader] if leader and leader not in down and cluster.up(leader) else []


class Wipe(Kill):
    name = "wipe"
    help = "kill -9 a node and restart it with its data dir emptied"

    def heal(self, cluster: Any, target: str) -> None:
        cluster.start_node(target, wipe=True)


class Pause(FaultKind):
    name = "pause"
    help = "SIGSTOP a node for the pause duration (longer than its ZooKeeper session), then SIGCONT"

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        cluster.pause_node(target)
        return {"pid": cluster.procs[target].pid}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.resume_node(target)


class WorkerKill(FaultKind):
    name = "worker"
    holder = False
    help = "kill -9 a worker in the middle of a task; start a new worker after 1 s"

    def targets(self, cluster: Any, down: set[str], ctx: dict[str, Any]) -> list[str]:
        busy = ctx.get("busy_workers", set())     # names; pids from records without one
        live = cluster.live_workers()
        if len(live) < 2 and not ctx.get("unsafe"):
            return []    # the last worker stays, or nothing would drain
        return [w.name for w in live if w.name in busy or w.pid in busy]

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        worker = next(w for w in cluster.workers if w.name == target)
        pid = worker.pid
        worker.kill()
        return {"pid": pid}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.start_worker()


class ZooKeeperStop(FaultKind):
    name = "zk"
    holder = False
    help = "stop ZooKeeper for the fault duration, then start it again (same data)"

    def targets(self, cluster: Any, down: set[str], ctx: dict[str, Any]) -> list[str]:
        return [] if ctx.get("zk_down") else ["zookeeper"]

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        cluster.stop_zk()
        return {}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.start_zk()


class Partition(FaultKind):
    name = "partition"
    help = "cut a node off from the other nodes (not from ZooKeeper, clients or workers)"

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        cluster.partition(target)
        return {}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.heal_partition(target)


class Isolate(FaultKind):
    name = "isolate"
    help = "cut a node off from everything (its link goes down)"

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        cluster.isolate(target)
        return {}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.rejoin(target)


NODE_KINDS = (Kill, Pause, KillLeader, WorkerKill, ZooKeeperStop, Wipe, Partition, Isolate)
