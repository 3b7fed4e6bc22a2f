"""``miyaq worker module:app``: run handlers in processes × greenlets."""
from __future__ import annotations

import argparse
import os
from typing import Any


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run task handlers", description=(
        "Run the handlers registered on a miyaq.App in --processes processes of "
        "--concurrency greenlets each."))
    p.add_argument("app", help="module:attribute of the miyaq.App (attribute defaults to 'app')")
    p.add_argument("--processes", "-p", default=_env("MIYAQ_PROCESSES", "1"),
                   help="worker processes [env MIYAQ_PROCESSES; default 1]")
    p.add_argument("--concurrency", "-c", default=_env("MIYAQ_CONCURRENCY", "8"),
                   help="greenlets per process [env MIYAQ_CONCURRENCY; default 8]")
    p.add_argument("--prefetch", default=None,
                   help="tasks held beyond concurrency (default: concurrency) [env MIYAQ_PREFETCH]")
    p.add_argument("--queues", "-Q", default=_env("MIYAQ_QUEUES", ""),
                   help="comma-separated queues (default: every queue the app's tasks name) [env MIYAQ_QUEUES]")
    p.add_argument("--connect", default=_env("MIYAQ_CONNECT", ""),
                   help="comma-separated node endpoints (default: the App's) [env MIYAQ_CONNECT]")
    p.add_argument("--heartbeat", default=_env("MIYAQ_HEARTBEAT", "1.0"),
                   help="seconds between heartbeats [env MIYAQ_HEARTBEAT; default 1.0]")
    p.add_argument("--grace", default=_env("MIYAQ_GRACE", "30"),
                   help="seconds SIGTERM waits for running tasks [env MIYAQ_GRACE; default 30]")
    p.add_argument("--log-level", default=_env("MIYAQ_LOG_LEVEL", "INFO"))
    p.set_defaults(run=run)


def _number(kind: type, value: object, name: str) -> Any:
    from ..errors import ConfigError
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} expects {kind.__name__}, got {value!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..worker.supervisor import WorkerSpec, run_supervised
    args.processes = _number(int, args.processes, "--processes / MIYAQ_PROCESSES")
    args.concurrency = _number(int, args.concurrency, "--concurrency / MIYAQ_CONCURRENCY")
    args.heartbeat = _number(float, args.heartbeat, "--heartbeat / MIYAQ_HEARTBEAT")
    args.grace = _number(float, args.grace, "--grace / MIYAQ_GRACE")
    if args.processes < 1 or args.concurrency < 1 or args.heartbeat <= 0:
        raise ConfigError("--processes and --concurrency must be at least 1, --heartbeat above 0")
    raw_prefetch = args.prefetch if args.prefetch is not None else os.environ.get("MIYAQ_PREFETCH") or None
    prefetch = None if raw_prefetch is None else _number(int, raw_prefetch, "--prefetch / MIYAQ_PREFETCH")
    spec = WorkerSpec(
        app=args.app,
        queues=[q for q in args.queues.split(",") if q] or None,
        concurrency=args.concurrency,
        prefetch=prefetch,
        endpoints=[e for e in args.connect.split(",") if e] or None,
        heartbeat=args.heartbeat,
        grace=args.grace,
        log_level=args.log_level,
    )
    return run_supervised(spec, args.processes)
