"""``miyaq node``: run a node (standalone without --zk)."""
from __future__ import annotations

import argparse
import os

from miyaq.logs import setup_logging
from miyaq.config import NodeConfig
from miyaq.node.assemble import build_node
from miyaq.runtime import open_files

#: Fault injection for tests and ``miyaq chaos``: the share of replication
#: stream messages this node drops (docs/cluster.md).
STREAM_DROP_ENV = "MIYAQ_FAULT_STREAM_DROP"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="run a node", description=(
        "Run a miyaq node. Without --zk it is standalone: a ring of one, its own leader. "
        "Every option falls back to the environment variable MIYAQ_<OPTION> and then to "
        "the --config TOML file."))
    NodeConfig.add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = NodeConfig.load(vars(args))
    setup_logging(config.log_level)
    open_files.prepare_server("node")      # this is the node's own process: its limit on open files
    node = build_node(config, stream_drop=float(os.environ.get(STREAM_DROP_ENV, "0") or 0))
    node.install_signal_handlers()
    node.serve_forever()
    return 1 if node.crashed else 0
