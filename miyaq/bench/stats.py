"""Turning submit times and worker records into rates and latency percentiles.

Percentiles use the nearest-rank method on the exact sample (no histogram,
no interpolation): p99 of 5,000 samples is the 4,950th smallest. Latencies
are reported in milliseconds.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .records import Records

PERCENTILES = (("p50", 50.0), ("p99", 99.0))


def task_id(tag: str, index: int) -> str:
    """The id of task ``index`` of the run tagged ``tag`` (as the producer makes it)."""
    return f"{tag}-{index}"


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize_ms(seconds: list[float]) -> dict[str, float] | None:
    """p50, p99 and max of latencies given in seconds, as milliseconds."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    out = {name: round(percentile(ordered, q) * 1000.0, 3) for name, q in PERCENTILES}
    out["max"] = round(ordered[-1] * 1000.0, 3)
    return out


@dataclass
class Matched:
    """This run's tasks matched with their records."""

    completed: int                 # distinct tasks of this run that ran
    to_start: list[float]          # seconds, per completed task
    to_done: list[float]
    last_done: float | None        # time.time() of the last first-run completion


def match(tag: str, submit_times: Sequence[float], records: Records) -> Matched:
    """Pair task i's submit time with its first run's start and done times."""
    to_start: list[float] = []
    to_done: list[float] = []
    last_done: float | None = None
    starts, dones = records.start, records.done
    for i, submitted in enumerate(submit_times):
        tid = task_id(tag, i)
        start = starts.get(tid)
        if start is None:
            continue
        done = dones[tid]
        to_start.append(start - submitted)
        to_done.append(done - submitted)
        if last_done is None or done > last_done:
            last_done = done
    return Matched(len(to_start), to_start, to_done, last_done)


def rate(count: int, seconds: float) -> float | None:
    """count / seconds, rounded; None when undefined."""
    if count <= 0 or seconds <= 0:
        return None
    return round(count / seconds, 1)
