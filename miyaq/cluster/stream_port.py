"""Who may subscribe to a node's replication stream, and who takes what it
is sent: the policing of the stream's port
(:class:`~miyaq.cluster.stream.ZmqStreamPublisher` owns the socket and
calls :class:`SubscriberGuard`).

A node's SUB sends the port one thing: one subscription to its own topic
(16 hex digits and ``|``). The port's XPUB hands each subscription over
with the descriptor of the connection it came by; a connection that
subscribes to anything else, or sends anything else, is dropped by a
``shutdown`` of that descriptor (libzmq then ends it and forgets its
subscriptions). The kernel says what each subscriber's TCP connection
acknowledged: one that took nothing for the heartbeat timeout while bytes
waited for it, or that is :data:`STREAM_UNREAD_BUDGET` behind, is dropped
the same way. A frame names the descriptor its connection had when libzmq
read it; every descriptor is checked to still be a connection of this
port (its local port) before anything is done to it.
"""
from __future__ import annotations

import _socket
import logging
import re
from typing import Any

from miyaq.core.unread import acked_bytes, unsent_bytes
from miyaq.logs import LogLimiter
from miyaq.runtime.messages import source_fd
from miyaq.runtime.sockets import zmq

logger = logging.getLogger("miyaq.cluster.stream")     # the stream's logger on purpose: one name to filter
_log = LogLimiter(logger)     # a flood of bad subscriptions: a few lines a minute

#: A topic as :func:`miyaq.cluster.stream_numbering.topic` makes it: 16 lowercase hex digits and ``|``.
_TOPIC = re.compile(rb"[0-9a-f]{16}\|")
#: Bytes a subscriber may have been published and not taken (by what its
#: TCP connection acknowledged) before it is dropped: a peer this far behind
#: resyncs anyway once the high-water mark drops its messages.
STREAM_UNREAD_BUDGET = 128 * 1024 * 1024
#: At the latest, how long after a publish the stream's port reads the
#: subscriptions that came (a send may take the edge of its descriptor).
SUBSCRIPTION_LOOK = 0.1
#: What the ZMTP framing adds to a stream message besides its body: the
#: topic's frame (17 bytes, a flags byte and a size byte), the body's flags
#: byte and its size (1 byte up to 255, else 8).
_TOPIC_WIRE = 19


def wire_size(body: int) -> int:
    """Bytes a stream message with a body of ``body`` bytes takes on a
    connection without keys (with CURVE each frame takes more: the count
    then errs in the subscriber's favour)."""
    return _TOPIC_WIRE + body + (2 if body <= 255 else 9)


def listening_port(sock: Any) -> int:
    """The port a bound socket listens on (its last endpoint's)."""
    return int(sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])


class _Subscriber:
    """One connection to the stream's port that subscribed (by its descriptor)."""

    __slots__ = ("acked", "base_acked", "base_sent", "ends", "stalled", "topic")

    def __init__(self, ends: tuple[Any, Any], topic_: bytes, sent: int, acked: int) -> None:
        self.ends = ends              # (local, peer) address: the descriptor may be another connection's later
        self.topic = topic_
        self.base_sent = sent         # what was published on its topic when it was last found caught up
        self.base_acked = acked       # what its peer had acknowledged then
        self.acked = acked            # at the last look
        self.stalled: float | None = None   # since when bytes wait for it and it takes none


def _socket_of(fd: int) -> Any:
    """The plain ``_socket`` object of descriptor ``fd`` (detach it after
    use: the descriptor is libzmq's); raises OSError when ``fd`` is closed
    or no socket."""
    return _socket.socket(fileno=fd)


def _ends(fd: int) -> tuple[Any, Any] | None:
    try:
        sock = _socket_of(fd)
    except OSError:
        return None
    try:
        return sock.getsockname(), sock.getpeername()
    except OSError:
        return None
    finally:
        sock.detach()


