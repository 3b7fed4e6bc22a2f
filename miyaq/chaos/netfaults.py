"""Network faults beyond a whole-node partition (``--partitions`` only).

Each is made inside the nodes' own namespaces (:mod:`.netns`,
:mod:`.firewall`); clients and workers, in the run's namespace, still
reach every node unless the fault says otherwise.

- ``deaf``: the node hears nothing from the other nodes (their packets to
  it are dropped) while they still hear it — a one-way partition.
- ``mute``: the reverse: the node hears them, they do not hear it.
- ``zkcut``: the node cannot reach ZooKeeper but reaches every peer, client
  and worker: its session expires and the ring goes on without it.
- ``split``: a minority of the nodes (one of three, two of five) is cut
  off from the majority and from ZooKeeper, which stays with the
  majority; both sides still reach the workers and clients. The minority
  must stop dispatching the tasks it no longer holds (epoch fencing), and
  nothing accepted on either side may be lost when the split heals.
- ``lossy``: every packet in and out of the node (peers, ZooKeeper,
  clients, workers) is dropped with probability ``LOSS``.

TCP hides duplicated and reordered packets from the application, so a
duplicating or reordering link shows only as delay; this kernel build has
no ``netem`` qdisc, and no delay fault is made (docs/chaos.md).
"""
from __future__ import annotations

from typing import Any

from .faults import FaultKind
from .firewall import drop_from, drop_random, drop_to

LOSS = 0.1
"""Packet loss of a ``lossy`` link: high enough that TCP retransmits often."""


def minority_size(nodes: int) -> int:
    return max(1, (nodes - 1) // 2)


class _Filtered(FaultKind):
    """A fault made of firewall rules in the target's namespace."""

    def rules(self, cluster: Any, target: str) -> list[tuple[str, tuple[str, ...]]]:
        raise NotImplementedError

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        cluster.net_filter(f"{self.name}-{target}", target, self.rules(cluster, target))
        return {}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.net_unfilter(f"{self.name}-{target}")


class Deaf(_Filtered):
    name = "deaf"
    help = "one-way partition: a node hears nothing from the other nodes; they still hear it"

    def rules(self, cluster: Any, target: str) -> list[tuple[str, tuple[str, ...]]]:
        return [drop_from(host) for host in cluster.peer_hosts(target)]


class Mute(_Filtered):
    name = "mute"
    help = "one-way partition: the other nodes hear nothing from a node; it still hears them"

    def rules(self, cluster: Any, target: str) -> list[tuple[str, tuple[str, ...]]]:
        return [drop_to(host) for host in cluster.peer_hosts(target)]


class ZkCut(_Filtered):
    name = "zkcut"
    help = "a node cannot reach ZooKeeper (its session expires) but reaches its peers, clients and workers"

    def rules(self, cluster: Any, target: str) -> list[tuple[str, tuple[str, ...]]]:
        return cluster.net.zk_rules()


class Lossy(_Filtered):
    name = "lossy"
    help = f"every packet in and out of a node dropped with probability {LOSS:g}"

    def rules(self, cluster: Any, target: str) -> list[tuple[str, tuple[str, ...]]]:
        return drop_random(LOSS)


class Split(FaultKind):
    name = "split"
    help = "a minority of the nodes cut off from the majority and from ZooKeeper; both reach workers and clients"

    def size(self, cluster: Any) -> int:
        return minority_size(len(cluster.node_ids))

    def targets(self, cluster: Any, down: set[str], ctx: dict[str, Any]) -> list[str]:
        up = [n for n in cluster.node_ids if n not in down and cluster.up(n)]
        k = self.size(cluster)
        if len(up) < len(cluster.node_ids) or len(cluster.node_ids) < 3:
            return []          # a split of a cluster that is not whole is not a minority/majority split
        return ["+".join(up[i:i + k]) for i in range(0, len(up) - k + 1)]

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        minority = target.split("+")
        cluster.split(minority)
        return {"minority": minority}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.heal_split(target.split("+"))


NETWORK_KINDS = (Deaf, Mute, ZkCut, Lossy, Split)
