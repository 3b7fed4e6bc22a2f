"""The ``slow`` chaos fault: a node's link, both ways, through a token bucket
(``tc qdisc ... tbf``) on each end of its veth pair. The bucket's arguments,
the fault's rates in turn, and (root: network namespaces) the buckets put
in place, carrying the node's packets, changed and taken away again."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from miyaq.chaos.faults import KINDS, parse_kinds
from miyaq.chaos.netfaults import SLOW_RATES
from miyaq.chaos.netns import SLOW_BURST, SLOW_LATENCY_MS, Namespaces, tbf
from miyaq.errors import ConfigError, MiyaqError

pytestmark = pytest.mark.timeout(120)


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the slow link's test needs root in CI (network namespaces, tc)")
        pytest.skip("needs root: network namespaces and tc")


def test_a_slow_links_bucket_is_its_rate_a_small_burst_and_a_bounded_queue():
    assert tbf(2_000_000) == ["tbf", "rate", "2000000bit", "burst", str(SLOW_BURST), "latency",
                              f"{SLOW_LATENCY_MS}ms"]
    for bad in (0, 7999, -1, 2.5e6, "2mbit"):
        with pytest.raises(ConfigError, match="at least 8000"):
            tbf(bad)      # type: ignore[arg-type]


class _Cluster:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def slow(self, node_id: str, rate: int) -> None:
        self.calls.append(("slow", node_id, rate))

    def unslow(self, node_id: str) -> None:
        self.calls.append(("unslow", node_id))


def test_the_slow_fault_takes_its_rates_in_turn_and_is_a_network_kind():
    """Each slow fault the next of SLOW_RATES, recorded in its begin; in
    ``all`` and in the --partitions mix; a node on a slow link counts
    against the budget of nodes down."""
    kind = type(KINDS["slow"])()
    cluster = _Cluster()
    details = [kind.begin(cluster, f"n{i}") for i in range(4)]
    kind.heal(cluster, "n3")
    assert [d["rate_bits"] for d in details] == [*SLOW_RATES, SLOW_RATES[0]]
    assert cluster.calls[-1] == ("unslow", "n3") and cluster.calls[0] == ("slow", "n0", SLOW_RATES[0])
    assert "slow" in parse_kinds("all", False) and "slow" in parse_kinds("", True)
    assert "slow" not in parse_kinds("", False) and kind.holder


def _qdisc(net: Namespaces, index: int) -> list[str]:
    """``tc -s qdisc show`` of each end of node ``index``'s veth pair: its own, then the bridge's."""
    return [subprocess.run(["tc", *netns, "-s", "qdisc", "show", "dev", dev], capture_output=True, text=True,
                           timeout=10, check=True).stdout for netns, dev in net._slow_ends(index)]


def _sent(text: str) -> int:
    return int(text.split("Sent ")[1].split(" bytes")[0])


def test_a_slow_link_shapes_both_ends_of_one_node_and_is_taken_away():
    """Root: on a node's link both buckets are in place at the rate asked
    and carry its packets (a connection it tries to the bridge: its SYN
    through its own end, the refusal back through the bridge's); another
    node's link is untouched; a second ``slow`` changes the rate; ``unslow``
    and ``heal`` take the buckets away, and taking away one that is not
    there is no error."""
    need_root()
    net = Namespaces(2, random.Random(), zk_servers=0).setup()
    try:
        net.slow(0, 2_000_000)
        own, bridge = _qdisc(net, 0)
        assert "tbf" in own and "rate 2Mbit" in own and "tbf" in bridge and "rate 2Mbit" in bridge
        assert all("tbf" not in text for text in _qdisc(net, 1))
        knock = (f"import socket; s = socket.socket(); s.settimeout(5)\n"
                 f"try: s.connect(({net.gateway!r}, 9))\nexcept OSError: pass")
        subprocess.run(["ip", "netns", "exec", net.netns(0), sys.executable, "-c", knock], timeout=30, check=True)
        own, bridge = _qdisc(net, 0)
        assert _sent(own) > 0 and _sent(bridge) > 0, (own, bridge)
        net.slow(0, 4_000_000)
        assert all("rate 4Mbit" in text for text in _qdisc(net, 0))
        net.unslow(0)
        assert all("tbf" not in text for text in _qdisc(net, 0))
        net.unslow(0)
        net._unslow(0, check=True)        # tc: nothing to delete -- not an error
        net.slow(1, 1_000_000)
        net.heal()
        assert all("tbf" not in text for text in _qdisc(net, 1))
        with pytest.raises(ConfigError):
            net.slow(1, 10)
        assert all("tbf" not in text for text in _qdisc(net, 1)), "a refused rate changes nothing"
    finally:
        net.close()


def test_a_slow_link_that_cannot_be_made_leaves_nothing(monkeypatch):
    """Root: the bridge's end fails (its device gone): the node's own end,
    put in place first, is taken away again and MiyaqError raised."""
    need_root()
    net = Namespaces(1, random.Random(), zk_servers=0).setup()
    try:
        ends = net._slow_ends(0)
        monkeypatch.setattr(net, "_slow_ends", lambda index: [ends[0], ([], "mqc-no-such-dev")])
        with pytest.raises(MiyaqError, match="mqc-no-such-dev"):
            net.slow(0, 1_000_000)
        monkeypatch.undo()
        assert all("tbf" not in text for text in _qdisc(net, 0))
    finally:
        net.close()
