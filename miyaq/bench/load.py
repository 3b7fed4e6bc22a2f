"""The producer side of a bench run: submit N tasks, fast or paced.

Fast mode calls the pipelined ``Client.submit()`` in a tight loop (the
client batches and blocks only when its window of unacknowledged submits
is full), then ``flush()``. ``--rate R`` paces submit *i* to
``t0 + i / R`` on the monotonic clock; a submit that falls behind schedule
is sent at once, so the average rate holds. Both modes stop at N submits or
at the run's deadline, whichever comes first.

Each submit's time is ``time.time()`` read just before ``submit()`` is
called, kept in ``submit_times`` (index = task number).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..client.client import Client
from ..client.handle import TaskHandle
from ..errors import MiyaqError

DEADLINE_CHECK_EVERY = 256     # fast mode reads the clock for the deadline this often


def task_id(tag: str, index: int) -> str:
    """The id of task ``index`` of the run tagged ``tag``."""
    return f"{tag}-{index}"


@dataclass
class Load:
    """What was submitted, when, and what went wrong (read by the progress
    display from another thread: only ``submitted`` and ``acknowledged``)."""

    submit_times: list[float] = field(default_factory=list)
    submitted: int = 0
    accepted: int = 0              # acknowledged by a node when flush() returned
    acknowledged: bool = False
    first_submit: float = 0.0
    acked_at: float = 0.0          # time.time() when flush() returned
    errors: list[str] = field(default_factory=list)


def run_load(client: Client, *, name: str, queue: str, tag: str, tasks: int, payload: bytes,
             rate: float | None, deadline: float, load: Load) -> Load:
    """Submit ``tasks`` tasks and wait for their acknowledgements.
    ``deadline`` is a ``time.monotonic()`` value."""
    client.submit_timeout = max(0.1, deadline - time.monotonic())
    submit = client.submit
    times = load.submit_times
    handles: list[TaskHandle] = []
    args = (payload,)
    monotonic = time.monotonic
    wall = time.time
    t0 = monotonic()
    load.first_submit = wall()
    try:
        for i in range(tasks):
            if rate:
                now = monotonic()
                if now >= deadline:
                    break
                delay = t0 + i / rate - now
                if delay > 0:
                    time.sleep(min(delay, deadline - now))
            elif i % DEADLINE_CHECK_EVERY == 0 and monotonic() >= deadline:
                break
            times.append(wall())
            handles.append(submit(name, args, id=task_id(tag, i), queue=queue))
            load.submitted = i + 1
    except MiyaqError as err:
        del times[load.submitted:]   # the time of the submit that raised
        load.errors.append(f"submit stopped after {load.submitted} tasks: {err.message}")
    if load.submitted < tasks and not load.errors:
        load.errors.append(f"timeout: only {load.submitted} of {tasks} tasks submitted")
    try:
        client.flush(max(0.0, deadline - monotonic()))
    except MiyaqError as err:
        load.errors.append(f"not every submit was acknowledged in time: {err.message}")
    load.acked_at = wall()
    load.accepted = sum(1 for h in handles if h.accepted)
    load.acknowledged = True
    return load

