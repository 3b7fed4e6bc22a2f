"""What miyaq does with a socket's connections once the socket exists: dial
an endpoint (with the IP version it names), dial it again, and read the
connection monitor's events. :mod:`.sockets` makes the sockets.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import zmq

from ..errors import ConfigError
from .endpoints import wants_ipv6

__all__ = ["CONNECTION_CLOSED", "CONNECTION_READY", "FAILED_BEFORE_ZAP", "HANDSHAKE_FAILED", "SPECIFIC_FAILURES",
           "ConnectionEvents",
           "connect_or_refuse", "connection_events", "explain_handshake", "handshake_failure", "monitor_event",
           "redial", "use_family_of"]

#: The socket-monitor events miyaq watches (:meth:`SocketFactory.connection_monitor`).
CONNECTION_CLOSED = int(zmq.EVENT_DISCONNECTED)
CONNECTION_READY = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
HANDSHAKE_FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
"""The three events of a handshake that failed; :func:`handshake_failure` says which way."""
FAILED_BEFORE_ZAP = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
"""Those of them a ZAP handler never hears of (its refusals are ``..._AUTH``)."""

#: Why a handshake failed, as :func:`handshake_failure` names it (what the
#: connecting side sees; checked against libzmq 4.3 with pyzmq's own CURVE
#: authenticator):
KEY_REFUSED = "key refused"
"""The other side's ZAP handler refused our key (unknown to it, or revoked)."""
MECHANISM_MISMATCH = "mechanism mismatch"
"""One side uses CURVE and the other does not (keys on one side only)."""
CLOSED_IN_HANDSHAKE = "closed in the handshake"
"""The other side closed the connection mid-handshake without a word: what a
CURVE server does with a HELLO it cannot decrypt -- we were given another
public key than its own."""
CRYPTOGRAPHIC_ERROR = "cryptographic error"
"""A CURVE message that did not decrypt: on a node, a client or worker given
another node key than this node's (``--server-key``)."""
PROTOCOL_ERROR = "protocol error"
"""Any other ZMTP error in the handshake (not a ZeroMQ peer, a cryptographic
error seen on our side)."""

_CRYPTOGRAPHIC_CODE = 0x11000001          # ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC
_MECHANISM_MISMATCH_CODE = 0x11000002     # ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH


def explain_handshake(failure: str, endpoint: str, secure: bool, who: str = "this client") -> str:
    """What to do about a handshake with ``endpoint`` that failed for
    ``failure`` (:func:`handshake_failure`), said to whoever connects
    (``who``: "this client", "this worker"; ``secure``: whether it has
    keys). The flags named are the client's and worker's (``--key``,
    ``--server-key`` and their ``MIYAQ_`` variables)."""
    if failure == KEY_REFUSED:
        return (f"{endpoint} refused {who}'s key: the node does not know it (not among its authorized keys, "
                f"or revoked; `miyaq keys list` where its keys are)")
    pass_keys = "pass --key and --server-key (MIYAQ_KEY, MIYAQ_SERVER_KEY; docs/security.md)"
    if failure == MECHANISM_MISMATCH:
        if secure:
            return (f"{endpoint} does not use keys: connect without --key and --server-key (MIYAQ_KEY, "
                    f"MIYAQ_SERVER_KEY), or start that node with --keys")
        return f"{endpoint} needs keys (the node runs with --keys): {pass_keys}"
    # A node closes a connection whose mechanism is not its own at the greeting,
    # without a word: the connecting side sees a mismatch only if it read the
    # node's greeting first, else this.
    # A node that stops (is killed) while a connection is in its handshake
    # closes it the same way: said too, as a node restarted under a worker
    # or client is common and a key problem repeats at every attempt.
    if failure == CRYPTOGRAPHIC_ERROR and secure:
        return (f"{endpoint} closed the connection during the key handshake: the node's public key given to "
                f"{who} (--server-key) is most likely not that node's, or the node does not use keys")
    if failure == CLOSED_IN_HANDSHAKE and secure:
        return (f"{endpoint} closed the connection during the key handshake: the node's public key given to "
                f"{who} (--server-key) is most likely not that node's, or the node does not use keys (or "
                f"the node stopped just then)")
    if failure == CLOSED_IN_HANDSHAKE:
        return (f"{endpoint} closed the connection during the handshake, as a node with --keys does to a "
                f"connection without keys ({pass_keys}), as a node that stopped just then does, or as "
                f"something that is not a miyaq node's service port does (its HTTP port?)")
    return f"the handshake with {endpoint} failed ({failure}): is a miyaq node listening there?"


SPECIFIC_FAILURES = (KEY_REFUSED, MECHANISM_MISMATCH, CRYPTOGRAPHIC_ERROR)
"""Reasons that say more than :data:`CLOSED_IN_HANDSHAKE` and :data:`PROTOCOL_ERROR`:
one seen is not replaced by a vaguer one of a later attempt."""


class ConnectionEvents(NamedTuple):
    """What :func:`connection_events` read from a connection monitor."""

    closed: int
    """How many connections closed."""
    connected: bool | None
    """Whether the last event left the socket connected (True), closed
    (False), or there was no such event (None)."""
    failure: str | None
    """Why the last handshake that failed did (:func:`handshake_failure`), or None."""


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


def handshake_failure(frames: list[bytes]) -> str | None:
    """Why a handshake failed, for a monitor message of one of the
    :data:`HANDSHAKE_FAILED` events (:data:`KEY_REFUSED`,
    :data:`MECHANISM_MISMATCH`, :data:`CLOSED_IN_HANDSHAKE`,
    :data:`CRYPTOGRAPHIC_ERROR`, :data:`PROTOCOL_ERROR`); None for any
    other message."""
    event = monitor_event(frames)
    if not event & HANDSHAKE_FAILED:
        return None
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return KEY_REFUSED
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return CLOSED_IN_HANDSHAKE
    value = int.from_bytes(frames[0][2:6], "little")
    if value == _MECHANISM_MISMATCH_CODE:
        return MECHANISM_MISMATCH
    return CRYPTOGRAPHIC_ERROR if value == _CRYPTOGRAPHIC_CODE else PROTOCOL_ERROR


def connection_events(monitor: Any) -> ConnectionEvents:
    """Read every event waiting on a :meth:`SocketFactory.connection_monitor`
    without blocking."""
    closed = 0
    state: bool | None = None
    failure: str | None = None
    while True:
        try:
            frames = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return ConnectionEvents(closed, state, failure)
        event = monitor_event(frames)
        if event == CONNECTION_CLOSED:
            closed += 1
            state = False
        elif event == CONNECTION_READY:
            state = True
        elif event & HANDSHAKE_FAILED:
            failure = handshake_failure(frames)
