"""Whether a node has room for one more task (:meth:`~miyaq.core.engine.Engine.submit`):
under ``max_tasks`` live tasks, ``max_bytes`` of payloads held with it
(:func:`~miyaq.store.task_bytes.held_bytes`), and ``max_result_bytes`` of
results kept. A node without room answers BUSY (:class:`~miyaq.errors.Busy`,
its ``reason`` naming the bound for the bytes ones) and changes nothing; a
client retries. A full node refuses every submit and its clients retry
each: one line a minute per bound says so, with the count of the
refusals it stands for.
"""
from __future__ import annotations

import logging

from miyaq.config import NodeConfig
from miyaq.errors import Busy
from miyaq.logs import LogLimiter
from miyaq.store.table import TaskTable
from miyaq.store.task import Task
from miyaq.store.task_bytes import held_bytes

# The engine's logger, as when this was part of engine.py: operators and
# tests filter on it.
logger = logging.getLogger("miyaq.core.engine")
_full = LogLimiter(logger, burst=1)


def check_room(table: TaskTable, config: NodeConfig, task: Task) -> None:
    """Raise :class:`~miyaq.errors.Busy` if ``table`` has no room for
    ``task`` under ``config``'s bounds (the first one it would pass, in the
    order above); else nothing."""
    if len(table.live) >= config.max_tasks:
        _full.warning("full", "refusing new tasks busy: the node holds %d live tasks, its max_tasks "
                      "(are workers taking them? `miyaq status`)", len(table.live))
        raise Busy(f"node holds {len(table.live)} live tasks, its max_tasks: it takes new ones as "
                   "workers finish some")
    if table.payload_bytes + held_bytes(task) > config.max_bytes:
        _full.warning("full bytes", "refusing new tasks busy: the node holds %d bytes of task payloads "
                      "(with their webhook headers and URLs, keys and errors), max_bytes %d",
                      table.payload_bytes, config.max_bytes)
        raise Busy(f"node holds {table.payload_bytes} bytes of task payloads (with their webhook headers and URLs, "
                   f"keys and errors); max_bytes is {config.max_bytes}", reason="bytes")
    if table.result_bytes >= config.max_result_bytes:
        # Results go with their tombstones: the longer of result_ttl and
        # dedup_window after their task ended (docs/semantics.md).
        keep = max(config.result_ttl, config.dedup_window)
        _full.warning("full results", "refusing new tasks busy: the node keeps %d bytes of results, "
                      "max_result_bytes %d (freed %g s after their tasks ended)", table.result_bytes,
                      config.max_result_bytes, keep)
        raise Busy(f"node keeps {table.result_bytes} bytes of results; max_result_bytes is "
                   f"{config.max_result_bytes} (freed as finished tasks are forgotten, {keep:g} s after "
                   "they ended: the longer of result_ttl and dedup_window)", reason="results")
