"""Medians over repeats and ratios between systems, from the runs' measurements.

Every figure the report compares is a *metric* read from one measurement
(:func:`miyaq.bench.measure.measurement`). Over ``--repeat`` runs each is
summarised as its median with the lowest and highest value (the range
shows how much a shared machine drifted). A ratio is the median of one
system over the median of another, measured in the same bench run: for a
rate above 1 is better, for a latency or a cost below 1 is.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Metric = Callable[[dict[str, Any]], float | None]


def _latency(key: str) -> Metric:
    def get(m: dict[str, Any]) -> float | None:
        lat = m["latency"].get("submit_to_start_ms")
        return None if not lat else lat.get(key)
    return get


def _per_task(field: str, role: str) -> Metric:
    """A role's figure in one of a measurement's per-task maps ("broker": the node or the relay)."""
    def get(m: dict[str, Any]) -> float | None:
        per = m.get(field) or {}
        if role == "broker":
            return per.get("node", per.get("relay"))
        return per.get(role)
    return get


def _cpu(role: str) -> Metric:
    return _per_task("cpu_us_per_task", role)


#: name -> (how to read it, unit, True if higher is better)
METRICS: dict[str, tuple[Metric, str, bool]] = {
    "drain_rate": (lambda m: m.get("drain_rate"), "tasks/s", True),
    "enqueue_rate": (lambda m: m.get("enqueue_rate"), "tasks/s", True),
    "start_p50_ms": (_latency("p50"), "ms", False),
    "start_p99_ms": (_latency("p99"), "ms", False),
    "start_max_ms": (_latency("max"), "ms", False),
    "cpu_us_total": (_cpu("total"), "us/task", False),
    "cpu_us_broker": (_cpu("broker"), "us/task", False),
    "cpu_us_workers": (_cpu("workers"), "us/task", False),
    "cpu_us_producer": (_cpu("producer"), "us/task", False),
    "main_us_broker": (_per_task("main_thread_cpu_us_per_task", "broker"), "us/task", False),
    "main_us_workers": (_per_task("main_thread_cpu_us_per_task", "workers"), "us/task", False),
    "main_us_producer": (_per_task("main_thread_cpu_us_per_task", "producer"), "us/task", False),
    "wakeups_broker": (_per_task("wakeups_per_task", "broker"), "/task", False),
    "wakeups_workers": (_per_task("wakeups_per_task", "workers"), "/task", False),
    "wakeups_producer": (_per_task("wakeups_per_task", "producer"), "/task", False),
}

#: per process: its main thread's CPU and its wake-ups, after the CPU of the whole process
_THREADS = ("main_us_broker", "main_us_workers", "main_us_producer",
            "wakeups_broker", "wakeups_workers", "wakeups_producer")

#: what each mode is about, first the headline figure
MODE_METRICS = {
    "bulk": ("drain_rate", "enqueue_rate", "cpu_us_total", "cpu_us_broker", "cpu_us_workers", "cpu_us_producer",
             *_THREADS),
    "rate": ("start_p50_ms", "start_p99_ms", "start_max_ms", "cpu_us_total", "cpu_us_broker",
             "cpu_us_workers", "cpu_us_producer", *_THREADS),
    "confirmed": ("enqueue_rate", "start_p50_ms", "cpu_us_total", "cpu_us_broker", "cpu_us_workers",
                  "cpu_us_producer", *_THREADS),
    "call": ("enqueue_rate", "start_p50_ms", "cpu_us_total", "cpu_us_broker", "cpu_us_workers",
             "cpu_us_producer", *_THREADS),
}


def spread(values: list[float]) -> dict[str, float] | None:
    """Median, min and max of the known values (None if there are none)."""
    if not values:
        return None
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{phase: {system: {metric: spread}}} over every run."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in runs:
        out.setdefault(m["phase"], {}).setdefault(m["system"], {})
    for phase, systems in out.items():
        for system in systems:
            mine = [m for m in runs if m["phase"] == phase and m["system"] == system]
            mode = mine[0]["mode"]
            for name in MODE_METRICS.get(mode, ()):
                get = METRICS[name][0]
                systems[system][name] = spread([v for v in (get(m) for m in mine) if v is not None])
    return out


def ratios(summary: dict[str, dict[str, dict[str, Any]]], system: str, reference: str,
           reference_phase: dict[str, str] | None = None) -> dict[str, dict[str, float | None]]:
    """{phase: {metric: median(system) / median(reference)}}. ``reference_phase``
    maps a phase to the reference's phase it is held against (``call`` ->
    ``confirmed``: a call is compared with a confirmed round trip)."""
    out: dict[str, dict[str, float | None]] = {}
    for phase, systems in summary.items():
        mine = systems.get(system)
        ref_phase = (reference_phase or {}).get(phase, phase)
        ref = summary.get(ref_phase, {}).get(reference)
        if mine is None or ref is None:
            continue
        row: dict[str, float | None] = {}
        for name, value in mine.items():
            other = ref.get(name)
            if value is None or other is None or not other["median"]:
                row[name] = None
            else:
                row[name] = round(value["median"] / other["median"], 3)
        out[phase] = row
    return out
