"""The two connections of the peer link to one member: bulk and control.

A node keeps two DEALERs to every other member's peer ROUTER (both made
by :func:`open_channels`, each with its disconnect monitor):

* ``bulk`` carries REPLICATE and SYNC -- copies of tasks and pages of a
  resync, up to ``max_message`` each, many of them in a burst or a
  handoff -- and their answers;
* ``control`` carries QUERY (a standby copy asking the other holders
  whether they ran a task) and its answer.

Which command goes on which is :data:`miyaq.cluster.peer_requests.CONTROL_COMMANDS`.
The point is order: a DEALER sends its messages one after the other, so a
QUERY on the bulk DEALER waited in its pipe and the TCP buffers behind
megabytes of copies, and on a narrow link its answer came after the
asker's patience (silence, taken for a holder that is gone: the task ran
twice with no failure). On its own connection it waits behind nothing of
this node's. The ROUTER answers each request on the connection it came
from (by its routing id), so the answer comes back on the control
connection too. A peer sees one more connection and nothing else: the
frames are the same, and a node of an older build answers both.

Both DEALERs are made alike (IMMEDIATE, reconnect backoff, heartbeats,
CURVE when the factory has keys, the peer frame limit): what one has the
other has.
"""
from __future__ import annotations

from typing import Any

from miyaq.cluster.peer_requests import BULK, CONTROL
from miyaq.constants import PEER_RECONNECT_MS
from miyaq.runtime.sockets import SocketFactory

CHANNELS = (BULK, CONTROL)


class MemberChannels:
    """One member's endpoint, its two DEALERs and their monitors (channel -> socket)."""

    __slots__ = ("endpoint", "dealers", "monitors")

    def __init__(self, endpoint: str, dealers: dict[str, Any], monitors: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.dealers = dealers
        self.monitors = monitors

    def channel_of(self, sock: Any) -> str | None:
        """Which channel's DEALER ``sock`` is (None if neither)."""
        return next((c for c, s in self.dealers.items() if s is sock), None)

    def sockets(self) -> list[Any]:
        """Every socket of the member: its DEALERs, then their monitors."""
        return [*self.dealers.values(), *self.monitors.values()]


def open_channels(factory: SocketFactory, endpoint: str, heartbeat_ms: tuple[int, int] | None) -> MemberChannels:
    """Both DEALERs to ``endpoint``, each with its disconnect monitor, made
    by :meth:`~miyaq.runtime.sockets.SocketFactory.watched_dealer` alike:
    IMMEDIATE (never queue for a peer that is not there), reconnecting on a
    backoff of ``PEER_RECONNECT_MS``, the factory's peer frame limit,
    ``heartbeat_ms`` heartbeats and the factory's CURVE keys.

    Raises what ``watched_dealer`` raises -- :class:`~miyaq.errors.ConfigError`
    for an endpoint libzmq refuses, ``zmq.ZMQError`` when no socket can be
    made now (no file descriptor left) -- with every socket made here
    closed: a member has both channels or none."""
    dealers: dict[str, Any] = {}
    monitors: dict[str, Any] = {}
    try:
        for channel in CHANNELS:
            dealers[channel], monitors[channel] = open_channel(factory, endpoint, heartbeat_ms)
    except BaseException:
        for channel, sock in dealers.items():
            sock.disable_monitor()
            monitors[channel].close(linger=0)
            sock.close(linger=0)
        raise
    return MemberChannels(endpoint, dealers, monitors)


def open_channel(factory: SocketFactory, endpoint: str, heartbeat_ms: tuple[int, int] | None) -> tuple[Any, Any]:
    """One channel's DEALER to ``endpoint`` and its disconnect monitor, made
    as :func:`open_channels` makes each (it raises what that raises, with
    both sockets closed): for a channel made anew alone (its connection
    looped back to this node)."""
    return factory.watched_dealer(endpoint, ready=False, immediate=True, reconnect_ms=PEER_RECONNECT_MS,
                                  bounded=True, plain=True, heartbeat_ms=heartbeat_ms)
