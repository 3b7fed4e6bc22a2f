"""Free loopback ports for the nodes, gateways and ZooKeeper servers that
tests and tools start: one picker for all of them.

A port the kernel hands out for a bind to port 0 comes from the ephemeral
range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by
default) -- the range every outgoing connection also takes its source
port from. Such a port, let go until the server that wants it binds it,
can meanwhile become the source port of a connection some other test
opens, and the server fails with "address in use" (a CI run lost a
gateway test so). So ports are picked *below* that range, from a slice of
its own for each parallel test worker (``PYTEST_XDIST_WORKER`` of
``PYTEST_XDIST_WORKER_COUNT``), each checked free. A process walks its
slice from a random start, a block after the last one it handed out, so
it hands no port out twice until it has gone round its whole slice
(thousands of ports). Where there is no room below the range, the
kernel's choice is taken, as before.

Before 2026-12-07's second fix ports were picked at random in the slice, skipping the
last 4,096 handed out: after a few thousand picks (a CI worker's share of
the suite) no block of 100 consecutive ports avoided them, and a docs
page's block came from the ephemeral range after all (CI, 2026-12-07).

No pytest imports: ``miyaq bench`` and ``miyaq dev-cluster`` use it too.
"""
from __future__ import annotations

import os
import random
import socket

from miyaq.errors import MiyaqError
from miyaq.runtime.endpoints import is_ipv6_address

LOWEST = 10_000
"""The lowest port picked (below are the well-known and registered services
a machine is likelier to run)."""
TRIES = 200
"""Ports looked at for one block before the kernel's choice is taken."""
PORT_TRIES = 3
"""Starts of a server (a harness's node, a test's ZooKeeper) whose picked port
another process took between the pick and its bind: the first and up to two
more, each on freshly picked ports (:mod:`miyaq.testing.harness`)."""

_next: dict[int, int] = {}
"""Per slice (by its first port): where this process looks for its next block."""
_random = random.Random()


def free_port(span: int = 1, host: str = "127.0.0.1") -> int:
    """A port p on ``host`` with p .. p+span-1 all free right now, outside
    the ephemeral range, the next such block in this worker's slice after
    the one it handed out last."""
    low, high = _slice(span)
    if high > low:
        port = _next.get(low)
        if port is None or not low <= port < high:
            port = _random.randrange(low, high)
        for _ in range(TRIES):
            taken = _first_taken(port, span, host)
            if taken is None:
                _next[low] = port + span if port + span < high else low
                return port
            port = taken + 1 if taken + 1 < high else low      # past what holds it
    for _ in range(TRIES):
        with _socket(host) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port + span <= 65536 and _first_taken(port, span, host) is None:
            return port
    raise MiyaqError(f"no {span} consecutive free ports found on {host}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing holds ``port`` on ``host`` right now."""
    with _socket(host) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _socket(host: str) -> socket.socket:
    """A TCP socket of ``host``'s family."""
    return socket.socket(socket.AF_INET6 if is_ipv6_address(host) else socket.AF_INET)


def _first_taken(port: int, span: int, host: str) -> int | None:
    """The first of ``port`` .. ``port+span-1`` something holds on ``host`` now (None: all free)."""
    return next((p for p in range(port, port + span) if not port_is_free(p, host)), None)


def _slice(span: int) -> tuple[int, int]:
    """[low, high): where a block of ``span`` ports may start in this
    worker's share of the ports below the ephemeral range, so that all of it
    is in that share. The shares do not depend on ``span`` (before
    2026-12-07 they did, and bounded a block's first port only: a block of
    100 could end inside the next worker's share, review41)."""
    try:
        index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
        count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    except ValueError:
        index, count = 0, 1
    width = (_ephemeral_start() - LOWEST) // count
    low = LOWEST + (index % count) * width
    return low, low + width - span + 1


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
