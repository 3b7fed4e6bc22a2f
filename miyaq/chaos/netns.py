"""Where a chaos run's nodes live on the network: loopback, or one network
namespace per node (``--partitions``) so the nemesis can cut links.

:class:`Loopback` is the default: every node and ZooKeeper server on
127.0.0.1, no partitions.

:class:`Namespaces` (root on Linux, ``ip`` from iproute2): a bridge
``<prefix>br`` in the run's own namespace with ``10.X.Y.1/24``; node *i*
in namespace ``<prefix>-n<i>`` behind a veth pair, with ``10.X.Y.(10+i)``;
ZooKeeper server *j* likewise in ``<prefix>-z<j>`` with
``10.X.Y.(100+j)``, so the links between ZooKeeper servers can be cut as
well as a node's. The producer and workers stay in the run's namespace and
reach the nodes through the bridge. Faults:

- :meth:`Namespaces.partition`: blackhole routes, inside the namespaces,
  between two groups (nodes ``n<i>`` and ZooKeeper servers ``z<j>``, both
  directions; packets to the other side are discarded, nothing else
  changes). No iptables needed.
- :meth:`Namespaces.isolate`: the node's veth goes down: it reaches
  nothing (peers, ZooKeeper, clients, workers) until :meth:`rejoin`.
- :meth:`Namespaces.filter` (iptables rules in a node's namespace, see
  :mod:`.firewall`): one-way partitions, a node cut off from ZooKeeper
  (:meth:`zk_rules`), a lossy link; :meth:`unfilter` removes them.
- :meth:`Namespaces.slow`: a token bucket (``tc qdisc ... tbf``) on both
  ends of the node's veth pair: what the node sends and what it receives
  each cross at ``rate`` bits a second, the excess queued (at most
  ``SLOW_LATENCY`` of it, then dropped: a bounded queue, as a slow
  router's) -- a slow link, not a delaying one: a large message takes
  ``size / rate`` to cross whatever the round trip. The bucket on the
  node's own end shapes its sends as a slow NIC would (TCP Small Queues
  pace the socket to it; the NFQUEUE hold of :mod:`.netdelay` does not
  apply), the one on the bridge's end what reaches it.

:meth:`unpartition`, :meth:`rejoin`, :meth:`unfilter` and :meth:`unslow` undo one fault;
:meth:`heal` undoes every fault still in place.

Only namespaces, links and routes this object made are touched, and only
inside those namespaces (plus the bridge it made); :meth:`close` deletes
them all and never raises. The subnet is chosen so it overlaps no address
or route of this host. Every ``ip`` call has a timeout.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import random
import shutil
import subprocess
import sys

from ..errors import ConfigError, MiyaqError
from .firewall import Firewall, Rule, check_iptables, drop_from, drop_to

logger = logging.getLogger(__name__)

IP_TIMEOUT = 10.0
NO_QDISC = "handle of zero"
"""In tc's answer to deleting a root qdisc that is not there."""
SLOW_BURST = 16 * 1024
"""Bytes a slow link sends at once before its rate holds them (tbf's bucket):
about ten packets, a tenth of a second at 1 Mbit/s."""
SLOW_LATENCY_MS = 1000
"""The longest a packet waits in a slow link's queue: the queue holds at most
a second of the rate (plus the bucket); a packet beyond it is dropped."""


class Loopback:
    """Every node on 127.0.0.1 in the run's own namespace; no partitions."""

    partitions = False

    def host(self, index: int) -> str:
        return "127.0.0.1"

    def netns(self, index: int) -> str | None:
        return None

    def zk_placement(self, servers: int) -> tuple[list[str] | None, list[str | None]]:
        """Where ZooKeeper server ``j`` runs: (addresses or None for
        127.0.0.1, the namespace of each)."""
        return None, [None] * servers

    def heal(self) -> None:
        pass

    def close(self) -> None:
        pass


def _ip(*args: str, check: bool = True) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MiyaqError(f"ip {' '.join(args)} failed: {exc}") from None
    if check and done.returncode != 0:
        raise MiyaqError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _tc(*args: str) -> None:
    try:
        done = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MiyaqError(f"tc {' '.join(args)} failed: {exc}") from None
    if done.returncode != 0:
        raise MiyaqError(f"tc {' '.join(args)} failed: {done.stderr.strip()}")


