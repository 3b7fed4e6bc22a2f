"""A handler that leaves a greenlet of its own behind, which then fails: the
application's code spawning work nobody waits for (``gevent.spawn`` in a
library it calls). For tests/test_hub_errors.py."""
from __future__ import annotations

import gevent

import miyaq

app = miyaq.App()


def _fail(n: int) -> None:
    raise RuntimeError(f"stray greenlet {n} failed")


@app.task(name="stray")
def stray(count: int) -> int:
    """Spawn ``count`` greenlets that raise once this task has ended."""
    for n in range(count):
        gevent.spawn(_fail, n)
    return count
