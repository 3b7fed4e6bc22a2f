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
- ``delay``: every packet the node receives is held ``DELAY`` ± ``JITTER``
  seconds (uniform) by a user-space queue (:mod:`.netdelay`, netfilter's
  NFQUEUE): a slow link whose jitter reorders packets, as ``tc netem delay
  100ms 80ms`` makes, on kernels without ``netem``. Held where they arrive:
  held where they leave, they would throttle the sender's TCP (:mod:`.netdelay`).
- ``slow``: the node's link, both ways, at a few Mbit/s (``SLOW_RATES`` in
  turn, a token bucket on each end of its veth pair, :meth:`.netns.Namespaces.slow`):
  a large message takes seconds to cross, longer than the waits of
  docs/operations.md, "Slow links", at the lower rates.
- ``duplicate``: ``DUPLICATE`` of the packets the node sends go out twice
  (iptables' ``TEE`` target to the same destination).

TCP puts reordered packets back in order and drops duplicates: the
application sees delay, which is what these faults check it survives.
"""
from __future__ import annotations

import itertools
import sys
import time
from typing import Any

from ..errors import MiyaqError
from .explain import FENCE_DEADLINE
from .fault_kind import FaultKind
from .firewall import drop_from, drop_random, drop_to, duplicate_to, to_queue

LOSS = 0.1
"""Packet loss of a ``lossy`` link: high enough that TCP retransmits often."""
DELAY = 0.1
JITTER = 0.08
"""A ``delay`` link: 100 ms ± 80 ms per packet sent."""
DUPLICATE = 0.05
"""Share of a ``duplicate`` link's packets sent twice."""
SLOW_RATES = (1_000_000, 2_000_000, 4_000_000)
"""The rates of a ``slow`` link, bits a second, one fault after another:
1 MiB crosses in 8.4, 4.2 and 2.1 s -- around the 5 s and 3 s waits of
docs/operations.md, "Slow links"."""
QUEUE = 7
"""The netfilter queue number in a node's namespace (each namespace has its own)."""
BIND_TIMEOUT = 10.0


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


FENCED_HOLD: float = 2.0
FENCED_MIN_HOLD: float = FENCE_DEADLINE + 2.0
"""A node that lost ZooKeeper stays cut off twice the fault duration, and at
least 2 s past ``FENCE_DEADLINE``: its session (3 s) expires and fencing
(checked from 6 s in) is seen to hold."""


class ZkCut(_Filtered):
    name = "zkcut"
    hold = FENCED_HOLD
    min_hold = FENCED_MIN_HOLD
    help = "a node cannot reach ZooKeeper (its session expires) but reaches its peers, clients and workers"

    def rules(self, cluster: Any, target: str) -> list[tuple[str, tuple[str, ...]]]:
        return cluster.net.zk_rules()


class Lossy(_Filtered):
    name = "lossy"
    help = f"every packet in and out of a node dropped with probability {LOSS:g}"

    def rules(self, cluster: Any, target: str) -> list[tuple[str, tuple[str, ...]]]:
        return drop_random(LOSS)


class Delay(FaultKind):
    name = "delay"
    help = f"every packet a node receives held {DELAY * 1000:g} ms ± {JITTER * 1000:g} ms (reordering them)"

    def __init__(self) -> None:
        self._count = itertools.count(1)

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        child = cluster.run_in_netns(f"delay-{target}", f"delay{next(self._count)}-{target}", target, [
            sys.executable, "-m", "miyaq.chaos.netdelay", "--queue", str(QUEUE), "--delay", str(DELAY),
            "--jitter", str(JITTER)])
        deadline = time.monotonic() + BIND_TIMEOUT
        while f"bound queue {QUEUE}" not in child.log_tail():
            if not child.alive() or time.monotonic() > deadline:
                child.stop(5.0)
                raise MiyaqError(f"the delaying queue did not start in {target}'s namespace: {child.log_tail()}")
            time.sleep(0.05)
        cluster.net_filter(f"delay-{target}", target, [to_queue(QUEUE)])
        return {"delay": DELAY, "jitter": JITTER}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.net_unfilter(f"delay-{target}")
        cluster.stop_in_netns(f"delay-{target}")     # it lets every packet it still holds go first


class Slow(FaultKind):
    name = "slow"
    help = f"a node's link, both ways, at {' then '.join(f'{r / 1e6:g}' for r in SLOW_RATES)} Mbit/s (in turn)"

    def __init__(self) -> None:
        self._rates = itertools.cycle(SLOW_RATES)

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        rate = next(self._rates)
        cluster.slow(target, rate)
        return {"rate_bits": rate}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.unslow(target)


class Duplicate(_Filtered):
    name = "duplicate"
    holder = False
    help = f"{DUPLICATE:.0%} of the packets a node sends go out twice"

    def rules(self, cluster: Any, target: str) -> list[tuple[str, tuple[str, ...]]]:
        return [duplicate_to(host, DUPLICATE) for host in cluster.destinations(target)]


class Split(FaultKind):
    name = "split"
    hold = FENCED_HOLD
    min_hold = FENCED_MIN_HOLD
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


NETWORK_KINDS = (Deaf, Mute, ZkCut, Lossy, Delay, Slow, Duplicate, Split)
