"""CURVE options for sockets: what a :class:`~miyaq.runtime.sockets.SocketFactory` applies.

A node's factory gets a :class:`NodeCurve`: its bound sockets are CURVE
servers with the cluster key and a ZAP domain per audience (``miyaq`` for
the service port, ``miyaq-peer`` for the peer port and the stream); its connecting
sockets (to other nodes) are CURVE clients presenting the same key. A
client's or worker's factory gets a :class:`ClientCurve`: its own key pair
and the node's public key.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils import z85

from miyaq.devstate import default_keys
from miyaq.errors import ConfigError
from miyaq.runtime.small_files import warn_if_read_by_others

from . import certs

logger = logging.getLogger(__name__)

#: ZAP domain per audience: the node's ZAP handler admits any authorized key
#: on the service port and only peer keys on the peer port and the stream.
ZAP_DOMAINS = {"service": "miyaq", "peer": "miyaq-peer"}

FINGERPRINT_CHARS = 16
"""Hex digits of a key fingerprint (64 bits: enough to tell two keys apart, not to stand for one)."""


def key_fingerprint(public: bytes) -> str:
    """A short name of a public key (Z85, as :func:`certs.read` gives it):
    the first :data:`FINGERPRINT_CHARS` hex digits of the SHA-256 of its 32
    bytes. Safe to show and publish: it is made from the public key only,
    never the secret. A node publishes its cluster key's in ZooKeeper
    (:mod:`miyaq.cluster.zk_keys`)."""
    return hashlib.sha256(z85.decode(public)).hexdigest()[:FINGERPRINT_CHARS]


@dataclass(frozen=True)
class ClientCurve:
    """CURVE client credentials: our pair and the server's public key (Z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes

    def apply_server(self, sock: Any, audience: str) -> None:
        raise ConfigError("a client key cannot serve: binding needs the cluster key (--keys)")

    def apply_client(self, sock: Any) -> None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


@dataclass(frozen=True)
class NodeCurve:
    """A node's CURVE: server with the cluster key, and the same key as a client of other nodes."""

    public: bytes
    secret: bytes

    def apply_server(self, sock: Any, audience: str) -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAINS[audience].encode())

    def apply_client(self, sock: Any) -> None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def client_curve(key_path: str | None, server_key_path: str | None) -> ClientCurve | None:
    """Credentials from ``--key``/``MIYAQ_KEY`` and ``--server-key``/``MIYAQ_SERVER_KEY``
    (arguments win over the environment), else from a ``miyaq dev-cluster
    --secure`` started in this directory (:func:`miyaq.devstate.default_keys`);
    None when none is set. One without the other is a ConfigError naming the
    missing one."""
    if not key_path and not server_key_path:
        key_path, server_key_path = default_keys()
    key_path = key_path or os.environ.get("MIYAQ_KEY") or None
    server_key_path = server_key_path or os.environ.get("MIYAQ_SERVER_KEY") or None
    if key_path is None and server_key_path is None:
        return None
    if key_path is None:
        raise ConfigError("--server-key given without --key: pass your own secret certificate "
                          "(NAME.key_secret from `miyaq keys add`) with --key or MIYAQ_KEY")
    if server_key_path is None:
        raise ConfigError("--key given without --server-key: pass the node's public certificate "
                          "(node.key from `miyaq keys init`) with --server-key or MIYAQ_SERVER_KEY")
    own = certs.read(key_path)
    if own.secret is None:
        raise ConfigError(f"{key_path} holds no secret key: pass NAME.key_secret, not NAME.key")
    _warn_once_if_read_by_others(key_path)
    server = certs.read(server_key_path)
    return ClientCurve(own.public, own.secret, server.public)


_warned: set[str] = set()


def _warn_once_if_read_by_others(path: str) -> None:
    """Warn when others may read the secret key file ``path``: once a
    process, at a worker's start or a client's first, not at each of a
    program's clients."""
    if path not in _warned and warn_if_read_by_others(path, "secret key file", logger):
        _warned.add(path)
