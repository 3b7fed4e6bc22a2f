"""The ports of a dev cluster's nodes (``miyaq dev-cluster``): a block of
ten a node, from ``--base-port`` on, on loopback.

Constraints:

* Node ``nI`` uses the ``I``-th block of ports at or after ``base_port``
  (stepping by 10) whose service, peer (+1), pub (+2) and HTTP (+8) ports
  are all free; busy blocks are skipped, never shared. Ports in TIME-WAIT
  count as free, so a restarted dev cluster gets the same ports.
* The blocks are where a developer asks (``--base-port``), not picked at
  random as the ports of tests and tools are (:mod:`miyaq.testing.ports`).
* ``ConfigError`` for a base port out of range or too few free blocks
  below 65536.
* :func:`next_block`: the block for a node started again (another process
  took one of its ports after the check), above its own and clear of the
  other nodes' blocks.
"""
from __future__ import annotations

import socket

from miyaq.errors import ConfigError

HOST = "127.0.0.1"
PORT_STEP = 10
HTTP_OFFSET = 8
"""A node's HTTP port is its service port + 8 (inside its block of 10)."""


def port_free(port: int, host: str = HOST) -> bool:
    """True when a TCP listener could bind ``host:port`` right now.

    With ``SO_REUSEADDR``, as ZeroMQ and the HTTP gateway bind: a port left
    in TIME-WAIT by a previous run counts as free, one with a listener not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_blocks(base_port: int, count: int, taken: set[int] | None = None) -> list[int]:
    """Service ports for ``count`` nodes from ``base_port`` by steps of 10, skipping busy blocks."""
    if not 0 < base_port < 65536 - PORT_STEP:
        raise ConfigError(f"base port must be 1..{65535 - PORT_STEP}, not {base_port}")
    taken = taken or set()
    found: list[int] = []
    port = base_port
    while len(found) < count:
        if port + HTTP_OFFSET > 65535:
            raise ConfigError(f"no {count} free port blocks at or after {base_port}")
        block = (port, port + 1, port + 2, port + HTTP_OFFSET)
        if not taken.intersection(block) and all(port_free(p) for p in block):
            found.append(port)
        port += PORT_STEP
    return found


def next_block(after: int, others: list[int]) -> int | None:
    """The first free block above the one at ``after``, sharing no port with the
    blocks at ``others``; None when there is none below 65536."""
    taken = {p for port in others for p in range(port, port + PORT_STEP)}
    try:
        return port_blocks(after + PORT_STEP, 1, taken)[0]
    except ConfigError:
        return None
