"""How both client drivers (threads and greenlets: :mod:`.io`; asyncio:
:mod:`miyaq.aio.driver`) open their connections to nodes: each a DEALER
with its connection monitor (:meth:`SocketFactory.watched_dealer`, the
monitor attached before the socket connects).

An endpoint libzmq refuses to dial is the user's error when the user gave
it (``ConfigError``, nothing left open) and a node's when its RING reply
named it (logged and skipped: the client goes on with the nodes it can
reach; :meth:`miyaq.client.nodes.Nodes.from_ring` never offers it again).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..logs import LogLimiter

if TYPE_CHECKING:
    from ..runtime.sockets import SocketFactory

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a RING reply may name many endpoints: a few lines a minute


def dial_given(factory: "SocketFactory", endpoints: list[str]) -> tuple[list[Any], list[Any]]:
    """The sockets and monitors of the endpoints a user gave, in order.
    Raises ``ConfigError`` naming the first one libzmq refuses, with the
    factory closed (the sockets made before it too)."""
    try:
        watched = [factory.watched_dealer(ep, ready=True, immediate=True) for ep in endpoints]
    except ConfigError:
        factory.close()
        raise
    return [sock for sock, _ in watched], [monitor for _, monitor in watched]


def dial_discovered(factory: "SocketFactory", endpoint: str) -> tuple[Any, Any] | None:
    """The socket and monitor of a node a RING reply named; None (logged)
    when libzmq refuses its endpoint."""
    try:
        return factory.watched_dealer(endpoint, ready=True, immediate=True)
    except ConfigError as err:
        _log.warning("refused", "miyaq client: not dialling a node the ring names: %s", err.message)
        return None