def tbf(rate: int) -> list[str]:
    """The token bucket of a slow link of ``rate`` bits a second (at least
    8,000: a kilobyte a second), as ``tc qdisc`` arguments."""
    if not isinstance(rate, int) or rate < 8000:
        raise ConfigError(f"a slow link's rate is a whole number of bits a second, at least 8000, not {rate!r}")
    return ["tbf", "rate", f"{rate}bit", "burst", str(SLOW_BURST), "latency", f"{SLOW_LATENCY_MS}ms"]


def check_supported() -> None:
    """Raise ConfigError unless namespaces can be made here (Linux, root, ip)."""
    if not sys.platform.startswith("linux"):
        raise ConfigError("--partitions needs Linux network namespaces")
    if os.geteuid() != 0:
        raise ConfigError("--partitions needs root (it creates network namespaces and a bridge)")
    if shutil.which("ip") is None:
        raise ConfigError("--partitions needs the ip command (apt-get install iproute2)")


def _pick_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    used = _ip("-4", "addr", "show", check=False) + _ip("-4", "route", "show", "table", "all", check=False)
    taken = []
    for word in used.split():
        try:
            taken.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    for _ in range(50):
        net = ipaddress.IPv4Network(f"10.{rng.randint(200, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken if t.version == 4 and t.prefixlen > 0):
            return net
    raise MiyaqError("no free 10.x.y.0/24 subnet found for the chaos bridge")


class Namespaces:
    """``count`` node namespaces and ``zk_servers`` ZooKeeper namespaces on
    one bridge (see the module docstring). Groups in :meth:`partition` are
    labels: ``n<i>`` for node index *i*, ``z<j>`` for ZooKeeper server *j*."""

    partitions = True

    def __init__(self, count: int, rng: random.Random | None = None, zk_servers: int = 1) -> None:
        check_supported()
        check_iptables()
        rng = rng or random.Random()
        self.prefix = f"mqc{rng.randrange(16 ** 5):05x}"
        self.count = count
        self.zk_servers = zk_servers
        self.bridge = f"{self.prefix}br"
        self.subnet = _pick_subnet(rng)
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self.addresses = {f"n{i}": str(hosts[9 + i]) for i in range(count)}
        self.addresses.update({f"z{j}": str(hosts[99 + j]) for j in range(zk_servers)})
        self._made: list[str] = []           # namespaces made, for close()
        self._bridge_made = False
        self._blackholes: set[tuple[str, str]] = set()     # (from label, to label)
        self._isolated: set[int] = set()
        self._slowed: set[int] = set()
        self.firewall = Firewall()
        self._filters: dict[str, list[Rule]] = {}

    # -- layout -----------------------------------------------------------------------
    def host(self, index: int) -> str:
        return self.addresses[f"n{index}"]

    def netns(self, index: int) -> str:
        return f"{self.prefix}-n{index}"

    def _ns(self, label: str) -> str:
        return f"{self.prefix}-{label}"

    def _veths(self, label: str | int) -> tuple[str, str]:
        label = label if isinstance(label, str) else f"n{label}"
        return f"{self.prefix}h{label}", f"{self.prefix}p{label}"

    def zk_placement(self, servers: int) -> tuple[list[str] | None, list[str | None]]:
        labels = [f"z{j}" for j in range(servers)]
        return [self.addresses[x] for x in labels], [self._ns(x) for x in labels]

    def setup(self) -> Namespaces:
        """Make the bridge and the namespaces; on failure undo what was made."""
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._bridge_made = True
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for label, address in self.addresses.items():
                ns = self._ns(label)
                outside, inside = self._veths(label)
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except MiyaqError:
            self.close()
            raise
        logger.info("network namespaces %s-n0..%d and -z0..%d on bridge %s (%s)", self.prefix, self.count - 1,
                    self.zk_servers - 1, self.bridge, self.subnet)
        return self

    # -- faults -----------------------------------------------------------------------
    def partition(self, side: list[str], other: list[str]) -> None:
        """Drop every packet between the members of ``side`` and of ``other`` (labels)."""
        for a in side:
            for b in other:
                for src, dst in ((a, b), (b, a)):
                    if (src, dst) not in self._blackholes:
                        _ip("-n", self._ns(src), "route", "add", "blackhole", f"{self.addresses[dst]}/32")
                        self._blackholes.add((src, dst))

    def unpartition(self, side: list[str], other: list[str]) -> None:
        """Undo :meth:`partition` for these two groups."""
        for a in side:
            for b in other:
                for src, dst in ((a, b), (b, a)):
                    if (src, dst) in self._blackholes:
                        _ip("-n", self._ns(src), "route", "del", "blackhole", f"{self.addresses[dst]}/32")
                        self._blackholes.discard((src, dst))

    def rejoin(self, index: int) -> None:
        """Undo :meth:`isolate`."""
        if index in self._isolated:
            _ip("link", "set", self._veths(index)[0], "up")
            self._isolated.discard(index)

    def isolate(self, index: int) -> None:
        """Cut node ``index`` off from everything (its link goes down)."""
        _ip("link", "set", self._veths(index)[0], "down")
        self._isolated.add(index)

    def _slow_ends(self, index: int) -> list[tuple[list[str], str]]:
        """Each end of node ``index``'s veth pair as (``tc``'s namespace
        arguments, device): the node's own (in its namespace), the bridge's."""
        outside, inside = self._veths(index)
        return [(["-n", self.netns(index)], inside), ([], outside)]

    def slow(self, index: int, rate: int) -> None:
        """Node ``index``'s link both ways at ``rate`` bits a second (a
        token bucket on each end, see the module docstring); a second call
        changes the rate. On failure the link is left as it was."""
        spec = tbf(rate)
        try:
            for netns, dev in self._slow_ends(index):
                _tc(*netns, "qdisc", "replace", "dev", dev, "root", *spec)
        except MiyaqError:
            self._unslow(index, check=False)
            raise
        self._slowed.add(index)

    def unslow(self, index: int) -> None:
        """Undo :meth:`slow` (what the queues still hold is dropped: TCP sends it again)."""
        if index in self._slowed:
            self._unslow(index, check=True)
            self._slowed.discard(index)

    def _unslow(self, index: int, check: bool) -> None:
        for netns, dev in self._slow_ends(index):
            try:
                _tc(*netns, "qdisc", "del", "dev", dev, "root")
            except MiyaqError as exc:
                if check and NO_QDISC not in str(exc):
                    raise
                logger.debug("removing a slow link: %s", exc)

    def zk_addresses(self) -> list[str]:
        return [self.addresses[f"z{j}"] for j in range(self.zk_servers)]

    def zk_rules(self) -> list[tuple[str, tuple[str, ...]]]:
        """The rules that cut a node off from every ZooKeeper server."""
        return [rule for address in self.zk_addresses() for rule in (drop_to(address), drop_from(address))]

    def filter(self, key: str, index: int, rules: list[tuple[str, tuple[str, ...]]]) -> None:
        """Add ``rules`` ((chain, spec) pairs) in node ``index``'s namespace,
        remembered under ``key`` for :meth:`unfilter`."""
        made = self._filters.setdefault(key, [])
        for chain, spec in rules:
            made.append(self.firewall.add(self.netns(index), chain, *spec))

    def unfilter(self, key: str) -> None:
        for rule in reversed(self._filters.pop(key, [])):
            self.firewall.remove(rule)

    def heal(self) -> None:
        """Undo every partition, isolation and filter; never raises."""
        self._filters.clear()
        self.firewall.clear()
        for src, dst in sorted(self._blackholes):
            try:
                _ip("-n", self._ns(src), "route", "del", "blackhole", f"{self.addresses[dst]}/32")
            except MiyaqError as exc:
                logger.warning("healing a partition: %s", exc)
        self._blackholes.clear()
        for index in sorted(self._isolated):
            try:
                _ip("link", "set", self._veths(index)[0], "up")
            except MiyaqError as exc:
                logger.warning("healing an isolation: %s", exc)
        self._isolated.clear()
        for index in sorted(self._slowed):
            self._unslow(index, check=False)
        self._slowed.clear()

    def close(self) -> None:
        """Delete the namespaces (their veths go with them) and the bridge.
        Stop the processes inside first. Never raises."""
        self._filters.clear()
        self.firewall.rules.clear()      # they go with their namespaces
        for ns in self._made:
            try:
                _ip("netns", "del", ns)
            except MiyaqError as exc:
                logger.warning("%s", exc)
        self._made = []
        if self._bridge_made:
            try:
                _ip("link", "del", self.bridge)
            except MiyaqError as exc:
                logger.warning("%s", exc)
            self._bridge_made = False
