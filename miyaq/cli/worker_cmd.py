"""``miyaq worker module:app``: run handlers in worker processes, each with a pool."""
from __future__ import annotations

import argparse

from ..worker.config import WorkerConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run task handlers", description=(
        "Run the handlers registered on a miyaq.App in --processes worker processes, each "
        "running --concurrency tasks at once in its --pool: gevent greenlets (the default; "
        "the standard library is patched so blocking I/O yields), threads, or child "
        "processes. Every option falls back to the environment variable MIYAQ_<OPTION>."))
    p.add_argument("app", help="module:attribute of the miyaq.App (attribute defaults to 'app')")
    WorkerConfig.add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..worker.launch import run_supervised
    config = WorkerConfig.load(vars(args))
    return run_supervised(args.app, config)
