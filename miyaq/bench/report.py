"""How a bench result is shown: a plain-text summary, or one JSON object.

The summary starts as it always has (the main miyaq measurement, redis-
benchmark style) and adds, when the run measured more than one system or
repeated, a table per phase: each metric's median (with its range over
repeats) per system, and the ratios the run asked for.
"""
from __future__ import annotations

import json
from typing import Any

from .compare import METRICS


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=False)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def _secs(value: float) -> str:
    return f"{value:.3f} s"


def _latency_line(label: str, lat: dict[str, float] | None) -> str:
    if not lat:
        return f"  {label:<16} n/a"
    return (f"  {label:<16} p50 {lat['p50']:.3f} ms   p99 {lat['p99']:.3f} ms   "
            f"max {lat['max']:.3f} ms")


def _per_task_line(label: str, figures: dict[str, float | None] | None, unit: str = "",
                   digits: int = 1) -> str:
    if not figures:
        return f"  {label:<16} n/a"

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"
    parts = [f"{k} {num(v)}" for k, v in figures.items() if k != "total"]
    return f"  {label:<16} {num(figures.get('total'))}{unit} ({', '.join(parts)})"


def _mode(cfg: dict[str, Any]) -> str:
    if cfg.get("confirmed"):
        return "one at a time: confirmed submits, then calls"
    if cfg.get("rate"):
        return f"paced at {cfg['rate']:g}/s"
    return "as fast as the client allows"


def _work(spec: str) -> str:
    kind, _, ms = spec.partition(":")
    return {"": "no-op", "sleep": f"waits {ms} ms (yielding)", "block": f"blocks {ms} ms in time.sleep",
            "cpu": f"burns {ms} ms of CPU"}.get(kind, spec)


def summary(result: dict[str, Any]) -> str:
    """A human-readable report."""
    cfg = result["config"]
    rss = result.get("node_peak_rss_bytes")
    lines = [
        (f"====== miyaq bench: {cfg['tasks']:,} tasks, {cfg['payload']} B payload, "
         f"{cfg['workers']} worker(s) x {cfg['concurrency']} ======"),
        f"  workers          pool {cfg.get('pool') or 'default'}, each task: {_work(cfg.get('work') or '')}",
        f"  node             {result['node']} ({'started by the bench' if not cfg.get('connect') else 'given'})",
        f"  submitted        {_count(result['submitted'])} ({_mode(cfg)})",
        f"  accepted         {_count(result['accepted'])}",
        f"  completed        {_count(result['completed'])}",
        (f"  enqueue          {_num(result['enqueue_rate'])} tasks/s "
         f"({_secs(result['enqueue_seconds'] or 0.0)} first submit -> last ack)"),
        (f"  drain            {_num(result['drain_rate'])} tasks/s "
         f"({_secs(result['drain_seconds'] or 0.0)} first submit -> last done)"),
        "  latency:",
        _latency_line("submit -> start", (result["latency"] or {}).get("submit_to_start_ms")),
        _latency_line("submit -> done", (result["latency"] or {}).get("submit_to_done_ms")),
        _per_task_line("CPU per task", result.get("cpu_us_per_task"), " us"),
        _per_task_line("main threads", result.get("main_thread_cpu_us_per_task"), " us"),
        _per_task_line("wake-ups/task", result.get("wakeups_per_task"), digits=2),
        f"  node peak RSS    {'n/a' if rss is None else f'{rss / 1048576:.1f} MiB'}",
        f"  duplicates       {result['duplicates']}",
    ]
    lines += _idle_lines(result.get("idle"))
    runs = result.get("runs") or []
    lines += _cluster_event_lines(runs)
    if len({m["system"] for m in runs}) > 1 or cfg.get("repeat", 1) > 1 or len({m["phase"] for m in runs}) > 1:
        lines += _tables(result)
    if result["errors"]:
        lines.append("  errors:")
        lines += [f"    - {e}" for e in result["errors"]]
    else:
        lines.append("  errors           none")
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _cluster_event_lines(runs: list[dict[str, Any]]) -> list[str]:
    """A cluster's standby takeovers, stream gaps and refused submits, per
    run that had any: each takeover is a task started an offset late."""
    counted = [r for r in runs if r.get("cluster_events")]
    if not counted:
        return []
    lines = ["  cluster events (what the nodes counted during the phase):"]
    for r in counted:
        events = ", ".join(f"{k} {v:,}" for k, v in r["cluster_events"].items())
        lines.append(f"    {r['system']} {r['phase']} (run {r.get('repeat', 0) + 1}): {events}")
    return lines


def _idle_lines(idle: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    if not idle:
        return []
    lines = ["  idle CPU (ms per second, nothing submitted):"]
    for system, results in idle.items():
        for r in results:
            ms = r["cpu_ms_per_second"]
            parts = ", ".join(f"{k} {_num(v)}" for k, v in ms.items() if k != "total")
            lines.append(f"    {system:<14} {_num(ms.get('total'))} ({parts}) over {r['seconds']:g} s")
    return lines


def _cell(spread: dict[str, float] | None) -> str:
    if not spread:
        return "n/a"
    if spread["n"] == 1 or spread["min"] == spread["max"]:
        return f"{spread['median']:,.3f}"
    return f"{spread['median']:,.3f} [{spread['min']:,.3f}-{spread['max']:,.3f}]"


def _tables(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    ratio_sets = result.get("ratios") or {}
    for phase, systems in result["summary"].items():
        names = list(systems)
        lines.append(f"  --- {phase}: median [min-max] over {result['config'].get('repeat', 1)} run(s)")
        header = f"    {'metric':<18}" + "".join(f"{n:>32}" for n in names)
        ratio_names = [r for r, by_phase in ratio_sets.items() if isinstance(by_phase, dict)
                       and isinstance(by_phase.get(phase), dict)]
        widths = [max(20, len(r) + 2) for r in ratio_names]
        header += "".join(f"{r:>{w}}" for r, w in zip(ratio_names, widths))
        lines.append(header)
        metrics = list(next(iter(systems.values())))
        for metric in metrics:
            unit = METRICS[metric][1]
            row = f"    {metric:<18}" + "".join(f"{_cell(systems[n].get(metric)):>32}" for n in names)
            for r, w in zip(ratio_names, widths):
                value = ratio_sets[r][phase].get(metric)
                row += f"{'n/a' if value is None else f'{value:.2f}x':>{w}}"
            lines.append(row + f"  {unit}")
    extra = ratio_sets.get("miyaq call/baseline confirmed")
    if extra:
        lines.append(f"  miyaq call() / baseline confirmed round trips: {extra.get('enqueue_rate')}x")
    return lines
