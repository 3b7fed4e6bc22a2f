"""The final question of a chaos run: what state does the cluster hold
each task in? One ``client.status(id)`` per task, asked of every node the
client knows until one knows the task.

Answers are ``done``, another task state, ``unknown`` (every node
answered "not found") or ``unreachable`` (no node answered in time).
Requests run on a bounded thread pool sharing one client (its I/O thread
pipelines them). Tasks not ``done`` are asked again every ``RECHECK_EVERY``
seconds until ``deadline`` — a task just finishing is not a loss — and
the last answer counts; but a failed submit (``refused``) that no node
knows is not asked again: it was never stored, and waiting for it only
makes every run with a failed submit a minute longer. Nor is a task that
rejects itself (``rejecting``) once it is ``dead``: that is its end.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..client.client import Client
from ..errors import MiyaqError, NotFound

logger = logging.getLogger(__name__)

THREADS = 16
RECHECK_EVERY = 2.0


def _state(client: Client, task_id: str) -> str:
    for _ in range(3):
        try:
            return str(client.status(task_id).get("state"))
        except NotFound:
            return "unknown"
        except MiyaqError:
            time.sleep(0.2)
    return "unreachable"


def final_states(endpoints: list[str], ids: list[str], deadline: float,
                 progress: Callable[[int, int], None] | None = None, key: str | None = None,
                 server_key: str | None = None, refused: frozenset[str] | set[str] = frozenset(),
                 rejecting: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """``{task id: state}`` for every id (see the module docstring).
    ``deadline`` is a ``time.monotonic()`` value."""
    states: dict[str, str] = {}
    client = Client(endpoints, request_timeout=2.0, submit_timeout=5.0, key=key, server_key=server_key)
    try:
        with ThreadPoolExecutor(THREADS, thread_name_prefix="chaos-final") as pool:
            todo = list(ids)
            rounds = 0
            while todo:
                rounds += 1
                for task_id, state in zip(todo, pool.map(lambda i: _state(client, i), todo)):
                    states[task_id] = state
                    if progress is not None and rounds == 1 and len(states) % 5000 == 0:
                        progress(len(states), len(ids))
                todo = [i for i in todo if states[i] != "done" and not (states[i] == "unknown" and i in refused)
                        and not (states[i] == "dead" and i in rejecting)]
                if not todo or time.monotonic() + RECHECK_EVERY >= deadline:
                    break
                logger.info("final check: %d task(s) not done yet; asking again", len(todo))
                time.sleep(RECHECK_EVERY)
    finally:
        client.close(flush=False)
    return states
