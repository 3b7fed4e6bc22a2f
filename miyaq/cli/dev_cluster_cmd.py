"""``miyaq dev-cluster``: ZooKeeper, N nodes and optional workers on this machine, until Ctrl-C.

Prints where everything listens, how to connect, and last a line starting
with ``ready `` (``key=value`` pairs: ``zk``, ``cluster``, ``connect``,
``logs``) that scripts and tests wait for. What it started is also written
to ``.miyaq-dev.json`` in the current directory (:mod:`miyaq.devstate`),
so the commands run there afterwards find the cluster. Ctrl-C or SIGTERM stops
workers, nodes and ZooKeeper, in that order; ``--duration S`` stops by
itself after S seconds. With ``--workers``, the ring is ready once the
workers have registered with every node; workers that exit first fail the
start, naming their log. The exit status is 1 when a node or the workers
exited while the cluster ran. ``--zk`` is never taken from the environment: a
shell with ``MIYAQ_ZK`` set must not point a throwaway cluster at a real
ZooKeeper by accident.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from .ring_cmd import zk_auth
from ..config import MAX_ZK_CONNECT_TIMEOUT, MIN_ZK_CONNECT_TIMEOUT, check_zk_connect_timeout
from ..errors import ConfigError
from . import numbers

if TYPE_CHECKING:
    from ..devcluster.cluster import DevCluster
    from ..testing.harness import Proc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dev-cluster", help="run ZooKeeper, N nodes and workers locally for development",
                       description="Start a ZooKeeper (unless --zk), --nodes node processes and optionally "
                                   "workers, all on 127.0.0.1; Ctrl-C stops everything.")
    p.add_argument("--nodes", type=numbers.positive, default=3, help="node processes [default 3]")
    p.add_argument("--zk", default=None, metavar="HOSTS",
                   help="use this ZooKeeper instead of starting one (not read from MIYAQ_ZK)")
    p.add_argument("--zk-connect-timeout", type=numbers.real(MIN_ZK_CONNECT_TIMEOUT, MAX_ZK_CONNECT_TIMEOUT),
                   default=None, metavar="S",
                   help="seconds each node, and this command, waits for ZooKeeper to answer at start "
                        f"({MIN_ZK_CONNECT_TIMEOUT:g}..{MAX_ZK_CONNECT_TIMEOUT:g}) [env MIYAQ_ZK_CONNECT_TIMEOUT; "
                        "default 10]")
    p.add_argument("--zk-servers", type=numbers.positive, default=1, metavar="K",
                   help="ZooKeeper servers to start: 1, or an ensemble of 3 (or 5) [default 1]")
    p.add_argument("--zk-auth", default=None, metavar="USER:PASSWORD",
                   help="protect the cluster's znodes with ZooKeeper ACLs for these credentials "
                        "(the nodes get them by environment) [env MIYAQ_ZK_AUTH]")
    p.add_argument("--zk-auth-file", default=None, metavar="PATH",
                   help="a file holding USER:PASSWORD [env MIYAQ_ZK_AUTH_FILE]")
    p.add_argument("--base-port", type=numbers.integer(1, 65535), default=None,
                   help="first node's service port; the next nodes step by 10, skipping busy ones "
                        "[env MIYAQ_PORT; default 7450]")
    p.add_argument("--cluster", default="dev", help="cluster name [default dev]")
    p.add_argument("--replicas", type=numbers.positive, default=None, help="holders per task [default min(3, nodes)]")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="keep each node's append-only log in DIR/<node id> (default: memory only)")
    p.add_argument("--workers", default=None, metavar="APP", help="also run `miyaq worker APP` (module:app)")
    p.add_argument("--worker-processes", type=numbers.positive, default=1, metavar="K",
                   help="worker processes [default 1]")
    p.add_argument("--duration", type=numbers.seconds, default=None, metavar="S",
                   help="stop by itself after S seconds (default: run until Ctrl-C)")
    p.add_argument("--log-dir", default=None, metavar="DIR", help="where the logs go (default: a new temp dir)")
    p.add_argument("--secure", action="store_true",
                   help="CURVE on every socket: make keys in LOG_DIR/keys (the cluster key and an admin key, "
                        "dev), run the nodes with --keys and the workers with the dev key; commands run in "
                        "this directory use it (docs/security.md)")
    p.set_defaults(run=run)


def banner(cluster: DevCluster) -> list[str]:
    """What ``miyaq dev-cluster`` prints once the ring is whole."""
    connect = ",".join(cluster.endpoints)
    zk = cluster.zk_hosts
    from ..testing.zk_ensemble import ZooKeeperEnsemble
    lines = []
    if isinstance(cluster.zookeeper, ZooKeeperEnsemble):
        lines += [f"ZooKeeper server {i} {server.hosts}  (pid {server.pid}, log {server.log_path})"
                  for i, server in enumerate(cluster.zookeeper.servers)]
    elif cluster.zookeeper is not None:
        lines.append(f"ZooKeeper {zk}  (pid {cluster.zookeeper.pid}, log {cluster.zookeeper.log_path})")
    else:
        lines.append(f"ZooKeeper {zk}  (given with --zk)")
    lines += [n.describe() for n in cluster.nodes]
    if cluster.workers is not None:
        lines.append(f"workers {cluster.workers_app} x{cluster.worker_processes} processes  "
                     f"(pid {cluster.workers.pid}, log {cluster.workers.log_path})")
    lines += [
        "",
        "connect:",
        f'  python   app = miyaq.App("{connect}")',
        f'           client = miyaq.Client("{connect}")',
        f"  ring     miyaq ring --zk {zk} --cluster {cluster.cluster}",
        f"  shell    export MIYAQ_ZK={zk} MIYAQ_CLUSTER={cluster.cluster} MIYAQ_CONNECT={connect}",
        f"  worker   miyaq worker yourmodule:app --connect {connect}",
    ]
    if cluster.key is not None:
        lines += [f"  keys     every socket runs CURVE (--secure): the admin key {cluster.key},",
                  f"           the nodes' public key {cluster.server_key}",
                  f"  shell    export MIYAQ_KEY={cluster.key} MIYAQ_SERVER_KEY={cluster.server_key}",
                  f'  python   miyaq.Client("{connect}", key="{cluster.key}", server_key="{cluster.server_key}")']
    if cluster.state_path:
        lines.append(f"in this directory `miyaq status`, `miyaq ring`, and miyaq.App() / miyaq.Client() without "
                     f"endpoints (so `miyaq worker yourmodule:app` for such an App) use this cluster "
                     f"({cluster.state_path})")
    lines += cluster.notes      # a node started again on another block
    lines += _moved_from(cluster)
    lines += [
        "Ctrl-C stops everything.",
        f"ready zk={zk} cluster={cluster.cluster} connect={connect} logs={cluster.log_dir}"
        + (f" keys={cluster.key_dir}" if cluster.key_dir else ""),
    ]
    return lines


def _moved_from(cluster: DevCluster) -> list[str]:
    """A warning when the first node is not at the base port: something
    else listens there (most often the standalone node of the quickstart),
    and code that names that port -- an ``App("tcp://127.0.0.1:7450")`` --
    reaches it, not this cluster."""
    from ..devcluster.ports import HOST
    if not cluster.nodes or cluster.first_block == cluster.base_port:
        return []      # (a first node started again elsewhere has a note of its own)
    busy = f"tcp://{HOST}:{cluster.base_port}"
    return [f"note: {busy} was in use (a node already running? `miyaq status --connect {busy}`), so the nodes "
            f"took other ports: code that names {busy} (an App or Client given it) reaches that, not this "
            f"cluster; stop it first, or give no endpoints"]


def _base_port(given: int | None) -> int:
    if given is not None:
        return given
    raw = os.environ.get("MIYAQ_PORT") or "7450"
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"MIYAQ_PORT must be a port number, not {raw!r}") from None


def _zk_connect_timeout(args: argparse.Namespace) -> float:
    """``--zk-connect-timeout``, else ``MIYAQ_ZK_CONNECT_TIMEOUT`` (which the
    nodes would read anyway: they inherit this environment), else 10 s; the
    nodes get it as their flag, so they and the wait for the ring agree."""
    if args.zk_connect_timeout is not None:
        return float(args.zk_connect_timeout)
    raw = os.environ.get("MIYAQ_ZK_CONNECT_TIMEOUT") or "10"
    try:
        return check_zk_connect_timeout(float(raw))
    except (ValueError, ConfigError):
        raise ConfigError(f"MIYAQ_ZK_CONNECT_TIMEOUT must be {MIN_ZK_CONNECT_TIMEOUT:g}..{MAX_ZK_CONNECT_TIMEOUT:g} "
                          f"seconds, not {raw!r}") from None


def run(args: argparse.Namespace) -> int:
    # The cluster's machinery is imported here, not with the command line
    # (``miyaq --help`` and the other commands do not load it).
    from ..devcluster.cluster import DevCluster
    from ..logs import setup_logging
    setup_logging("WARNING")
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # connection retries are not news here
    cluster = DevCluster(
        args.nodes, zk=args.zk, zk_servers=args.zk_servers, zk_connect_timeout=_zk_connect_timeout(args),
        zk_auth=zk_auth(args), base_port=_base_port(args.base_port),
        cluster=args.cluster, replicas=args.replicas, data_dir=args.data_dir, workers=args.workers,
        worker_processes=args.worker_processes, log_dir=args.log_dir, state_dir=os.getcwd(),
        secure=args.secure,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        cluster.request_stop()

    def on_exit(name: str, proc: Proc) -> None:
        what = name if name == "workers" else f"node {name}"
        print(f"{what} exited with code {proc.exit_code}; log: {proc.log_path}", file=sys.stderr, flush=True)

    exited: list[str] = []
    # SIGHUP too (the terminal closed): ZooKeeper and the nodes run in
    # sessions of their own, so a hangup reaches only this process, and
    # before 2026-12-05 it ended it and left them all running.
    previous: dict[int, Any] = {sig: signal.signal(sig, on_signal)
                                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        print(f"miyaq dev-cluster: {args.nodes} node(s), cluster {args.cluster}, logs in {cluster.log_dir}",
              flush=True)
        if cluster.start():
            print("\n".join(banner(cluster)), flush=True)
            exited = cluster.wait(args.duration, on_exit=on_exit)
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        print(f"stopping (up to {cluster.stop_timeout:g}s per step)...", file=sys.stderr, flush=True)
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"stopped; logs kept in {cluster.log_dir}", file=sys.stderr, flush=True)
    if exited:     # the cluster did not run whole: a script that waited on it must know
        print(f"exit status 1: {', '.join(exited)} exited while the cluster ran", file=sys.stderr, flush=True)
        return 1
    return 0
