"""``miyaq bench``: a built-in load generator (node, workers, producer, report)."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from ..config import MAX_REPLICAS
from ..errors import ConfigError
from ..worker.config import MAX_PROCESSES, POOLS, WorkerConfig
from . import numbers

#: Worker processes the bench starts at most (``--workers``): the cap of one
#: ``miyaq worker --processes``.
MAX_WORKERS = MAX_PROCESSES
DEFAULT_WORKERS = 2
DEFAULT_CONCURRENCY = 64
DEFAULT_TASKS = 20_000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure throughput, latency and cost per task", description=(
        "Start a standalone node (or use --connect), W worker processes running a no-op task "
        "(or one that waits, blocks or burns CPU: --task-ms, --blocking, --cpu-ms; in --pool) "
        "and a producer process; submit N tasks and report enqueue and drain rates, submit->start "
        "and submit->done latency percentiles, CPU time per task of each process and the node's "
        "peak RSS. --baseline runs the same workload through a bare ZeroMQ relay in the same run "
        "and prints miyaq's figures as ratios to it (docs/performance.md). Exit status: 0 when "
        "every task completed, 1 when the run finished with errors, 2 when it could not start."))
    p.add_argument("--workers", "-w", type=numbers.positive, default=DEFAULT_WORKERS,
                   help=f"worker processes [default {DEFAULT_WORKERS}; at most {MAX_WORKERS}]")
    p.add_argument("--concurrency", "-c", type=numbers.positive, default=DEFAULT_CONCURRENCY,
                   help=f"tasks run at once per worker process [default {DEFAULT_CONCURRENCY}: the tasks are "
                        f"no-ops; the worker's own default is 8; at most the worker's cap, 10000]")
    p.add_argument("--prefetch", type=numbers.nonnegative, default=None,
                   help="the workers' --prefetch (tasks held beyond concurrency; default: theirs, = "
                        "concurrency); the bare relay's workers grant the same credit, concurrency + "
                        "prefetch")
    p.add_argument("--tasks", "-n", type=numbers.positive, default=DEFAULT_TASKS,
                   help=f"tasks to submit per phase [default {DEFAULT_TASKS}]")
    p.add_argument("--payload", "-s", type=numbers.nonnegative, default=100,
                   help="payload bytes per task [default 100; at most the node's max_payload less 8, "
                        "1048568 for the node the bench starts]")
    p.add_argument("--rate", "-r", type=numbers.real(0.0, above=True), default=None,
                   help="submit at this many tasks per second (default: as fast as possible)")
    p.add_argument("--confirmed", action="store_true",
                   help="submit one task at a time with wait=True, then call() one at a time")
    p.add_argument("--baseline", action="store_true",
                   help="also run the workload through a bare pyzmq relay; print ratios to it")
    p.add_argument("--baseline-gevent", action="store_true",
                   help="also run the bare relay and workers waiting for messages in a gevent hub, as "
                        "miyaq's node and workers do; print ratios to it (what the runtime costs)")
    p.add_argument("--cluster", type=numbers.nonnegative, default=0, metavar="N",
                   help=f"also run a cluster of N nodes (a ZooKeeper started by the bench, replicas N, "
                        f"min_acks N; N at most {MAX_REPLICAS}) and print its ratios to a single node")
    p.add_argument("--delayed", type=numbers.nonnegative, default=0, metavar="N",
                   help="memory mode: hold N delayed tasks; report RSS per task and the cost of "
                        "scheduling and cancelling with the table nearly empty and full (with --payload, "
                        "--timeout, --python and --json only)")
    p.add_argument("--idle", type=numbers.seconds, default=0.0, metavar="SECONDS",
                   help="first measure the CPU of the idle system for SECONDS")
    p.add_argument("--repeat", type=numbers.positive, default=1, help="run every system this many times, in turns")
    p.add_argument("--python", default=None, metavar="PATH",
                   help="interpreter that runs miyaq's node, workers and producer (another build)")
    p.add_argument("--compare-python", default=None, metavar="PATH",
                   help="also run miyaq with this interpreter (another build) and print ratios to it")
    p.add_argument("--keys", action="store_true",
                   help="also run miyaq with CURVE on every socket (node --keys, workers and producer with "
                        "keys) and print ratios to it: the cost of keys (docs/security.md)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="record a py-spy profile of every process during each phase into DIR "
                        "(needs py-spy; profiled figures are slower than unprofiled ones)")
    p.add_argument("--profile-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph",
                   help="py-spy output: flame graph SVG, collapsed stacks or speedscope [default flamegraph]")
    p.add_argument("--connect", default=None,
                   help="use the node at this endpoint instead of starting one (its CPU and peak RSS are "
                        "not read: not with --baseline, --baseline-gevent or --idle)")
    p.add_argument("--fsync", choices=("always", "interval", "never"), default=None,
                   help="start the node with a durable log in a temporary --data-dir and this fsync "
                        "policy (default: no log, tasks in memory)")
    p.add_argument("--pool", choices=POOLS, default=None,
                   help="the workers' execution pool (default: the worker's default, gevent)")
    p.add_argument("--task-ms", type=numbers.seconds, default=None, metavar="MS",
                   help="each task waits MS milliseconds (yielding; with --blocking: time.sleep, as "
                        "ordinary blocking code does) instead of returning at once")
    p.add_argument("--blocking", action="store_true", help="with --task-ms: block in time.sleep")
    p.add_argument("--cpu-ms", type=numbers.seconds, default=None, metavar="MS",
                   help="each task burns MS milliseconds of CPU time (for --pool processes)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--timeout", "-t", type=numbers.positive_seconds, default=120.0,
                   help="limit for each system's phases in seconds, once its processes are up and its "
                        "--idle measured [default 120]; a phase it leaves no time for is an error")
    p.set_defaults(run=run)


def check(args: argparse.Namespace) -> None:
    """Refuse contradictory options (ConfigError, exit 2); each number's
    own range the parser checked (:mod:`miyaq.cli.numbers`). Runs before
    anything starts; makes the ``--profile`` directory."""
    if args.cluster == 1:
        raise ConfigError("--cluster must be at least 2 (0: no cluster run)")
    if args.fsync and args.connect:
        raise ConfigError("--fsync applies to the node the bench starts; not with --connect")
    if args.keys and args.connect:
        raise ConfigError("--keys makes the keys of the node the bench starts; not with --connect")
    if args.confirmed and args.rate:
        raise ConfigError("--confirmed submits one at a time; it takes no --rate")
    if args.connect and (args.cluster or args.python or args.compare_python):
        raise ConfigError("--cluster, --python and --compare-python start nodes; not with --connect")
    if args.connect and (args.baseline or args.baseline_gevent or args.idle):
        raise ConfigError("--baseline, --baseline-gevent and --idle count the CPU of the node, which is not "
                          "the bench's to read with --connect: miyaq's total would leave it out and its "
                          "ratio to the relay would flatter miyaq; run them on the node the bench starts")
    work_of(args)
    if args.delayed:
        ignored = delayed_ignores(args)
        if ignored:
            raise ConfigError(f"--delayed is a mode of its own (it takes --payload, --timeout, --python and "
                              f"--json): not with {', '.join(ignored)}")
    check_caps(args)
    if not args.connect:      # the bench's own nodes; a given one is asked once reached (bench.fleet)
        from ..bench.producer import PAYLOAD_ENVELOPE, largest_payload
        largest = largest_payload(default_max_payload())
        if args.payload > largest:
            raise ConfigError(f"--payload {args.payload}: more than the bench's node takes (at most {largest}: "
                              f"its max_payload is {default_max_payload()} bytes, the task's encoding adds "
                              f"{PAYLOAD_ENVELOPE})")
    from ..bench.procs import check_interpreter
    for name in ("python", "compare_python"):   # after the cheap checks: each starts an interpreter
        path = getattr(args, name)
        if path:
            check_interpreter(path, f"--{name.replace('_', '-')}")
    if args.profile:   # last: it makes the directory
        from ..bench.profile import find_py_spy, prepare_directory
        find_py_spy()
        prepare_directory(args.profile)


def delayed_ignores(args: argparse.Namespace) -> list[str]:
    """The options given with ``--delayed`` that it would not use (an option
    at its default counts as not given)."""
    given = {
        "--workers": args.workers != DEFAULT_WORKERS, "--concurrency": args.concurrency != DEFAULT_CONCURRENCY,
        "--prefetch": args.prefetch is not None, "--tasks": args.tasks != DEFAULT_TASKS,
        "--rate": args.rate is not None, "--confirmed": args.confirmed, "--baseline": args.baseline,
        "--baseline-gevent": args.baseline_gevent, "--cluster": bool(args.cluster), "--idle": bool(args.idle),
        "--repeat": args.repeat != 1, "--compare-python": args.compare_python is not None, "--keys": args.keys,
        "--profile": args.profile is not None, "--connect": args.connect is not None,
        "--fsync": args.fsync is not None, "--pool": args.pool is not None,
        "--task-ms": args.task_ms is not None, "--cpu-ms": args.cpu_ms is not None,
    }
    return [option for option, present in given.items() if present]


def check_caps(args: argparse.Namespace) -> None:
    """ConfigError for a size the run's processes would refuse once started:
    ``--workers`` over :data:`MAX_WORKERS`, ``--cluster`` over MAX_REPLICAS
    (its nodes run ``--replicas N``), ``--concurrency`` (with ``--prefetch``)
    over what a worker takes."""
    if args.workers > MAX_WORKERS:
        raise ConfigError(f"--workers must be 1..{MAX_WORKERS}, not {args.workers:,}")
    if args.cluster > MAX_REPLICAS:
        raise ConfigError(f"--cluster must be 2..{MAX_REPLICAS} (its nodes hold every task: --replicas N, "
                          f"at most {MAX_REPLICAS}), not {args.cluster:,}")
    try:
        WorkerConfig(concurrency=args.concurrency, prefetch=args.prefetch, pool=args.pool or "gevent")
    except ConfigError as err:
        raise ConfigError(f"--concurrency {args.concurrency}"
                          f"{'' if args.prefetch is None else f' --prefetch {args.prefetch}'}: the workers "
                          f"would refuse it: {err.message}") from None


def default_max_payload() -> int:
    """A node's ``max_payload`` unless configured (the bench starts its nodes so)."""
    from ..config import NodeConfig
    default = next(f.default for f in dataclasses.fields(NodeConfig) if f.name == "max_payload")
    assert isinstance(default, int)
    return default


