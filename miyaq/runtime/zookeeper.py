"""kazoo's handler for the gevent hub: how a ZooKeeper client waits in it.

kazoo runs its connection loop and callbacks through a *handler*; the gevent
one (``kazoo.handlers.gevent``) builds on gevent's greenlets, queues and
sockets, so it belongs with the rest of gevent here. A module of its own:
the core imports the runtime and must not import kazoo, even lazily.
"""
from __future__ import annotations

from typing import Any

from kazoo.handlers.gevent import SequentialGeventHandler


def kazoo_handler() -> Any:
    """A new handler for one ``KazooClient`` (each client needs its own)."""
    return SequentialGeventHandler()
