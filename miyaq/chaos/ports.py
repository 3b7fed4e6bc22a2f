"""Ports for a chaos run's nodes.

A killed node is restarted on the ports it had. Ports from ``bind(0)`` come
from the kernel's ephemeral range, where any process's outgoing connection
can take one while the node is down (the restart then fails with "address
already in use"); :func:`restartable_port` picks from below that range.
"""
from __future__ import annotations

import random

from ..testing.harness import free_port, port_is_free


def restartable_port(span: int = 3, tries: int = 200) -> int:
    """A loopback port p with p .. p+span-1 free, below the kernel's
    ephemeral range: a node restarted on its old ports must not find one
    taken by some process's outgoing connection meanwhile (ports from
    ``bind(0)`` are in that range). Falls back to :func:`free_port`."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(tries):
        port = rng.randrange(10_000, max(10_001, low - span))
        if all(port_is_free(port + i) for i in range(span)):
            return port
    return free_port()

