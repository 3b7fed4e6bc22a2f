"""How a bench result is shown: a plain-text summary, or one JSON object."""
from __future__ import annotations

import json
from typing import Any


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


def summary(result: dict[str, Any]) -> str:
    """A human-readable report, redis-benchmark style."""
    cfg = result["config"]
    rss = result.get("node_peak_rss_bytes")
    mode = f"paced at {cfg['rate']:g}/s" if cfg.get("rate") else "as fast as the client allows"
    lines = [
        (f"====== miyaq bench: {cfg['tasks']:,} tasks, {cfg['payload']} B payload, "
         f"{cfg['workers']} worker(s) x {cfg['concurrency']} ======"),
        f"  node             {result['node']} ({'started by the bench' if not cfg.get('connect') else 'given'})",
        f"  submitted        {result['submitted']:,} ({mode})",
        f"  accepted         {result['accepted']:,}",
        f"  completed        {result['completed']:,}",
        (f"  enqueue          {_num(result['enqueue_rate'])} tasks/s "
         f"({_secs(result['enqueue_seconds'])} first submit -> last ack)"),
        (f"  drain            {_num(result['drain_rate'])} tasks/s "
         f"({_secs(result['drain_seconds'])} first submit -> last done)"),
        "  latency:",
        _latency_line("submit -> start", result["latency"].get("submit_to_start_ms")),
        _latency_line("submit -> done", result["latency"].get("submit_to_done_ms")),
        f"  node peak RSS    {'n/a' if rss is None else f'{rss / 1048576:.1f} MiB'}",
        f"  duplicates       {result['duplicates']}",
    ]
    if result["errors"]:
        lines.append("  errors:")
        lines += [f"    - {e}" for e in result["errors"]]
    else:
        lines.append("  errors           none")
    return "\n".join(lines)
