"""Replication streams over PUB/SUB: one stream per (source, destination).

The ZeroMQ :class:`~miyaq.cluster.transport.StreamPublisher` and
:class:`~miyaq.cluster.transport.StreamSubscriber`.

The source publishes each destination's events under a fixed-width topic
(``topic(dest)``: 16 hex digits of blake2b + ``|``, so one node's topic is
never a prefix of another's), numbered by a per-destination sequence and
stamped with the source's incarnation (a random number drawn at start).
Every ``STREAM_HEARTBEAT`` seconds it also publishes, per destination, a
heartbeat carrying the last sequence number sent.

A receiver tracks (incarnation, last sequence, last heard) per source. A gap,
a heartbeat announcing messages it never got, a silent stream or a new
incarnation make it ask for a resync over the peer link (the Clone pattern,
zguide ch. 5): PUB/SUB drops silently at the high-water mark and loses the
first messages after a connect, so the stream alone is never trusted.

Frames: ``[topic, msgpack {"src", "inc", "seq", "epoch", "proto", "ev":
[event...]}]`` (``epoch``: the ring's, as the source saw it; ``proto``: its
peer protocol); a heartbeat has no ``ev``, and has ``"hb": true`` and
``"zk"`` (whether the source has ZooKeeper).

:class:`StreamSender` and :class:`StreamReceiver` are the halves that know
no socket (numbering, and watching the numbers), so the in-memory transport
of :mod:`miyaq.testing.memtransport` runs the same code; the ``Zmq``
classes add a PUB and a SUB.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
from typing import Any

import msgpack

from miyaq.cluster.peer_requests import PEER_PROTOCOL
from miyaq.cluster.stream_port import (
    STREAM_UNREAD_BUDGET, SUBSCRIPTION_LOOK, SubscriberGuard, listening_port, wire_size,
)
from miyaq.cluster.transport import Apply, AskResync
from miyaq.constants import PEER_HEARTBEAT_TIMEOUT, RESYNC_RETRY, STREAM_HEARTBEAT, STREAM_SILENCE
from miyaq.logs import LogLimiter
from miyaq.protocol import codec
from miyaq.runtime import CRITICAL, RESTART, Supervisor, green, monotonic
from miyaq.runtime.messages import MessageRefused, send_frames
from miyaq.runtime.sockets import SocketFactory, heartbeat_options, zmq

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a flood of bad messages: a few lines a minute



def topic(node_id: str) -> bytes:
    return hashlib.blake2b(node_id.encode(), digest_size=8).hexdigest().encode() + b"|"


class _Source:
    __slots__ = ("again", "current", "ended", "heard", "inc", "last", "seq", "synced", "syncing", "zk_since")

    def __init__(self) -> None:
        self.inc = 0
        self.seq = 0
        self.heard = monotonic()      # reset when a silence is acted on
        self.last = 0.0               # when a message of this stream last arrived
        self.zk_since: float | None = 0.0   # since when its heartbeats say it has ZooKeeper (None: it has not)
        self.syncing = False
        self.current = 0              # the number of the resync asked last (only its end counts)
        self.synced = 0               # the number of the last resync that completed
        self.ended = 0.0              # when the last resync ended (monotonic; 0: none yet)
        # Why to resync again once the one under way ends: a gap seen meanwhile
        # (its answer may have been made before the lost message was sent).
        self.again: str | None = None


class StreamSender:
    """The publishing side without its socket: numbers each destination's
    messages and stamps them; :meth:`_publish` (a subclass's) sends one body."""

    def __init__(self, node_id: str, drop_ratio: float = 0.0) -> None:
        self.node_id = node_id
        self.incarnation = random.getrandbits(62) or 1
        self.seqs: dict[str, int] = {}
        self.epoch = 0
        self.zk_ok = True     # announced in heartbeats: peers fence themselves by it
        # Fault injection for tests and `miyaq chaos`: drop this share of messages.
        self.drop_ratio = drop_ratio
        self._rng = random.Random(os.getpid())
        self.dropped = 0
        self.sent = 0

    def start(self) -> None:
        """Nothing to start: publishing needs no greenlet."""

    def send(self, dest: str, events: list[list[Any]]) -> None:
        seq = self.seqs.get(dest, 0) + 1
        self.seqs[dest] = seq
        if self.drop_ratio and self._rng.random() < self.drop_ratio:
            self.dropped += 1
            return
        body = {"src": self.node_id, "inc": self.incarnation, "seq": seq, "epoch": self.epoch, "ev": events,
                "proto": PEER_PROTOCOL}
        self._publish(dest, body)

    def forget(self, dest: str) -> None:
        """``dest`` left the ring for good (the role's ``DEPARTED_GRACE`` is
        over): forget its sequence number. A stream to it later starts again
        from 1; a receiver that still follows this node takes that as a gap
        and resyncs, as it does at any restart of this node. Before
        2026-12-05 the number of every destination ever published to was
        kept: 200 join and leave rounds of nodes with new ids left 202."""
        self.seqs.pop(dest, None)

    def heartbeat(self, dests: list[str]) -> None:
        for dest in dests:
            self._publish(dest, {"src": self.node_id, "inc": self.incarnation,
                                 "seq": self.seqs.get(dest, 0), "epoch": self.epoch, "hb": True,
                                 "zk": self.zk_ok, "proto": PEER_PROTOCOL})

    def _publish(self, dest: str, body: dict[str, Any]) -> None:
        """Send one message to ``dest`` without blocking (it may be lost)."""
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release."""


class ZmqStreamPublisher(StreamSender):
    """The XPUB side. ``send(dest, events)`` publishes one message.

    Its port takes, from each connection, one subscription to one node's
    topic (what a node's SUB sends, once per connection: :func:`topic`); a
    connection that subscribes to anything else (a prefix, everything, a
    second topic) or sends anything else is dropped at once (``shutdown``
    of its descriptor: libzmq then ends it and forgets its subscriptions),
    and counted in ``guard.refused``. The subscriptions are read by a greenlet
    of ``supervisor`` (within :data:`SUBSCRIPTION_LOOK` of their coming) and
    at each :meth:`heartbeat`.

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
        try:
            send_frames(self.pub, [name, data])
        except zmq.Again:
            return   # dropped at the HWM: the next heartbeat reveals the gap
        self.sent += 1
        self.published[name] = self.published.get(name, 0) + wire_size(len(data))

    def forget(self, dest: str) -> None:
        """As :meth:`StreamSender.forget`, and the count of bytes published
        to ``dest`` (one per destination ever published to, kept for good
        before 2026-12-05)."""
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
            self._fd.wait(SUBSCRIPTION_LOOK)

    def read_subscriptions(self) -> None:
        """Read what the port's connections sent and drop those that may not
        have it (:meth:`SubscriberGuard.read`)."""
        self.guard.read(self.pub)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._fd is not None:
                self._fd.wake()
                self._fd.close()
            self.pub.close(linger=0)


class StreamReceiver:
    """The receiving side without its socket: per source, the incarnation,
    the last sequence and when it was last heard. A subclass hands each
    message to :meth:`_handle`, calls :meth:`_check_silence` at least every
    ``STREAM_HEARTBEAT``, and follows the ring with :meth:`_follow` /
    :meth:`_unfollow`."""

    def __init__(self, node_id: str, apply: Apply, resync: AskResync) -> None:
        self.node_id = node_id
        self.sources: dict[str, _Source] = {}
        self.apply = apply
        self.resync = resync
        self.gaps = 0
        self.foreign = 0      # messages dropped: a peer protocol this node does not speak
        self.refused = 0      # messages dropped: over the limit, or not a stream message
        self.resyncs = 0

    def _follow(self, src: str) -> None:
        # A new subscription misses what was sent before it joined
        # (slow joiner): start with a resync.
        self.sources[src] = _Source()
        self._ask_resync(src, "new subscription")

    def _unfollow(self, src: str) -> None:
        self.sources.pop(src, None)

    def _handle(self, frames: list[bytes]) -> None:
        """One message as it came off the wire: ``[topic, msgpack body]``."""
        if len(frames) != 2:
            return
        try:
            body = codec.unpack(frames[1], strict_keys=True)
            src, inc, seq = body["src"], body["inc"], body["seq"]
            if type(src) is not str or type(inc) is not int or type(seq) is not int or seq < 0:
                raise TypeError("src, inc, seq")
        except Exception:
            self.refused += 1
            _log.warning("malformed", "malformed replication message dropped")
            return
        source = self.sources.get(src)
        if source is None:
            return
        proto = body.get("proto", 1)
        if isinstance(proto, bool) or not isinstance(proto, int) or not 1 <= proto <= PEER_PROTOCOL:
            # A newer node's stream is never half-applied: to this node it stays silent.
            self.foreign += 1
            if self.foreign == 1 or self.foreign % 10_000 == 0:
                logger.error("stream from %s is in peer protocol %r; this node speaks 1 to %d: its messages "
                             "are dropped (%d so far); upgrade this node", src, proto, PEER_PROTOCOL, self.foreign)
            return
        source.heard = source.last = monotonic()
        if body.get("hb"):
            if body.get("zk") is False:
                source.zk_since = None
            elif source.zk_since is None:
                source.zk_since = source.last
        if inc != source.inc:
            source.inc = inc
            source.seq = seq if body.get("hb") else seq - 1
            self._ask_resync(src, "new incarnation")
            if body.get("hb"):
                return
        if body.get("hb"):
            if seq > source.seq:
                self.gaps += 1
                got, source.seq = source.seq, seq
                self._ask_resync(src, f"heartbeat says {seq}, got up to {got}")
            return
        if seq != source.seq + 1:
            self.gaps += 1
            self._ask_resync(src, f"gap: expected {source.seq + 1}, got {seq}")
        source.seq = seq
        self.apply(src, body.get("ev") or [])

    def _check_silence(self, now: float) -> None:
        for src, source in self.sources.items():
            if now - source.heard > STREAM_SILENCE and not source.syncing:
                source.heard = now
                self._ask_resync(src, "silent stream")

    def _ask_resync(self, src: str, why: str) -> None:
        """Resync from ``src``; if one is under way, once it ends (its answer
        may have been made before what this one is for was lost)."""
        source = self.sources.get(src)
        if source is None:
            return
        if source.syncing:
            source.again = source.again or why
            return
        source.syncing = True
        self.resyncs += 1
        source.current = self.resyncs      # numbered across sources: a source followed anew counts up from there
        logger.info("stream from %s: %s; resyncing", src, why)
        self.resync(src, source.current)

    def resync_all(self, why: str) -> dict[str, int]:
        """Ask every source for its state again (this node missed time), at
        once: a resync under way supersedes none of what it asks, so it is
        superseded (its end no longer counts, :meth:`resync_done`). Returns
        each source's new resync number: :meth:`synced_since` says when all
        of them completed."""
        for src, source in self.sources.items():
            source.syncing = False
            source.again = None
            self._ask_resync(src, why)
        return {src: source.current for src, source in self.sources.items()}

    def resync_done(self, src: str, number: int, complete: bool) -> None:
        """Resync ``number`` from ``src`` ended (``complete``: applied to its
        end; else failed: the stream stays suspect and is asked again when it
        shows a gap or goes silent). A gap seen while it ran starts the next
        one at once. The end of a resync a later one superseded changes
        nothing: the later one is still under way."""
        source = self.sources.get(src)
        if source is not None and number == source.current:
            source.syncing = False
            source.ended = monotonic()
            if complete:
                source.synced = number
            again, source.again = source.again, None
            if again is not None:
                self._ask_resync(src, f"{again} (during the last resync)")

    def resync_unsynced(self, marks: dict[str, int], sources: list[str], why: str) -> None:
        """Ask again each of ``sources`` whose resync since its mark failed
        (none under way, none completed) ``RESYNC_RETRY`` ago or more."""
        now = monotonic()
        for src in sources:
            source = self.sources.get(src)
            if (source is not None and not source.syncing and source.synced < marks.get(src, 1)
                    and now - source.ended >= RESYNC_RETRY):
                self._ask_resync(src, why)

    def synced_since(self, marks: dict[str, int], sources: list[str]) -> bool:
        """Every one of ``sources`` completed a resync numbered at least its
        mark since (a source without a mark: any resync)."""
        for src in sources:
            source = self.sources.get(src)
            if source is None or source.synced < marks.get(src, 1):
                return False
        return True

    def caught_up(self, src: str) -> bool:
        source = self.sources.get(src)
        return source is not None and bool(source.inc) and not source.syncing

    def last_heard(self) -> dict[str, float]:
        return {src: source.heard for src, source in self.sources.items()}

    def heard_from(self, within: float) -> dict[str, float | None]:
        now = monotonic()
        return {src: source.zk_since for src, source in self.sources.items() if now - source.last <= within}


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
                 resync: AskResync) -> None:
        super().__init__(node_id, apply, resync)
        self.supervisor = supervisor
        # [topic, body], at most frame_limit bytes: a refused message is dropped
        # like a lost one (the gap it leaves asks for a resync).
        self.sub = sockets.hub_subscriber([topic(node_id)], max_frames=2)
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
