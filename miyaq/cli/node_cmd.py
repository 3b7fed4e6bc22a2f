"""``miyaq node``: run a node (standalone without --zk)."""
from __future__ import annotations

import argparse

from ..config import NodeConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="run a node", description=(
        "Run a miyaq node. Without --zk it is standalone: a ring of one, its own leader. "
        "Every option falls back to the environment variable MIYAQ_<OPTION> and then to "
        "the --config TOML file."))
    NodeConfig.add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .main import setup_logging
    config = NodeConfig.load(vars(args))
    setup_logging(config.log_level)
    from ..node.node import Node
    node = Node(config)
    node.install_signal_handlers()
    node.serve_forever()
    return 1 if node.crashed else 0
