"""``miyaq chaos``: run a cluster under faults and check that no accepted
task was lost (docs/chaos.md).

Exit status: 0 every accepted task finished; 1 an accepted task was lost;
3 nothing lost but some accepted task was not done after the drain; 4
nothing lost or stuck, but a task started twice with no fault to explain
it, a task was reported done with no worker's finish record, or a node cut
off from ZooKeeper kept starting tasks; 5 none of these, but the history
is damaged (a line other than a torn last one is no valid record); 2 the
run could not be made (bad flags, ZooKeeper missing...) or ``--check`` was
given a file that holds no history; 130 interrupted.
With ``--json`` the one JSON summary goes to stdout and everything else
to stderr.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from types import FrameType
from typing import Any

from ..worker.config import POOLS
from . import numbers

DEFAULT_DURATION = 60.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chaos", help="run a cluster under faults and check that nothing accepted is lost",
                       description="Start ZooKeeper, --nodes nodes and --workers workers on this machine (or "
                                   "use the cluster registered in --zk), submit tasks at --rate for "
                                   "--duration seconds while a nemesis kills, pauses and wipes nodes, then "
                                   "drain, ask the cluster for every task and report. See docs/chaos.md.")
    g = p.add_argument_group("cluster")
    g.add_argument("--nodes", type=numbers.positive, default=3, help="node processes [3]")
    g.add_argument("--replicas", type=numbers.positive, default=2, help="holders per task, N [2]")
    g.add_argument("--workers", type=numbers.nonnegative, default=2, help="worker processes [2]")
    g.add_argument("--pool", default="gevent", choices=POOLS,
                   help="the workers' pool (miyaq worker --pool): the chaos handler runs in greenlets, in "
                        "threads or in child processes [gevent]")
    g.add_argument("--concurrency", type=numbers.positive, default=None,
                   help="handlers each worker runs at once: greenlets, threads or child processes "
                        "[32; with --pool processes, the number of CPUs]")
    g.add_argument("--fsync", default="interval", choices=("always", "interval", "never"),
                   help="the nodes' log fsync policy [interval]")
    g.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for every node, repeatable (e.g. --node-arg=--replica-offset=5)")
    g.add_argument("--zk", default=None, metavar="HOSTS",
                   help="test the cluster registered in this ZooKeeper instead of starting one "
                        "(never read from MIYAQ_ZK)")
    g.add_argument("--cluster", default="chaos", help="cluster name [chaos]")
    g.add_argument("--zk-servers", type=numbers.positive, default=1, metavar="K",
                   help="the run's ZooKeeper as an ensemble of K servers; with 3 or more, the faults "
                        "zkserver, zkleader and zkquorum (and zkminority with --partitions) join the "
                        "default mix [1]")
    g.add_argument("--partitions", action="store_true",
                   help="each node in its own network namespace (root, Linux), and partition faults")
    g.add_argument("--secure", action="store_true",
                   help="CURVE on every socket: keys in the run directory, one per role (admin probes, "
                        "producer, workers), nodes with --keys (not with --zk; docs/security.md)")
    g = p.add_argument_group("load")
    g.add_argument("--duration", type=numbers.seconds, default=DEFAULT_DURATION, help="seconds of load and faults [60]")
    g.add_argument("--rate", type=numbers.real(0.0, above=True), default=200.0, help="submits per second [200]")
    g.add_argument("--task-time", type=numbers.seconds, default=0.05,
                   help="mean seconds a task runs (exponential, at most 10) [0.05]")
    g.add_argument("--busy", action="store_true",
                   help="tasks compute (CPU-bound, holding the GIL) for their --task-time instead of sleeping: "
                        "ordinary blocking code in each --pool")
    g.add_argument("--reject-every", type=numbers.nonnegative, default=0, metavar="K",
                   help="every K-th task raises Reject when it has run: it must end dead-lettered and never "
                        "run again [0: none]")
    g.add_argument("--payload", default=None, metavar="SIZE",
                   help="padding each task carries: bytes, 200k (KiB) or 1m (MiB), or a range MIN-MAX drawn "
                        "log-uniformly (1k-500k); at most the nodes' max_payload less the task's encoding, "
                        "which 'max' stands for (1k-max) [none]")
    g.add_argument("--result", default=None, metavar="SIZE",
                   help="result each task returns, as --payload: SIZE or MIN-MAX; at most the nodes' "
                        "max_payload less 5 ('max') [none: the task's number]")
    g.add_argument("--submit-timeout", type=numbers.positive_seconds, default=10.0,
                   help="seconds before the client gives up on a submit [10]")
    g = p.add_argument_group("faults")
    g.add_argument("--faults", default=None, metavar="KINDS",
                   help="comma-separated: kill,pause,leader,worker,zk,wipe; with --partitions also partition,"
                        "isolate,deaf,mute,zkcut,lossy,delay,slow,duplicate,split; with --zk-servers 3 zkserver,"
                        "zkleader,zkquorum (and zkminority with --partitions); clock (faketime), diskfull (root); "
                        "'all'; 'none' "
                        "[kill,pause,leader,worker,zk,wipe; plus the network kinds with --partitions and the "
                        "ensemble's with --zk-servers 3]")
    g.add_argument("--rolling", action="store_true",
                   help="instead of random faults: drain and restart the first node, restart every other node "
                        "in turn, then replace the last one with a new node (new id, empty disk); fails on any "
                        "duplicate or failed submit")
    g.add_argument("--fault-order", default="random", choices=("random", "cycle"),
                   help="which kind each tick tries: any, in random order, or (cycle) in rounds: only the kinds "
                        "injected fewest times so far, in --faults order [random]")
    g.add_argument("--interval", type=numbers.positive_seconds, default=10.0, help="seconds between faults [10]")
    g.add_argument("--fault-duration", type=numbers.seconds, default=5.0,
                   help="seconds a node stays killed / ZooKeeper stopped / a partition lasts [5]")
    g.add_argument("--pause-duration", type=numbers.seconds, default=8.0,
                   help="seconds a node stays SIGSTOPped (longer than its 3 s ZooKeeper session) [8]")
    g.add_argument("--unsafe", action="store_true",
                   help="allow more than N-1 nodes down at once (and the last worker killed)")
    g.add_argument("--recover-timeout", type=numbers.positive_seconds, default=60.0,
                   help="seconds a healed fault may take before it is reported not recovered [60]")
    g = p.add_argument_group("check and report")
    g.add_argument("--drain-timeout", type=numbers.seconds, default=120.0,
                   help="seconds to wait after the load for accepted tasks to finish [120]")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="directory for the history, logs, data, summary.json and timeline.png "
                        "[./miyaq-chaos-<time>]")
    g.add_argument("--seed", type=numbers.integer(0, 2**63 - 1), default=None,
                   help="random seed (the report shows the one used)")
    g.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    g.add_argument("--check", default=None, metavar="HISTORY",
                   help="run no cluster: check and report an existing history.jsonl")
    g.add_argument("--log-level", default="WARNING", help="logging level of the run itself [WARNING]")
    p.set_defaults(run=run)


class _Interrupt:
    """SIGTERM/SIGINT handler: the first signal interrupts the run (it then
    heals, stops everything and reports); later ones, and any during the
    cleanup, are ignored, so they cannot cut the cleanup short."""

    def __init__(self) -> None:
        self.fired = False
        self.chaos: Any = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.fired or (self.chaos is not None and self.chaos.cleaning):
            return
        self.fired = True
        raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from ..logs import setup_logging
    setup_logging(args.log_level)
    human = sys.stderr if args.json else sys.stdout
    if args.check:
        return _check_only(args, human)
    from ..chaos.faults import parse_kinds
    from ..chaos.runner import ChaosConfig, ChaosRun, default_concurrency
    payload, result = _sizes(args)
    config = ChaosConfig(
        nodes=args.nodes, replicas=args.replicas, workers=args.workers, pool=args.pool,
        concurrency=args.concurrency if args.concurrency is not None else default_concurrency(args.pool),
        duration=args.duration, rate=args.rate, task_time=args.task_time, busy=args.busy,
        reject_every=args.reject_every,
        payload=payload, result=result, faults=parse_kinds(args.faults, args.partitions, args.zk_servers),
        zk_servers=args.zk_servers,
        fault_order=args.fault_order, interval=args.interval,
        fault_duration=args.fault_duration, pause_duration=args.pause_duration, unsafe=args.unsafe,
        partitions=args.partitions, rolling=args.rolling, secure=args.secure, zk=args.zk, cluster=args.cluster,
        fsync=args.fsync,
        node_args=list(args.node_arg), submit_timeout=args.submit_timeout, drain_timeout=args.drain_timeout,
        recover_timeout=args.recover_timeout, out=args.out, seed=args.seed)
    handler = _Interrupt()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        chaos = handler.chaos = ChaosRun(config, human)
        verdict = chaos.run()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    from ..chaos.report import render
    human.write(render(chaos.summary, chaos.history_path, chaos.picture) + "\n")
    _emit_json(args, chaos.summary)
    code = verdict.exit_code()
    return 130 if chaos.interrupted and code == 0 else code


def _sizes(args: argparse.Namespace) -> tuple[Any, Any]:
    """``--payload`` and ``--result`` read, bounded by the nodes'
    ``max_payload`` (a ``--node-arg=--max-payload=N``, else the default);
    ConfigError (exit 2) for a size that is none or too large."""
    from ..chaos.sizes import largest_payload, largest_result, node_max_payload, parse_spec
    from .bench_cmd import default_max_payload
    limit = node_max_payload(list(args.node_arg), default_max_payload())
    payload = None if args.payload is None else parse_spec(args.payload, "--payload", largest_payload(limit))
    result = None if args.result is None else parse_spec(args.result, "--result", largest_result(limit))
    return payload, result


def _check_only(args: argparse.Namespace, human: Any) -> int:
    """``--check``: judge an existing history. The verdict is printed before
    the picture is drawn (a picture is slow, and a verdict must not wait on
    it); a file that holds no history raises NotAHistory (exit status 2)
    before anything is drawn, so no picture beside it is overwritten."""
    import os

    from ..chaos import timeline
    from ..chaos.checker import check
    from ..chaos.history import ReadStats, read_history
    from ..chaos.report import render
    from ..errors import ConfigError
    if not os.path.isfile(args.check):
        raise ConfigError(f"no history file {args.check}")
    read = ReadStats()
    verdict = check(read_history(args.check, read), read=read)
    summary = verdict.summary()
    human.write(render(summary, args.check) + "\n")
    _emit_json(args, summary)
    human.flush()
    picture = os.path.join(os.path.dirname(os.path.abspath(args.check)), "timeline.png")
    try:
        timeline.draw(verdict.metrics, picture)
        human.write(f"timeline: {picture}\n")
    except (ConfigError, OSError, ValueError) as exc:
        human.write(f"no timeline picture: {exc}\n")
    return verdict.exit_code()


def _emit_json(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        sys.stdout.flush()