class SubscriberGuard:
    """The stream port's connections, by descriptor: what each subscribed
    to, what each took. ``published`` is the publisher's count of wire
    bytes published per topic (it adds to it; the guard reads it)."""

    def __init__(self, port: int, published: dict[bytes, int], stall_limit: float,
                 unread_budget: int = STREAM_UNREAD_BUDGET) -> None:
        #: The port the stream listens on: a descriptor whose local port is
        #: another is no connection of it (a closed one's number, reused).
        self.port = port
        self.published = published
        self.stall_limit = stall_limit
        self.unread_budget = unread_budget
        self.subscribers: dict[int, _Subscriber] = {}
        #: Connections dropped, by descriptor: their addresses, until another connection has it.
        self._dropped_ends: dict[int, tuple[Any, Any]] = {}
        self.refused = 0      # connections dropped for what they subscribed to or sent
        self.stalled = 0      # connections dropped for not taking what they were sent

    # -- who may subscribe ----------------------------------------------------------------
    def read(self, pub: Any) -> None:
        """Take every subscription (and anything else) the port's connections
        sent on ``pub``; drop the connections that may not have it, once all
        that came is read (a connection's later ones are then ignored: libzmq
        may hand over what it read from it before it saw it end)."""
        doomed: dict[int, str] = {}
        while True:
            try:
                frame = pub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            fd = source_fd(frame)
            data = frame.bytes
            if data[:1] == b"\x00" or fd < 0 or fd in doomed:
                # An unsubscription (or libzmq's own, as a connection ended:
                # no descriptor; no ZMTP 1.0 or 2.0 peer gets in), or more of
                # a connection about to be dropped: nothing to check.
                continue
            ended = self._dropped_ends.get(fd)
            if ended is not None:
                if self._own_ends(fd) == ended:
                    continue          # the dropped connection, not ended yet
                del self._dropped_ends[fd]  # another connection on that descriptor now
            if data[:1] == b"\x01" and _TOPIC.fullmatch(data, 1):
                if self._subscribed(fd, data[1:]):
                    continue
                doomed[fd] = "a second topic"
            elif data[:1] == b"\x01":
                doomed[fd] = f"a subscription of {len(data) - 1} bytes that is no node's topic"
            else:
                doomed[fd] = f"a message of {len(data)} bytes that is no subscription"
        for fd, why in doomed.items():
            self.refused += 1
            _log.warning("refused", "stream port: a connection sent %s: dropped (%d so far)", why, self.refused)
            self._drop(fd)

    def _subscribed(self, fd: int, name: bytes) -> bool:
        """The connection on ``fd`` subscribed to ``name``: True if it may."""
        ends = self._own_ends(fd)
        if ends is None:
            self.subscribers.pop(fd, None)
            return True       # gone already: libzmq forgets its subscription with it
        known = self.subscribers.get(fd)
        if known is not None and known.ends == ends:
            return known.topic == name      # the same subscription again changes nothing
        acked = acked_bytes(fd)
        self.subscribers[fd] = _Subscriber(ends, name, self.published.get(name, 0), acked or 0)
        return True

    def _own_ends(self, fd: int) -> tuple[Any, Any] | None:
        """The (local, peer) addresses of the connection on descriptor
        ``fd`` if it is one of this port's; None if ``fd`` is closed, no
        socket, or another port's. A frame read here names the descriptor
        its connection had; that connection may have closed since and the
        number gone to another -- a worker's, a client's, a peer link, an
        HTTP caller's -- which before 2026-12-05 was shut down in its place
        (a stranger sent a bad subscription and closed at once)."""
        ends = _ends(fd)
        if ends is None or ends[0][1] != self.port:
            return None
        return ends

    def _drop(self, fd: int) -> None:
        """End the connection on ``fd`` (libzmq sees it end, and frees its queue)."""
        self.subscribers.pop(fd, None)
        ends = self._own_ends(fd)
        if ends is None:
            return
        self._dropped_ends[fd] = ends
        try:
            sock = _socket_of(fd)
        except OSError:
            return
        try:
            sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()

    # -- who takes what it is sent ----------------------------------------------------------
    def check(self, now: float) -> None:
        """Ask the kernel what each subscribed connection took; drop those
        that took nothing for ``stall_limit`` while bytes waited, or are
        ``unread_budget`` behind."""
        for fd, sub in list(self.subscribers.items()):
            if self._own_ends(fd) != sub.ends:
                del self.subscribers[fd]      # ended (its descriptor closed, or another connection's now)
                continue
            acked = acked_bytes(fd)
            if acked is None:
                continue
            try:
                waiting = unsent_bytes(fd)
            except OSError:
                waiting = 0
            published = self.published.get(sub.topic, 0)
            if waiting == 0:
                # Its socket is empty, so libzmq holds nothing for it either: caught up.
                sub.base_sent, sub.base_acked, sub.acked, sub.stalled = published, acked, acked, None
                continue
            if acked != sub.acked:
                sub.acked, sub.stalled = acked, None
            elif sub.stalled is None:
                sub.stalled = now
            unread = (published - sub.base_sent) - (acked - sub.base_acked)
            if sub.stalled is not None and now - sub.stalled >= self.stall_limit:
                why = f"took nothing for {now - sub.stalled:.1f} s"
            elif unread >= self.unread_budget:
                why = f"is {unread} bytes behind"
            else:
                continue
            self.stalled += 1
            _log.warning("stalled", "stream port: a subscriber %s: dropped (%d so far)", why, self.stalled)
            self._drop(fd)
