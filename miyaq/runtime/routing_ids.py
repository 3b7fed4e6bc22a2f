"""Routing ids libzmq gives anonymous connections, made unpredictable
(:func:`unpredictable_routing_ids`). Moved out of :mod:`.sockets` (past
400 lines); the socket factory calls it before making each ROUTER.
"""
from __future__ import annotations

import ctypes
import os


def unpredictable_routing_ids() -> None:
    """Seed the C library's ``rand()`` from ``os.urandom``, so that the next
    ROUTER made starts its routing ids for anonymous connections at an
    unpredictable number. Call it just before making a ROUTER.

    libzmq names a connection that sets no routing id ``0x00`` + a 32-bit
    counter, starts the counter from ``rand()`` when the socket is made,
    and never checks that the name is free: a peer may choose its own
    routing id, one starting with ``0x00`` included, and when the counter
    reaches an id a peer chose, libzmq aborts the process (an assertion in
    ``add_out_pipe``). Nothing seeds ``rand()`` in a Python process, so
    every node's first such id was ``0x006b8b4567``: a stranger on a node
    without keys (or any key holder) that connected with the next 23 ids
    made the next ordinary connection abort the node (before 2026-12-05).
    Seeded, the counter's start is one of 2**32: docs/security.md says what
    is left of the risk. No-op where the C library cannot be reached."""
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))
    except (OSError, AttributeError):
        pass
