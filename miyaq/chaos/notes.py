"""What a chaos run says before it starts about its settings, when they
make a run about something else than the faults: results that fill the
nodes' ``max_result_bytes``, tasks that fill the ``diskfull`` fault's small
disks, handlers too few for ``--rate`` x ``--task-time`` (each found by a
run that said nothing and then failed or refused for that reason alone).
Each note is a line for the run's output, or None when the run is fine.
"""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from .sizes import SizeSpec, node_setting, results_fill_seconds

if TYPE_CHECKING:
    from .runner import ChaosConfig


def start_notes(config: "ChaosConfig") -> list[str]:
    """Every note that applies to ``config``, in the order they are said."""
    notes = (results_note(config), disks_note(config), handlers_note(config))
    return [note for note in notes if note]


def default_setting(name: str) -> int:
    """A node's integer setting unless configured (the run starts its nodes so)."""
    from ..config import NodeConfig
    default = next(f.default for f in dataclasses.fields(NodeConfig) if f.name == name)
    assert isinstance(default, int)
    return default


def results_note(config: ChaosConfig) -> str | None:
    """A warning when ``--result`` fills a node's ``max_result_bytes``
    within the load (:func:`.sizes.results_fill_seconds`): from then on
    the nodes refuse submits ``busy`` and the run is one of refusals.
    None when it does not (or without ``--result``)."""
    if config.result is None:
        return None
    limit = node_setting(config.node_args, "--max-result-bytes", default_setting("max_result_bytes"))
    fill = results_fill_seconds(config.result, config.rate, config.replicas, config.nodes, limit)
    if fill >= config.duration:
        return None
    return (f"miyaq chaos: results of {config.result.mean():,.0f} bytes on average at {config.rate:g}/s fill a "
            f"node's max_result_bytes ({limit:,}) in about {fill:.0f}s of the {config.duration:g}s load (results "
            f"are kept an hour): the nodes then refuse submits (busy). Give --node-arg=--max-result-bytes=N "
            f"(N about {config.rate * config.result.mean() * config.duration:,.0f}), a lower --rate or a "
            f"smaller --result\n")


def disks_note(config: ChaosConfig) -> str | None:
    """A warning when the ``diskfull`` fault's small disks (a tmpfs of
    ``SMALL_DISK_MB`` under each node's data dir) fill with ``--payload``
    and ``--result`` within the load: a node's log then cannot be written
    and it refuses new tasks until the run ends (seed 58, 2026-12-07: tasks
    of ~46 KB at 100/s, every submit refused from about 120 s). None when
    they fit, or without ``diskfull`` or sizes."""
    if "diskfull" not in config.faults or (config.payload is None and config.result is None):
        return None
    from .disk import SMALL_DISK_MB
    per_task = sum(spec.mean() for spec in (config.payload, config.result) if spec is not None)
    fill = results_fill_seconds(SizeSpec(round(per_task), round(per_task)), config.rate, config.replicas,
                                config.nodes, SMALL_DISK_MB * 1024 * 1024)
    if fill >= config.duration:
        return None
    return (f"miyaq chaos: tasks and results of {per_task:,.0f} bytes on average at {config.rate:g}/s fill the "
            f"{SMALL_DISK_MB} MiB disk the diskfull fault gives each node in about {fill:.0f}s of the "
            f"{config.duration:g}s load: the nodes then refuse new tasks. Leave diskfull out of --faults, or "
            f"give a lower --rate or smaller sizes\n")


def handler_capacity(config: "ChaosConfig") -> float:
    """How many tasks the run's workers run at once: ``workers`` x
    ``concurrency``; with ``--busy``, one a worker in the gevent and
    threads pools (a CPU-bound handler holds the hub, or the GIL), and no
    more than the machine's CPUs in any pool."""
    handlers = float(config.workers * config.concurrency)
    if config.busy:
        if config.pool in ("gevent", "threads"):
            handlers = float(config.workers)
        handlers = min(handlers, float(os.cpu_count() or 1))
    return handlers


def handlers_note(config: "ChaosConfig") -> str | None:
    """A warning when the workers have fewer handlers than the load keeps
    busy on average (``rate`` x ``task_time``, :func:`handler_capacity`):
    tasks queue from the start, the backlog grows for the whole load, and
    the drain ends with accepted tasks not done -- a verdict about the
    run's capacity, not its faults (seed 74, 2026-12-07: ``--pool
    processes`` on 2 CPUs, 2 workers x 2 children against 7.5 busy at
    150/s x 0.05 s: done p50 74 s in calm, 4,523 tasks stuck after the
    120 s drain, nothing lost). None when they suffice."""
    busy = config.rate * config.task_time
    handlers = handler_capacity(config)
    if busy < handlers:
        return None
    return (f"miyaq chaos: {config.rate:g}/s x {config.task_time:g}s a task keep {busy:g} handlers busy on average, "
            f"and the workers have {handlers:g} ({config.workers} worker(s), {config.pool} pool"
            f"{', busy tasks' if config.busy else ''}): tasks will queue from the start and the drain may end with "
            f"accepted tasks not done. Give more --workers or --concurrency, a lower --rate or a shorter "
            f"--task-time\n")
