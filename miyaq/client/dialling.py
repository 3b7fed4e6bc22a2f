"""How both client drivers (threads and greenlets: :mod:`.io`; asyncio:
:mod:`miyaq.aio.driver`) open their connections to nodes: each a DEALER
with its connection monitor (:meth:`SocketFactory.watched_dealer`, the
monitor attached before the socket connects), and ZMTP heartbeats
(``heartbeat_timeout``, :data:`CLIENT_HEARTBEAT_TIMEOUT` by default).

An endpoint libzmq refuses to dial is the user's error when the user gave
it (``ConfigError``, nothing left open) and a node's when its RING reply
named it (logged and skipped: the client goes on with the nodes it can
reach; :meth:`miyaq.client.nodes.Nodes.from_ring` never offers it again).
A socket libzmq cannot make at all -- the process has no file descriptor
left -- is :class:`~miyaq.errors.Unavailable` for the user's endpoints
(naming the open files and the limit) and, for a node the ring names, is
logged and tried again at the next RING reply: the client's I/O loop goes
on either way.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from zmq import ZMQError      # one class whatever the flavour (plain, green, asyncio)

from ..errors import ConfigError, Unavailable
from ..logs import LogLimiter

if TYPE_CHECKING:
    from ..runtime.sockets import SocketFactory

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a RING reply may name many endpoints: a few lines a minute

#: Seconds of silence after which a client drops its connection to a node
#: (the default ``heartbeat_timeout`` of ``Client``; a ZMTP PING goes every
#: fifth of it). A node that stops answering its PINGs -- its host gone without
#: closing the connection (power, a cable, a partition), its process frozen
#: -- has its connection dropped after the timeout, which the client treats as any
#: closed connection (requests to it fail with ``Unavailable``, a result wait
#: goes on at the next node, unacknowledged submits go elsewhere; what was
#: queued for it is freed). Before, such a connection stayed open until the
#: kernel gave up on it (minutes): each request to the node waited out its
#: own timeout. A live node answers from libzmq's thread however busy it is.
CLIENT_HEARTBEAT_TIMEOUT = 10.0


def client_heartbeats(timeout: float) -> tuple[int, int]:
    """The ``heartbeat_ms`` (interval, timeout in milliseconds) of a client's
    ``heartbeat_timeout`` in seconds."""
    from ..runtime.sockets import heartbeat_options    # the runtime is loaded once a client dials
    return heartbeat_options(timeout)


def dial_given(factory: "SocketFactory", endpoints: list[str],
               heartbeat_ms: tuple[int, int]) -> tuple[list[Any], list[Any]]:
    """The sockets and monitors of the endpoints a user gave, in order, with
    ZMTP heartbeats ``heartbeat_ms`` (:func:`client_heartbeats`).
    Raises ``ConfigError`` naming the first one libzmq refuses, with the
    factory closed (the sockets made before it too)."""
    watched = []
    try:
        for endpoint in endpoints:
            watched.append(factory.watched_dealer(endpoint, ready=True, immediate=True,
                                                  heartbeat_ms=heartbeat_ms))
    except ConfigError:
        factory.close()
        raise
    except ZMQError as exc:
        factory.close()
        raise Unavailable(f"cannot open a socket to {endpoint}: {exc}{_hint(exc)}") from None
    return [sock for sock, _ in watched], [monitor for _, monitor in watched]


def dial_discovered(factory: "SocketFactory", endpoint: str,
                    heartbeat_ms: tuple[int, int]) -> tuple[Any, Any] | bool | None:
    """The socket and monitor of a node a RING reply named; False (logged)
    when libzmq refuses its endpoint; None (logged) when no socket can be
    made now (no file descriptor left): as for ``Transport.connect``."""
    try:
        return factory.watched_dealer(endpoint, ready=True, immediate=True, heartbeat_ms=heartbeat_ms)
    except ConfigError as err:
        _log.warning("refused", "miyaq client: not dialling a node the ring names: %s", err.message)
        return False
    except ZMQError as exc:
        _log.warning("no socket", "miyaq client: cannot open a socket to %s, a node the ring names, now: %s%s; "
                     "trying again at the next ring update", endpoint, exc, _hint(exc))
        return None


def place(socks: list[Any], monitors: list[Any], node: int, sock: Any, monitor: Any) -> None:
    """Put a node's new socket and its monitor at index ``node`` of a
    driver's lists: a retired index is reused (:attr:`Nodes.next_slot`), else
    the lists grow by one."""
    if node < len(socks):
        socks[node], monitors[node] = sock, monitor
    else:
        socks.append(sock)
        monitors.append(monitor)


def hang_up(sock: Any, monitor: Any) -> None:
    """Close a node's socket and its connection monitor for good (a node
    that left the ring: ``Transport.disconnect``). Never raises."""
    try:
        sock.disable_monitor()
    except ZMQError:
        pass
    monitor.close(0)
    sock.close(0)


def _hint(exc: BaseException) -> str:
    from ..runtime.open_files import open_files_hint     # the runtime is loaded once a client exists
    return open_files_hint(exc)
