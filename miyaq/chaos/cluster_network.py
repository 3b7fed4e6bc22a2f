"""The network faults of a local chaos cluster, applied by node id (``--partitions``).

Constraints:

* They need the run's own network namespaces (:mod:`.netns`,
  ``net.partitions``); a run without them never offers these faults
  (``LocalCluster.capabilities``).
* Each fault has its undo: ``partition``/``heal_partition``,
  ``cut_from_zk_majority``/``heal_zk_majority``, ``split``/``heal_split``,
  ``isolate``/``rejoin``, ``slow``/``unslow``, ``net_filter``/``net_unfilter`` and
  ``run_in_netns``/``stop_in_netns`` (by key).
* A node is named to the network by its slot, ``n<index>``
  (:class:`~.nodespec.NodeSpec`), ZooKeeper server ``j`` as ``z<j>``.
* Blocking calls (firewall commands, subprocess waits): use from plain threads.
"""
from __future__ import annotations

import os
from typing import Any

from .nodespec import NodeSpec
from .procs import Child
from .zkfaults import RunZooKeeper


class ClusterNetwork:
    """The network faults of :class:`~.cluster.LocalCluster`, which sets the
    attributes below."""

    net: Any
    run_dir: str
    specs: dict[str, NodeSpec]
    helpers: dict[str, Child]      # processes a fault runs in a node's namespace
    zookeeper: RunZooKeeper | None
    _zk_cut: dict[str, tuple[list[str], list[str]]]     # zkminority: node -> the two sides

    def _label(self, node_id: str) -> str:
        return f"n{self.specs[node_id].index}"

    def _others(self, nodes: list[str]) -> list[str]:
        return [self._label(n) for n in self.specs if n not in nodes]

    def partition(self, node_id: str) -> None:
        """Cut ``node_id`` off from every other node (ZooKeeper, clients and
        workers still reach it)."""
        self.net.partition([self._label(node_id)], self._others([node_id]))

    def heal_partition(self, node_id: str) -> None:
        self.net.unpartition([self._label(node_id)], self._others([node_id]))

    def cut_from_zk_majority(self, node_id: str, minority: list[int]) -> None:
        """``node_id`` and the ZooKeeper servers ``minority`` on one side, the
        other servers on the other; the node still reaches every node."""
        assert self.zookeeper is not None
        side = [self._label(node_id)] + [f"z{j}" for j in minority]
        self._zk_cut[node_id] = (side, [f"z{j}" for j in range(self.zookeeper.size) if j not in minority])
        self.net.partition(*self._zk_cut[node_id])

    def heal_zk_majority(self, node_id: str) -> None:
        side, other = self._zk_cut.pop(node_id)
        self.net.unpartition(side, other)

    def peer_hosts(self, node_id: str) -> list[str]:
        """The addresses of every other node."""
        return [s.host for s in self.specs.values() if s.node_id != node_id]

    def destinations(self, node_id: str) -> list[str]:
        """Every address ``node_id`` sends to: its peers, ZooKeeper, and the
        bridge (the run's clients and workers)."""
        return self.peer_hosts(node_id) + self.net.zk_addresses() + [self.net.gateway]

    def run_in_netns(self, key: str, name: str, node_id: str, argv: list[str]) -> Child:
        """Start a helper process (``argv``) in ``node_id``'s namespace, its
        output in ``<run>/<name>.log``; :meth:`stop_in_netns` with ``key`` stops it."""
        child = Child(name, argv, os.path.join(self.run_dir, f"{name}.log"),
                      netns=self.specs[node_id].netns).start()
        self.helpers[key] = child
        return child

    def stop_in_netns(self, key: str) -> None:
        child = self.helpers.pop(key, None)
        if child is not None:
            child.stop(5.0)

    def net_filter(self, key: str, node_id: str, rules: list[tuple[str, tuple[str, ...]]]) -> None:
        """Firewall ``rules`` in ``node_id``'s namespace, undone by :meth:`net_unfilter`."""
        self.net.filter(key, self.specs[node_id].index, rules)

    def net_unfilter(self, key: str) -> None:
        self.net.unfilter(key)

    def split(self, minority: list[str]) -> None:
        """Cut ``minority`` off from the other nodes and from ZooKeeper."""
        self.net.partition([self._label(n) for n in minority], self._others(minority))
        for node_id in minority:
            self.net_filter(f"split-{node_id}", node_id, self.net.zk_rules())

    def heal_split(self, minority: list[str]) -> None:
        for node_id in minority:
            self.net_unfilter(f"split-{node_id}")
        self.net.unpartition([self._label(n) for n in minority], self._others(minority))

    def isolate(self, node_id: str) -> None:
        self.net.isolate(self.specs[node_id].index)

    def rejoin(self, node_id: str) -> None:
        self.net.rejoin(self.specs[node_id].index)

    def slow(self, node_id: str, rate: int) -> None:
        """``node_id``'s link, both ways, at ``rate`` bits a second."""
        self.net.slow(self.specs[node_id].index, rate)

    def unslow(self, node_id: str) -> None:
        self.net.unslow(self.specs[node_id].index)
