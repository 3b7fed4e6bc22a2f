"""What miyaq does with a socket's connections once the socket exists: dial
an endpoint (with the IP version it names), dial it again, and read the
connection monitor's events. :mod:`.sockets` makes the sockets.
"""
from __future__ import annotations

from typing import Any

import zmq

from ..errors import ConfigError
from .endpoints import wants_ipv6

__all__ = ["CONNECTION_CLOSED", "CONNECTION_READY", "connect_or_refuse", "connection_events", "monitor_event",
           "redial", "use_family_of"]

#: The socket-monitor events miyaq watches (:meth:`SocketFactory.connection_monitor`).
CONNECTION_CLOSED = int(zmq.EVENT_DISCONNECTED)
CONNECTION_READY = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)


def use_family_of(sock: Any, endpoint: str) -> None:
    """Set libzmq's IPv6 option of ``sock`` for the next bind or connect to
    ``endpoint`` (:func:`miyaq.runtime.endpoints.wants_ipv6`: on for an IPv6
    address, and for a host name while ``MIYAQ_IP_VERSION`` is 6; off for
    anything else). libzmq copies a socket's options at
    each bind and connect, so one socket may reach IPv4 and IPv6 endpoints
    (a SUB following a ring of both)."""
    sock.setsockopt(zmq.IPV6, 1 if wants_ipv6(endpoint) else 0)


def connect_or_refuse(sock: Any, endpoint: str) -> None:
    """``sock.connect(endpoint)``, or :class:`~miyaq.errors.ConfigError`
    naming the endpoint when libzmq refuses it at once (not an endpoint:
    ``"tcp://host"`` without a port, ``"ipc://"``, an unknown transport).
    The socket is left as it was; closing it is the caller's. Only the
    form is checked here: a well-formed endpoint that nothing answers
    connects in the background, as ever."""
    try:
        use_family_of(sock, endpoint)
        sock.connect(endpoint)
    except zmq.ZMQError as err:
        reason = zmq.strerror(err.errno) if err.errno is not None else str(err)
        shown = endpoint if len(endpoint) <= 200 else endpoint[:200] + "..."
        raise ConfigError(f"cannot connect to {shown!r}: {reason} "
                          f"(an endpoint looks like tcp://host:port or ipc:///path)") from None


def redial(sock: Any, endpoint: str) -> None:
    """Drop ``sock``'s connection to ``endpoint`` and connect again (a
    connection that looped back to the socket itself: a TCP self-connect).
    Its connection monitor then reports the closing."""
    try:
        sock.disconnect(endpoint)
    except zmq.ZMQError:
        pass            # already gone
    use_family_of(sock, endpoint)
    sock.connect(endpoint)


def monitor_event(frames: list[bytes]) -> int:
    """The event number of a monitor message (two frames: 2 bytes of event
    number and 4 of value, then the endpoint); 0 if it is not one."""
    return int.from_bytes(frames[0][:2], "little") if frames and len(frames[0]) >= 2 else 0


def connection_events(monitor: Any) -> tuple[int, bool | None]:
    """Read every event waiting on a :meth:`SocketFactory.connection_monitor`
    without blocking: how many connections closed, and whether the last
    event left the socket connected (True), closed (False) or there was
    none (None)."""
    closed = 0
    state: bool | None = None
    while True:
        try:
            event = monitor_event(monitor.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return closed, state
        if event == CONNECTION_CLOSED:
            closed += 1
            state = False
        elif event == CONNECTION_READY:
            state = True
