"""The options of every command that talks to a node over ZeroMQ, declared once.

``--connect`` (env ``MIYAQ_CONNECT``, else a dev cluster started in this
directory, else ``tcp://127.0.0.1:7450``), ``--key`` (env ``MIYAQ_KEY``: your
secret certificate, ``NAME.key_secret`` from ``miyaq keys add``) and
``--server-key`` (env ``MIYAQ_SERVER_KEY``: the node's public certificate,
``node.key`` from ``miyaq keys init``). The environment is read when the
command runs, never at import (miyaq.security.curve, miyaq.devstate).
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import ConfigError

KEY_HELP = ("your secret certificate (NAME.key_secret from `miyaq keys add`); with --server-key, every "
            "socket runs CURVE [env MIYAQ_KEY]")
SERVER_KEY_HELP = "the node's public certificate (node.key from `miyaq keys init`) [env MIYAQ_SERVER_KEY]"


def add_key_options(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--key PATH`` and ``--server-key PATH``. ``nested``: a sub-parser under
    one that has them too (its default must not hide what was given before
    the action word)."""
    default: Any = argparse.SUPPRESS if nested else None
    p.add_argument("--key", default=default, metavar="PATH", help=KEY_HELP)
    p.add_argument("--server-key", default=default, metavar="PATH", help=SERVER_KEY_HELP)


def add_client_options(p: argparse.ArgumentParser) -> None:
    """``--connect``, the key options and ``--json``: for a command that talks to nodes."""
    p.add_argument("--connect", default=None,
                   help="comma-separated node endpoints [env MIYAQ_CONNECT; else what `miyaq dev-cluster` "
                        "started in this directory; else tcp://127.0.0.1:7450]")
    add_key_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def keys(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``(key, server_key)`` for a Client, from the parsed options (the
    environment fills in what is not given). A ``--key`` that is no file
    is a clear error here, before anything connects."""
    key = getattr(args, "key", None)
    if key is not None and not os.path.isfile(key):
        raise ConfigError(f"--key {key}: no such certificate file (--key is your secret certificate, "
                          f"NAME.key_secret from `miyaq keys add`; a task's deduplication key is --dedup-key)")
    return key, getattr(args, "server_key", None)


def client(args: argparse.Namespace, **options: Any) -> Any:
    """A threaded Client for ``args`` (``--connect`` and the keys)."""
    from ..client.client import Client
    key, server_key = keys(args)
    return Client(getattr(args, "connect", None) or None, green=False, key=key, server_key=server_key, **options)
