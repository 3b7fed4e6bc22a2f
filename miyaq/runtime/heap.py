"""The process's start-up heap, out of the cycle collector's sight.

A node or a worker makes most of its long-lived objects when it starts:
modules, classes and functions, gevent's, kazoo's and prometheus_client's
machinery, the task table replayed from the log. CPython's full
(generation 2) collection walks every one of them again each time it runs,
with the hub stopped: 30-40 ms every few thousand tasks on the node
measured in docs/performance.md ("Garbage collection"), about 10 µs a task
on average and a pause every task waiting then shares.

:func:`freeze_startup_heap` collects once, then moves every object alive
to the permanent generation (:func:`gc.freeze`), so later collections walk
only what was made since. Frozen objects are still freed by reference
counting as usual; only garbage *cycles* among them would stay, which can
be no more than the start-up heap itself. For the processes miyaq owns
(``miyaq node``, ``miyaq worker``), never for an application's process
that merely uses the client.
"""
from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect garbage, then freeze what is alive (see the module doc);
    returns how many objects are frozen now. Call once, when start-up is over."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("froze %d start-up objects out of the cycle collector's sight", frozen)
    return frozen
