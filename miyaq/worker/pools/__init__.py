"""How a worker runs handlers: greenlets, threads or child processes.

The worker core (links, credit, backlog, watchdog) always runs on gevent;
a pool only decides where a handler's code runs and how it is stopped
(docs/python-api.md, "Choosing a pool"). ``async def`` handlers run on the
worker's asyncio loop in the greenlet and thread pools, and on each child's
own loop in the process pool.
"""
from __future__ import annotations

from .base import Pool, PoolParts


def make_pool(name: str, parts: PoolParts) -> Pool:
    """The pool called ``name`` (one of ``config.POOLS``)."""
    if name == "threads":
        from .threads import ThreadsPool
        return ThreadsPool(parts)
    if name == "processes":
        from .processes import ProcessPool
        return ProcessPool(parts)
    from .greenlets import GreenletPool
    return GreenletPool(parts)


__all__ = ["Pool", "PoolParts", "make_pool"]
