"""What the nemesis can do: one small class per fault kind.

A kind names its targets (given the nodes already down), breaks something
(:meth:`FaultKind.begin`) and repairs it (:meth:`FaultKind.heal`); the
nemesis (:mod:`.nemesis`) decides when, keeps the safety budget and
records everything. ``holder=True`` kinds take a node away as a holder of
tasks (it counts against the budget of N−1 nodes down at once).

``begin`` and ``heal`` block (a kill waits for the process to be reaped,
a restart of ZooKeeper until it answers) and may raise ``MiyaqError``;
``heal`` must be safe to call once after ``begin`` succeeded.
"""
from __future__ import annotations

import random
from typing import Any, ClassVar

from ..errors import ConfigError

KINDS_DEFAULT = ("kill", "pause", "leader", "worker", "zk", "wipe")
KINDS_NETWORK = ("partition", "isolate", "deaf", "mute", "zkcut", "lossy", "delay", "duplicate", "split")
KINDS_ZK = ("zkserver", "zkleader", "zkquorum")
"""With ``--zk-servers`` 3 or more (in the default mix then)."""
KINDS_ZK_NETWORK = ("zkminority",)
"""With ``--zk-servers`` 3 or more and ``--partitions``."""
ZK_FAULTS = ("zk", *KINDS_ZK, *KINDS_ZK_NETWORK)
"""Kinds that break ZooKeeper: one at a time."""
KINDS_HOST = ("clock", "diskfull")
"""Not in the default mix: ``clock`` needs faketime, ``diskfull`` root."""


class FaultKind:
    name: ClassVar[str] = ""
    holder: ClassVar[bool] = True
    """True: the target node stops being a usable holder while the fault lasts."""
    hold: ClassVar[float] = 1.0
    """How long the fault stays in place, in fault durations (``--fault-duration``)."""
    min_hold: ClassVar[float] = 0.0
    """...and at least this many seconds."""
    help: ClassVar[str] = ""

    def lasts(self, duration: float) -> float:
        """Seconds this fault stays in place for a ``--fault-duration`` of ``duration``."""
        return max(duration * self.hold, self.min_hold)

    def targets(self, cluster: Any, down: set[str], ctx: dict[str, Any]) -> list[str]:
        """Nodes this fault may hit now (default: every running node not down).
        A target naming several nodes joins them with ``+``."""
        return [n for n in cluster.node_ids if n not in down and cluster.up(n)]

    def size(self, cluster: Any) -> int:
        """How many nodes one fault of this kind takes away (the budget)."""
        return 1 if self.holder else 0

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        """Break ``target``; returns details for the history."""
        raise NotImplementedError

    def heal(self, cluster: Any, target: str) -> dict[str, Any] | None:
        """Repair ``target``; may return details for the history's heal record."""
        raise NotImplementedError


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
        busy = ctx.get("busy_pids", set())
        live = cluster.live_workers()
        if len(live) < 2 and not ctx.get("unsafe"):
            return []    # the last worker stays, or nothing would drain
        return [w.name for w in live if w.pid in busy]

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


from .hostfaults import HOST_KINDS  # noqa: E402 - they subclass FaultKind, defined above
from .netfaults import NETWORK_KINDS  # noqa: E402
from .zkfaults import ZK_KINDS  # noqa: E402

KINDS: dict[str, FaultKind] = {k.name: k() for k in (Kill, Pause, KillLeader, WorkerKill, ZooKeeperStop, Wipe,
                                                      Partition, Isolate, *NETWORK_KINDS, *HOST_KINDS, *ZK_KINDS)}


def parse_kinds(text: str | None, partitions: bool, zk_servers: int = 1) -> list[str]:
    """``--faults`` to a list of kinds: comma-separated names, ``all``,
    ``none``, or empty for the default mix (plus the network kinds with
    ``--partitions``, the ensemble's with ``--zk-servers`` 3 or more)."""
    ensemble = zk_servers >= 3
    if text is None or not text.strip():
        return (list(KINDS_DEFAULT) + (list(KINDS_NETWORK) if partitions else [])
                + (list(KINDS_ZK) if ensemble else []) + (list(KINDS_ZK_NETWORK) if ensemble and partitions else []))
    text = text.strip().lower()
    if text == "none":
        return []
    if text == "all":
        return list(KINDS_DEFAULT) + list(KINDS_NETWORK) + list(KINDS_HOST) + list(KINDS_ZK) + list(KINDS_ZK_NETWORK)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"unknown fault kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    return list(dict.fromkeys(kinds))


def choose(kinds: list[str], rng: random.Random, injected: dict[str, int] | None = None) -> list[FaultKind]:
    """The enabled kinds in the order the nemesis tries them: random, or
    (``injected``: how many times each kind was injected so far) rounds:
    only the kinds injected fewest times, in the given order -- a kind that
    has to wait for the node budget is waited for, not passed over by the
    kinds that need none, and every kind comes once a round."""
    order = list(kinds)
    if injected is None:
        rng.shuffle(order)
    elif order:
        least = min(injected.get(k, 0) for k in order)
        order = [k for k in order if injected.get(k, 0) == least]
    return [KINDS[k] for k in order]
