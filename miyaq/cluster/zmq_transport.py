"""The transport of a clustered node over ZeroMQ (see :mod:`miyaq.cluster.transport`)."""
from __future__ import annotations

from miyaq.cluster.peer import PeerEndpoint
from miyaq.cluster.stream import ZmqStreamPublisher, ZmqStreamSubscriber, subscriber_heartbeats
from miyaq.cluster.transport import Apply, AskResync
from miyaq.constants import PEER_HEARTBEAT_TIMEOUT
from miyaq.core.binding import binding, peer_port, pub_port
from miyaq.runtime import Supervisor
from miyaq.runtime.sockets import SocketFactory, heartbeat_options
from miyaq.security.guard import Guard


class ZmqTransport:
    """The peer link and streams over ZeroMQ: a ROUTER bound on ``peer_bind``
    and DEALERs to the others; a PUB bound on ``pub_bind`` and one SUB.

    ``drop_ratio`` drops that share of stream messages (fault injection for
    tests and ``miyaq chaos``: ``MIYAQ_FAULT_STREAM_DROP``); ``guard`` checks
    each peer request's key (with keys; the sockets' factory then runs CURVE);
    ``heartbeat_timeout``: seconds the other nodes may leave the PUB's and the
    peer sockets' ZMTP heartbeats unanswered (``peer_heartbeat_timeout``); the
    SUB's own wait a stream's silence (:func:`subscriber_heartbeats`)."""

    def __init__(self, sockets: SocketFactory, supervisor: Supervisor, peer_bind: str, pub_bind: str,
                 drop_ratio: float = 0.0, guard: Guard | None = None,
                 heartbeat_timeout: float = PEER_HEARTBEAT_TIMEOUT) -> None:
        self.heartbeat_ms = heartbeat_options(heartbeat_timeout)
        self.subscriber_heartbeat_ms = subscriber_heartbeats(heartbeat_timeout)
        self.guard = guard
        self.sockets = sockets
        self.supervisor = supervisor
        self.peer_bind = peer_bind
        self.pub_bind = pub_bind
        self.drop_ratio = drop_ratio

    def peer_link(self, node_id: str) -> PeerEndpoint:
        with binding(peer_port(self.peer_bind)):
            return PeerEndpoint(self.sockets, self.supervisor, node_id, self.peer_bind, self.guard,
                                heartbeat_ms=self.heartbeat_ms)

    def publisher(self, node_id: str) -> ZmqStreamPublisher:
        with binding(pub_port(self.pub_bind)):
            return ZmqStreamPublisher(self.sockets, node_id, self.pub_bind, self.drop_ratio,
                                      heartbeat_ms=self.heartbeat_ms, supervisor=self.supervisor)

    def subscriber(self, node_id: str, apply: Apply, resync: AskResync) -> ZmqStreamSubscriber:
        return ZmqStreamSubscriber(self.sockets, self.supervisor, node_id, apply, resync,
                                   heartbeat_ms=self.subscriber_heartbeat_ms)
