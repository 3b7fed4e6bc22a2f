"""Replication streams over PUB/SUB: one stream per (source, destination).

The ZeroMQ :class:`~miyaq.cluster.transport.StreamPublisher` and
:class:`~miyaq.cluster.transport.StreamSubscriber`: an XPUB that publishes
each destination's messages under its topic, and a SUB subscribed to this
node's topic on every peer. What the messages hold, how they are numbered
and how a receiver finds one lost and asks for a resync are
:mod:`miyaq.cluster.stream_numbering`'s: its
:class:`~miyaq.cluster.stream_numbering.StreamReceiver` and
:class:`~miyaq.cluster.stream_sender.StreamSender` are what these
classes extend with a socket. Who may subscribe to the port, and who takes
what it is sent, are :mod:`miyaq.cluster.stream_port`'s.
"""
from __future__ import annotations

import logging
from typing import Any

import msgpack

from miyaq.cluster.stream_numbering import StreamReceiver, stream_silence, topic
from miyaq.cluster.stream_port import (
    STREAM_UNREAD_BUDGET, SUBSCRIPTION_LOOK, SubscriberGuard, listening_port, wire_size,
)
from miyaq.cluster.stream_sender import StreamSender
from miyaq.cluster.transport import Apply, AskResync
from miyaq.constants import PEER_HEARTBEAT_TIMEOUT, STREAM_HEARTBEAT
from miyaq.logs import LogLimiter
from miyaq.runtime import CRITICAL, RESTART, Supervisor, green, monotonic
from miyaq.runtime.messages import MessageRefused, send_frames
from miyaq.runtime.sockets import SocketFactory, heartbeat_options, zmq

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a flood of oversized messages: a few lines a minute


def subscriber_heartbeats(peer_heartbeat_timeout: float) -> tuple[int, int]:
    """The ZMTP heartbeats (interval, timeout in ms) of a node's SUB: its
    timeout is a stream's silence (:func:`stream_silence`, 6 s at the
    default ``peer_heartbeat_timeout``), a PING every fifth of it.

    libzmq hears the answer to a PING only behind the stream message in
    front of it, so the timeout must exceed the time the largest stream
    message takes to cross: the stream's silence already must (a longer
    silence asks for a resync), so a slow-but-alive link that keeps its
    stream keeps its connection too (docs/operations.md, "Slow links").
    With them a connection the publisher dropped during a partition is
    dropped here too and dialled again, within the connect timeout of
    each try (:meth:`~miyaq.runtime.sockets.SocketFactory.subscriber`)."""
    return heartbeat_options(stream_silence(peer_heartbeat_timeout))