def work_of(args: argparse.Namespace) -> str:
    """What each task does, as miyaq.bench.tasks reads it from MIYAQ_BENCH_WORK (ConfigError if the
    work options contradict each other)."""
    if args.task_ms is not None and args.cpu_ms is not None:
        raise ConfigError("--task-ms and --cpu-ms exclude each other")
    if args.blocking and args.task_ms is None:
        raise ConfigError("--blocking goes with --task-ms MS")
    for name, value in (("--task-ms", args.task_ms), ("--cpu-ms", args.cpu_ms)):
        if value is not None and not 0 < value <= 60_000:
            raise ConfigError(f"{name} must be above 0 and at most 60000")
    if args.task_ms is not None:
        return f"{'block' if args.blocking else 'sleep'}:{args.task_ms:g}"
    if args.cpu_ms is not None:
        return f"cpu:{args.cpu_ms:g}"
    return ""


def run(args: argparse.Namespace) -> int:
    from ..bench import report
    from ..bench.runner import BenchConfig, run_bench
    from ..logs import setup_logging
    check(args)
    setup_logging("WARNING")
    if args.delayed:
        from ..bench.delayed import DelayedConfig, run_delayed, summary
        dcfg = DelayedConfig(tasks=args.delayed, payload=args.payload, timeout=args.timeout,
                             python=args.python)
        result = run_delayed(dcfg)
        print(report.to_json(result) if args.json else summary(result), flush=True)
        return 1 if result["errors"] else 0
    cfg = BenchConfig(workers=args.workers, concurrency=args.concurrency, prefetch=args.prefetch,
                      tasks=args.tasks, payload=args.payload, rate=args.rate, connect=args.connect,
                      timeout=args.timeout, fsync=args.fsync, baseline=args.baseline,
                      baseline_gevent=args.baseline_gevent, confirmed=args.confirmed, idle=args.idle,
                      repeat=args.repeat, python=args.python, compare_python=args.compare_python,
                      cluster=args.cluster, profile=args.profile, profile_format=args.profile_format,
                      keys=args.keys, pool=args.pool, work=work_of(args))
    stream = sys.stderr if sys.stderr.isatty() else None
    result = run_bench(cfg, progress_stream=stream)
    print(report.to_json(result) if args.json else report.summary(result), flush=True)
    return 1 if result["errors"] else 0
