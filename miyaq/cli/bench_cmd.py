"""``miyaq bench``: a built-in load generator (node, workers, producer, report)."""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure throughput and latency", description=(
        "Start a standalone node (or use --connect) and W worker processes running a "
        "no-op task, submit N tasks, and report enqueue and drain rates, submit->start "
        "and submit->done latency percentiles and the node's peak RSS. Exit status: 0 "
        "when every task completed, 1 when the run finished with errors, 2 when it "
        "could not start."))
    p.add_argument("--workers", "-w", type=int, default=2, help="worker processes [default 2]")
    p.add_argument("--concurrency", "-c", type=int, default=64,
                   help="greenlets per worker process [default 64: the tasks are no-ops]")
    p.add_argument("--tasks", "-n", type=int, default=20_000, help="tasks to submit [default 20000]")
    p.add_argument("--payload", "-s", type=int, default=100, help="payload bytes per task [default 100]")
    p.add_argument("--rate", "-r", type=float, default=None,
                   help="submit at this many tasks per second (default: as fast as possible)")
    p.add_argument("--connect", default=None,
                   help="use the node at this endpoint instead of starting one (peak RSS: n/a)")
    p.add_argument("--fsync", choices=("always", "interval", "never"), default=None,
                   help="start the node with a durable log in a temporary --data-dir and this fsync "
                        "policy (default: no log, tasks in memory)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--timeout", "-t", type=float, default=120.0,
                   help="limit for the whole run in seconds [default 120]")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import report
    from ..bench.runner import BenchConfig, run_bench
    from ..logs import setup_logging
    if args.workers < 1 or args.concurrency < 1 or args.tasks < 1:
        raise ConfigError("--workers, --concurrency and --tasks must be at least 1")
    if args.payload < 0 or args.timeout <= 0 or (args.rate is not None and args.rate <= 0):
        raise ConfigError("--payload must be >= 0, --timeout and --rate > 0")
    setup_logging("WARNING")
    cfg = BenchConfig(workers=args.workers, concurrency=args.concurrency, tasks=args.tasks,
                      payload=args.payload, rate=args.rate, connect=args.connect, timeout=args.timeout,
                      fsync=args.fsync)
    if args.fsync and args.connect:
        raise ConfigError("--fsync applies to the node the bench starts; not with --connect")
    stream = sys.stderr if sys.stderr.isatty() else None
    result = run_bench(cfg, progress_stream=stream)
    print(report.to_json(result) if args.json else report.summary(result), flush=True)
    return 1 if result["errors"] else 0