class ZmqStreamPublisher(StreamSender):
    """The XPUB side. ``send(dest, events)`` publishes one message.

    Its port takes, from each connection, one subscription to one node's
    topic (what a node's SUB sends, once per connection:
    :func:`~miyaq.cluster.stream_numbering.topic`); a connection that
    subscribes to anything else (a prefix, everything, a second topic) or
    sends anything else is dropped at once (``shutdown`` of its descriptor:
    libzmq then ends it and forgets its subscriptions), and counted in
    ``guard.refused``. The subscriptions are read by a greenlet of
    ``supervisor`` as they come, within :data:`SUBSCRIPTION_LOOK` of a
    publish (a send may take the edge of the port's descriptor: the first
    send after a read plans a look that late, which the next read
    cancels), and at each :meth:`heartbeat`. Before 2026-12-07 the greenlet
    looked every ``SUBSCRIPTION_LOOK`` whatever was sent: ten wake-ups a
    second idle. (Asking the socket after each send whether a subscription
    waited cost 2 us a send.)

    At each :meth:`heartbeat` (every ``STREAM_HEARTBEAT``) the kernel says
    what each subscribed connection took (TCP's acknowledged bytes): one
    that has bytes waiting and took none for the heartbeat timeout
    (``heartbeat_ms``'s second, the node's ``peer_heartbeat_timeout``), or
    that is :data:`STREAM_UNREAD_BUDGET` bytes behind what was published on
    its topic, is dropped and counted in ``guard.stalled``, and what was
    queued for it freed; it reconnects when it can and resyncs on the gap.
    ZMTP's heartbeat alone dropped a frozen process but not a peer that
    reads nothing and sends PINGs (any traffic resets it)."""

    def __init__(self, sockets: SocketFactory, node_id: str, bind: str, drop_ratio: float = 0.0,
                 heartbeat_ms: tuple[int, int] = heartbeat_options(PEER_HEARTBEAT_TIMEOUT),
                 supervisor: Supervisor | None = None, unread_budget: int = STREAM_UNREAD_BUDGET) -> None:
        super().__init__(node_id, drop_ratio)
        # sends never wait: no zmq.green needed
        self.pub = sockets.publisher(bind, plain=True, heartbeat_ms=heartbeat_ms)
        self.supervisor = supervisor
        #: Wire bytes published per topic since start (:func:`wire_size`).
        self.published: dict[bytes, int] = {}
        #: Who may subscribe, and who takes what it is sent.
        self.guard = SubscriberGuard(listening_port(self.pub), self.published, heartbeat_ms[1] / 1000.0,
                                     unread_budget)
        self._fd: Any = None
        self._look: Any = None      # the port's loop's look planned after a send (a timer), until the next read
        self._closed = False

    def start(self) -> None:
        """Read the subscriptions as they come (with a supervisor; else only
        at each heartbeat). The loop is restarted if it fails: publishing
        goes on without it, and each heartbeat reads them too."""
        if self.supervisor is not None:
            self._fd = green.FdWait(self.pub.getsockopt(zmq.FD))
            self.supervisor.spawn("stream port", self._serve_subscriptions, policy=RESTART)

    def _publish(self, dest: str, body: dict[str, Any]) -> None:
        name = topic(dest)
        data = msgpack.packb(body, use_bin_type=True)
        if self._look is None and self._fd is not None:
            # The send may take the edge of a subscription's coming: the port's
            # loop looks within SUBSCRIPTION_LOOK (the next read cancels it).
            self._look = green.call_later(SUBSCRIPTION_LOOK, self._fd.wake)
        try:
            send_frames(self.pub, [name, data])
        except zmq.Again:
            return   # dropped at the HWM: the next heartbeat reveals the gap
        self.sent += 1
        self.published[name] = self.published.get(name, 0) + wire_size(len(data))

    def forget(self, dest: str) -> None:
        """As :meth:`~miyaq.cluster.stream_sender.StreamSender.forget`, and
        the count of bytes published to ``dest`` (one per destination ever
        published to, kept for good before 2026-12-05)."""
        super().forget(dest)
        self.published.pop(topic(dest), None)

    def heartbeat(self, dests: list[str]) -> None:
        super().heartbeat(dests)
        if not self._closed:
            self.read_subscriptions()
            self.guard.check(monotonic())

    # -- who may subscribe ----------------------------------------------------------------
    def _serve_subscriptions(self) -> None:
        while not self._closed:
            try:
                self.read_subscriptions()
            except zmq.ZMQError:
                if self._closed:
                    return
                raise
            self._fd.wait()     # a subscription, or the look a send planned

    def read_subscriptions(self) -> None:
        """Read what the port's connections sent and drop those that may not
        have it (:meth:`SubscriberGuard.read`). A look planned after a send
        is no longer needed."""
        look, self._look = self._look, None
        if look is not None:
            look.close()
        self.guard.read(self.pub)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._look is not None:
                self._look.close()
                self._look = None
            if self._fd is not None:
                self._fd.wake()
                self._fd.close()
            self.pub.close(linger=0)


