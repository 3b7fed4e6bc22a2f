"""``miyaq node``: run a node (standalone without --zk)."""
from __future__ import annotations

import argparse
import math
import os
from typing import Mapping

from miyaq.config import NodeConfig
from miyaq.errors import ConfigError

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


def stream_drop(environ: Mapping[str, str]) -> float:
    """The share of stream messages to drop, from :data:`STREAM_DROP_ENV`:
    a number from 0 to 1 (unset or empty: 0)."""
    raw = environ.get(STREAM_DROP_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        share = float(raw)
    except ValueError:
        share = math.nan
    if not 0.0 <= share <= 1.0:       # NaN too
        raise ConfigError(f"{STREAM_DROP_ENV} must be a share from 0 to 1 of the replication stream's "
                          f"messages to drop, not {raw!r}")
    return share


def run(args: argparse.Namespace) -> int:
    # The node's parts are imported here, not with the command line: `miyaq
    # --help` and the other commands do not load them (about 250 ms of CPU).
    from miyaq.logs import setup_logging
    from miyaq.node.assemble import build_node
    from miyaq.runtime import open_files
    config = NodeConfig.load(vars(args))
    setup_logging(config.log_level)
    open_files.prepare_server("node")      # this is the node's own process: its limit on open files
    node = build_node(config, stream_drop=stream_drop(os.environ))
    node.install_signal_handlers()
    node.serve_forever()
    return 1 if node.crashed else 0
