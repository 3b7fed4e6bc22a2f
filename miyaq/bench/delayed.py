"""``miyaq bench --delayed N``: what holding many delayed tasks costs a node.

One standalone node, no workers, one producer process. The run:

1. reads the node's resident memory (``VmRSS``);
2. *near empty*: schedules ``K`` tasks a day ahead (pipelined submits), then
   cancels half of them one request at a time, reading the node's CPU time
   around each step;
3. schedules the ``N`` delayed tasks (``--payload`` bytes each, a day
   ahead) and reads the memory again: (RSS after - RSS before) / N is the
   memory one delayed task costs;
4. *full*: the same ``K`` schedules and ``K/2`` cancels as in step 2.

Scheduling and cancelling stay O(log n) when the cost per operation at
step 4, with N tasks held, is close to that at step 2; the report gives
both and their ratio. Costs are the node's CPU microseconds per operation
(what the timers and the task table cost) and, for cancels, the producer's
wall time per round trip.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from . import cpu
from .fleet import Fleet
from .procs import ProcessGroup, sigterm_as_exit
from .producer import Producer

DAY = 86400.0
PROBE = 5000          # K: schedules per probe (cancels: half)


@dataclass
class DelayedConfig:
    tasks: int = 1_000_000
    payload: int = 100
    timeout: float = 600.0
    python: str | None = None


def run_delayed(cfg: DelayedConfig) -> dict[str, Any]:
    """Run the delayed-task memory mode (module doc) and return its result.
    Raises MiyaqError when the node or the producer cannot be brought up; a
    SIGTERM ends it as ``SystemExit(143)`` after its processes are stopped
    and its temporary directory removed (as :func:`~.runner.run_bench`)."""
    with sigterm_as_exit():
        return _run_delayed(cfg)


def _run_delayed(cfg: DelayedConfig) -> dict[str, Any]:
    probe = max(2, min(PROBE, cfg.tasks // 10))
    deadline = time.monotonic() + cfg.timeout
    with tempfile.TemporaryDirectory(prefix="miyaq-bench-") as tmp:
        procs = ProcessGroup(tmp)
        queue = f"bench-{os.path.basename(tmp)}"
        fleet = Fleet(procs, connect=None, workers=0, concurrency=1, queue=queue, records_dir=tmp,
                      deadline=deadline, python=cfg.python,
                      node_args=("--max-tasks", str(cfg.tasks + 2 * probe + 1000)))
        errors: list[str] = []
        try:
            fleet.start()
            producer = Producer(procs, cfg.python or sys.executable, "miyaq", fleet.endpoint, queue)
            producer.start(max(1.0, deadline - time.monotonic()))
            node = fleet.nodes[0].pid
            rss_before = fleet.node_rss()
            empty = _probe(producer, node, tmp, probe, cfg.payload, deadline, errors)
            bulk_started = time.monotonic()
            answer, _ = producer.load(os.path.join(tmp, "bulk.times"), _left(deadline), mode="bulk",
                                      tag="held", tasks=cfg.tasks, payload=cfg.payload, countdown=DAY)
            bulk_seconds = time.monotonic() - bulk_started
            errors += answer.get("errors", [])
            rss_after = fleet.node_rss()
            peak = fleet.node_rss(peak=True)
            full = _probe(producer, node, tmp, probe, cfg.payload, deadline, errors)
            producer.quit()
        finally:
            fleet.close()
    held = int(answer.get("accepted", 0))
    per_task = None
    if rss_before is not None and rss_after is not None and held:
        per_task = round((rss_after - rss_before) / held, 1)
    return {
        "config": asdict(cfg),
        "held": held,
        "schedule_rate": round(held / bulk_seconds, 1) if bulk_seconds > 0 else None,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "peak_rss_bytes": peak,
        "bytes_per_task": per_task,
        "probe_operations": probe,
        "near_empty": empty,
        "full": full,
        "full/near_empty": {k: _ratio(full.get(k), empty.get(k))
                            for k in ("schedule_node_us", "cancel_node_us", "cancel_round_trip_us")},
        "errors": errors,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


def _probe(producer: Producer, node: int, tmp: str, k: int, payload: int, deadline: float,
           errors: list[str]) -> dict[str, float | None]:
    """Schedule k tasks, then cancel k/2 of them; node CPU per operation."""
    tag = f"p{int(time.monotonic() * 1000)}"
    before = cpu.cpu_seconds(node)
    answer, _ = producer.load(os.path.join(tmp, f"{tag}.times"), _left(deadline), mode="bulk", tag=tag,
                              tasks=k, payload=payload, countdown=DAY)
    errors += answer.get("errors", [])
    middle = cpu.cpu_seconds(node)
    cancels = k // 2
    cancelled = producer.command({"op": "cancel", "tag": tag, "first": 0, "count": cancels}, _left(deadline))
    errors += cancelled.get("errors", [])
    after = cpu.cpu_seconds(node)
    done = int(cancelled.get("cancelled", 0))
    return {
        "schedule_node_us": _per(before, middle, int(answer.get("accepted", 0))),
        "cancel_node_us": _per(middle, after, done),
        "cancel_round_trip_us": round(cancelled["seconds"] * 1e6 / done, 1) if done else None,
    }


def _per(start: float | None, end: float | None, n: int) -> float | None:
    if start is None or end is None or n <= 0:
        return None
    return round((end - start) * 1e6 / n, 2)


def summary(result: dict[str, Any]) -> str:
    """A human-readable report of a --delayed run."""
    def mib(v: int | None) -> str:
        return "n/a" if v is None else f"{v / 1048576:.1f} MiB"

    def us(v: float | None) -> str:
        return "n/a" if v is None else f"{v:,.1f} us"

    empty, full, ratio = result["near_empty"], result["full"], result["full/near_empty"]
    per_task = "n/a" if result["bytes_per_task"] is None else f"{result['bytes_per_task']:,.0f} B"
    lines = [
        f"====== miyaq bench --delayed: {result['config']['tasks']:,} tasks a day ahead, "
        f"{result['config']['payload']} B payload ======",
        f"  held             {result['held']:,} (scheduled at {result['schedule_rate'] or 0:,.0f}/s)",
        f"  node RSS         {mib(result['rss_before_bytes'])} before, {mib(result['rss_after_bytes'])} after, "
        f"peak {mib(result['peak_rss_bytes'])}",
        f"  per task         {per_task}",
        f"  cost per operation ({result['probe_operations']:,} schedules, half as many cancels): "
        f"near empty -> with {result['held']:,} held (ratio)",
    ]
    for key, label in (("schedule_node_us", "schedule, node CPU"), ("cancel_node_us", "cancel, node CPU"),
                       ("cancel_round_trip_us", "cancel round trip")):
        lines.append(f"    {label:<20} {us(empty.get(key))} -> {us(full.get(key))} "
                     f"({'n/a' if ratio.get(key) is None else f'{ratio[key]:.2f}x'})")
    lines.append("  errors           " + ("none" if not result["errors"] else ""))
    lines += [f"    - {e}" for e in result["errors"]]
    return "\n".join(lines)