class ZmqStreamSubscriber(StreamReceiver):
    """The SUB side: one socket subscribed to this node's topic on every peer,
    read by one critical greenlet.

    Only that greenlet disconnects the SUB from a publisher, and only between
    messages. Asking a SUB whether it can read (``ZMQ_EVENTS``, as the hub
    does before it waits, and as a connect does to wake the reader) already
    takes the first frame of the next message off its publisher's queue; a
    disconnect from that publisher before the rest is read leaves libzmq
    mid-message on a queue that is gone, and its next receive aborts the
    process (``Assertion failed: !_more (src/fq.cpp)``, libzmq issue 2163).
    Chaos runs that killed a node every few seconds lost other nodes to that
    abort after ring changes. So :meth:`connect` only notes an
    endpoint to drop (``dropping``), and the reader disconnects it at the
    top of its loop, where the last thing it did with the socket was read a
    whole message or find none."""

    def __init__(self, sockets: SocketFactory, supervisor: Supervisor, node_id: str, apply: Apply,
                 resync: AskResync,
                 heartbeat_ms: tuple[int, int] = subscriber_heartbeats(PEER_HEARTBEAT_TIMEOUT)) -> None:
        super().__init__(node_id, apply, resync)
        self.supervisor = supervisor
        # [topic, body], at most frame_limit bytes: a refused message is dropped
        # like a lost one (the gap it leaves asks for a resync).
        self.sub = sockets.hub_subscriber([topic(node_id)], max_frames=2, heartbeat_ms=heartbeat_ms)
        self.connected: dict[str, str] = {}
        self.dropping: set[str] = set()     # endpoints the reader disconnects between messages
        self._closed = False

    def connect(self, pubs: dict[str, str]) -> None:
        """Follow the ring: subscribe to each member's PUB endpoint. A member
        that left is unfollowed at once (what it still sends is dropped) and
        its endpoint disconnected by the reader (see the class)."""
        for node_id, endpoint in list(self.connected.items()):
            if pubs.get(node_id) != endpoint:
                self.dropping.add(endpoint)
                del self.connected[node_id]
                self._unfollow(node_id)
        for node_id, endpoint in pubs.items():
            if node_id != self.node_id and node_id not in self.connected:
                if endpoint in self.dropping:
                    self.dropping.discard(endpoint)     # back before the reader let go: keep that connection
                else:
                    try:
                        self.sub.connect(endpoint)
                    except zmq.ZMQError as err:
                        # A member registered an endpoint libzmq refuses: not followed
                        # (as a member never heard); tried again at the next change.
                        logger.warning("stream: cannot follow member %s at %r: %s", node_id, endpoint,
                                       err.strerror)
                        continue
                self.connected[node_id] = endpoint
                self._follow(node_id)

    def _disconnect_dropped(self) -> None:
        """The reader, between messages: let go of the endpoints of members that left."""
        dropping, self.dropping = self.dropping, set()
        for endpoint in dropping:
            try:
                self.sub.disconnect(endpoint)
            except zmq.ZMQError:
                pass      # never connected, or already gone

    def start(self) -> None:
        self.supervisor.spawn("stream reader", self.serve, policy=CRITICAL)

    def serve(self) -> None:
        """Read the stream; at least every STREAM_HEARTBEAT, look for silent sources."""
        while not self._closed:
            try:
                if self.dropping:
                    self._disconnect_dropped()
                if self._take(wait=True):
                    for _ in range(256):
                        if self.sub.turn_over() or not self._take(wait=False):
                            break
            except zmq.ZMQError:
                if self._closed:
                    return        # closed under the reader
                raise
            self._check_silence(monotonic())

    def _take(self, wait: bool) -> bool:
        """Read and handle one message, waiting at most STREAM_HEARTBEAT if
        ``wait``; False if none came. One over the limits ([topic, body],
        ``frame_limit`` bytes) is read to its end and dropped like a lost one
        (the gap it leaves asks for a resync)."""
        try:
            message = self.sub.recv(STREAM_HEARTBEAT) if wait else self.sub.recv_nowait()
        except MessageRefused as refused:
            self.refused += 1
            _log.warning("oversized", "replication message of %d frames, %d bytes dropped (over the limit)",
                         refused.frames, refused.size)
            return True
        if message is None:
            return False
        self._handle(message[0])
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sub.close(linger=0)
        except Exception:
            logger.exception("closing the stream subscriber failed")
