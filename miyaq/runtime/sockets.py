"""The one module that imports ``zmq.green``, and the one place sockets are made.

Every ZeroMQ socket of miyaq -- the node's service and peer ROUTERs, the
replication PUB and SUB, the peer DEALERs, the worker's link and heartbeat
DEALERs, the client's DEALERs -- comes from a :class:`SocketFactory`, so each
kind's options (high-water marks, ``ROUTER_MANDATORY``, linger, size limits,
reconnect intervals) are written once, and security (CURVE) can be applied in
one place.

A factory wraps one context of one *flavour*: ``"green"`` (``zmq.green``, for
code running in the gevent hub), ``"plain"`` (pyzmq, for native threads: the
threaded client, the worker's heartbeat thread) or ``"asyncio"``
(``zmq.asyncio``, for the asyncio client: sockets whose ``recv`` is awaited
in the event loop's thread). ``green=True``/``False`` still choose the first
two. Socket types and options are the same constants in every flavour.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Protocol, Sequence, overload

import importlib

import zmq
import zmq.green as green_zmq

from . import clock, green

HWM = 100_000
#: Bytes one message may carry beyond ``max_message`` (its body): the routing
#: id, the tag and command frames, and the fields a node adds to a record it
#: forwards to another node. It is also each frame's limit over ``max_message``
#: (libzmq ``MAXMSGSIZE``): no frame the protocol needs is larger.
FRAME_SLACK = 4096

ZAP_ENDPOINT = "inproc://zeromq.zap.01"

#: The pyzmq module of each flavour. ``zmq.asyncio`` is imported only when an
#: asyncio factory is made: it imports asyncio and with it ``ssl``, which a
#: gevent worker may import only after it has monkey-patched.
FLAVOURS = {"green": "zmq.green", "plain": "zmq", "asyncio": "zmq.asyncio"}

# ZMQ_EVENTS through the Cython backend: pyzmq's own getsockopt wraps it in an enum.
_backend_get = zmq.backend.Socket.get
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

__all__ = ["FLAVOURS", "HWM", "HubSocket", "MessageRefused", "SocketFactory", "SocketSecurity", "green_zmq",
           "recv_bounded", "recv_with_user", "send_frames", "zmq"]


# -- sending ----------------------------------------------------------------------------
# pyzmq's send_multipart ORs SNDMORE into the flags of every frame with Python enum
# arithmetic and sends each frame through its keyword-checking send: 9-13 us of CPU
# for a four-frame message, against 3-4 us for the same frames sent one by one with
# the flags computed once as plain ints (docs/performance.md, "Sending frames").
_MORE_NOW = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOW = int(zmq.NOBLOCK)


def send_frames(sock: Any, frames: Sequence[bytes]) -> None:
    """``sock.send_multipart(frames, zmq.NOBLOCK)`` on a plain socket, with the same outcome
    (not for ``zmq.green`` sockets: their ``send`` re-reads the socket's state after
    every frame unless called from their own ``send_multipart``).

    libzmq takes a multipart message whole or not at all: room is checked
    when its first frame is sent, so ``zmq.Again`` (no room, or no such
    peer on a ``ROUTER``) can only come from the first frame, and nothing of
    the message has been queued then. ``frames`` must not be empty."""
    send = sock.send
    last = len(frames) - 1
    for i in range(last):
        send(frames[i], _MORE_NOW)
    send(frames[last], _NOW)


class SocketSecurity(Protocol):
    """What a factory applies to every socket it makes (CURVE: miyaq.security.curve)."""

    def apply_server(self, sock: Any, audience: str) -> None:
        """Options for a bound socket, set before it binds. ``audience`` is
        ``"service"`` (producers, workers, operators) or ``"peer"`` (other
        nodes only: the peer ROUTER and the replication PUB)."""

    def apply_client(self, sock: Any) -> None:
        """Options for a connecting socket, set before it connects."""


def recv_with_user(sock: Any, flags: int = 0) -> tuple[list[bytes], str | None]:
    """One multipart message and the User-Id its connection authenticated as
    (None without CURVE). Reads the first frame as a zero-copy frame to get
    its metadata, the rest as bytes; raises like ``recv`` (``zmq.Again``)."""
    first = sock.recv(flags, copy=False)
    try:
        user: str | None = first.get("User-Id")
    except zmq.ZMQError:
        user = None
    frames = [first.bytes]
    while sock.getsockopt(zmq.RCVMORE):
        frames.append(sock.recv())
    return frames, user


class MessageRefused(Exception):
    """A message :func:`recv_bounded` read to its end but did not keep: it had
    more frames than allowed (``reason="frames"``) or more bytes
    (``"bytes"``). ``head`` is its first frame (a ROUTER's routing id, to
    answer it), ``frames`` and ``size`` what it really held."""

    def __init__(self, head: bytes, user: str | None, frames: int, size: int, reason: str) -> None:
        super().__init__(f"message of {frames} frames and {size} bytes refused ({reason})")
        self.head = head
        self.user = user
        self.frames = frames
        self.size = size
        self.reason = reason


def recv_bounded(sock: Any, max_frames: int, max_bytes: int, flags: int = 0,
                 with_user: bool = True) -> tuple[list[bytes], str | None]:
    """One multipart message and the User-Id its connection authenticated as
    (None without CURVE, or when ``with_user`` is false: asking costs an
    exception per message on a socket without CURVE), keeping at most
    ``max_frames`` frames and ``max_bytes`` bytes (every frame counted, the
    first included).

    Frames are read one by one without copying; a frame past either limit is
    dropped as soon as it is read, the rest of the message drained the same
    way, and :class:`MessageRefused` raised once the message is over, so the
    next read starts at the next message. Raises like ``recv`` (``zmq.Again``
    with NOBLOCK when no message waits).

    libzmq delivers a multipart message only once all of it has arrived, and
    bounds only each frame (``MAXMSGSIZE``): this reader bounds what the
    process keeps of it, not what libzmq buffered while it came in."""
    first = sock.recv(flags, copy=False)
    user: str | None = None
    if with_user:
        try:
            user = first.get("User-Id")
        except zmq.ZMQError:
            user = None
    head = first.bytes
    frames = [head]
    size = len(head)
    count = 1
    refused = ""
    more = first.more
    while more:
        part = sock.recv(0, copy=False)     # the rest of the message is here already: never waits
        more = part.more
        count += 1
        size += len(part)
        if refused:
            continue                        # drained: the frame is freed as it goes
        if count > max_frames:
            refused = "frames"
        elif size > max_bytes:
            refused = "bytes"
        else:
            frames.append(part.bytes)
    if refused or size > max_bytes:
        raise MessageRefused(head, user, count, size, refused or "bytes")
    return frames, user


#: A message's frames and the User-Id its connection authenticated as.
Message = tuple[list[bytes], str | None]


class HubSocket:
    """A plain (not ``zmq.green``) ZeroMQ socket driven by the gevent hub.

    ``zmq.green`` pays for every operation in Python: a receive that has to
    wait raises ``Again``, makes an ``AsyncResult`` and a ``Timeout``, and
    every send and receive re-reads the socket's state to wake waiters. A
    socket with one reader loop that drains bursts needs none of that, so
    this one waits on the socket's descriptor only when ``ZMQ_EVENTS`` says
    nothing can be read, and never blocks anywhere else:

    * one greenlet receives (:meth:`recv` waits, :meth:`recv_nowait` does
      not); any greenlet of the hub sends, without blocking (:meth:`send`
      raises ``zmq.Again`` like ``send_multipart(..., NOBLOCK)``);
    * ZeroMQ's descriptor is edge-triggered and any operation on the socket
      may consume its signal, so a send while the reader waits re-checks
      ``ZMQ_EVENTS`` and wakes the reader if a message is there;
    * not thread-safe, like every ZeroMQ socket: the hub's thread only.
    """

    def __init__(self, sock: Any, users: bool = False, limits: tuple[int, int] | None = None) -> None:
        self.sock = sock
        self._fd = green.FdWait(sock.getsockopt(zmq.FD))
        self._users = users
        self._limits = limits
        if limits is not None:
            self._take = self._take_bounded
        else:
            self._take = self._take_with_user if users else self._take_plain

    def readable(self) -> bool:
        """A message can be received now. Processes ZeroMQ's pending commands
        (a system call): read through the backend, skipping pyzmq's enum."""
        return bool(int(_backend_get(self.sock, _EVENTS)) & _POLLIN)

    @overload
    def recv(self) -> Message: ...
    @overload
    def recv(self, timeout: float) -> Message | None: ...

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message and the User-Id its connection authenticated as
        (None without keys, or unless made with ``users``), waiting at most
        ``timeout`` seconds (None: for ever); None if none came in time.
        Raises ``zmq.ZMQError`` when the socket is closed, and, made with
        ``limits`` (frames, bytes), :class:`MessageRefused` for a message
        over them (read to its end and not kept: :func:`recv_bounded`)."""
        deadline = None if timeout is None else clock.monotonic() + timeout
        while not self.readable():
            left = None if deadline is None else deadline - clock.monotonic()
            if left is not None and left <= 0:
                return None
            if self._fd.wait(left):
                # Woken: usually by a message, read without another state check.
                try:
                    return self._take()
                except zmq.Again:
                    continue    # a wake-up for something else: look again
        return self._take()

    def recv_nowait(self) -> Message | None:
        """A message (as :meth:`recv`) if one is there now, else None."""
        if not self.readable():
            return None
        return self._take()

    def _take_plain(self) -> Message:
        return self.sock.recv_multipart(zmq.NOBLOCK), None

    def _take_with_user(self) -> Message:
        return recv_with_user(self.sock, zmq.NOBLOCK)

    def _take_bounded(self) -> Message:
        assert self._limits is not None
        return recv_bounded(self.sock, self._limits[0], self._limits[1], zmq.NOBLOCK, with_user=self._users)

    def bind(self, endpoint: str) -> None:
        """Listen on one more endpoint (a unix socket besides the TCP port):
        the socket's options, CURVE included, apply to it as to the first."""
        self.sock.bind(endpoint)
        self._recheck()

    def connect(self, endpoint: str) -> None:
        """Connect to one more endpoint (from any greenlet of the hub)."""
        try:
            self.sock.connect(endpoint)
        finally:
            self._recheck()

    def disconnect(self, endpoint: str) -> None:
        """Stop following ``endpoint``; raises ``zmq.ZMQError`` if not connected to it."""
        try:
            self.sock.disconnect(endpoint)
        finally:
            self._recheck()

    def _recheck(self) -> None:
        """After an operation from another greenlet: it may have taken the
        descriptor's edge of a message that came meanwhile, so wake a waiting
        reader if one can be read."""
        if self._fd.waiting and self.readable():
            self._fd.wake()

    def send(self, frames: list[bytes]) -> None:
        """Send one message now or raise (``zmq.Again``: no room or, on a
        ROUTER, no such peer yet; ``ZMQError``: EHOSTUNREACH, closed...)."""
        try:
            send_frames(self.sock, frames)
        finally:
            self._recheck()

    def close(self, linger: int = 0) -> None:
        """Close the socket; a waiting reader wakes and its next call raises."""
        self._fd.wake()
        self._fd.close()
        self.sock.close(linger=linger)


class SocketFactory:
    """Makes and closes the sockets of one process part.

    ``max_message`` is the size limit of one message's body in bytes;
    :attr:`frame_limit` (``max_message + FRAME_SLACK``) bounds each frame of
    what the node's bound sockets and its SUB receive (libzmq ``MAXMSGSIZE``:
    a larger frame drops the connection before it is buffered) and, read with
    :func:`recv_bounded`, each whole message.
    """

    def __init__(self, *, green: bool = True, flavour: str | None = None, ctx: Any = None,
                 max_message: int = 16 * 1024 * 1024, security: SocketSecurity | None = None) -> None:
        if flavour is None:
            flavour = "green" if green else "plain"
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown socket flavour {flavour!r} (one of {', '.join(FLAVOURS)})")
        self.flavour = flavour
        self.module: ModuleType = importlib.import_module(FLAVOURS[flavour])
        self.green = flavour == "green"
        self.ctx = ctx if ctx is not None else self.module.Context()
        self.max_message = max_message
        self.frame_limit = max_message + FRAME_SLACK
        self.security = security
        self._closed = False

    # -- bound sockets -----------------------------------------------------------
    def router(self, bind: str, audience: str = "service", *, plain: bool = False,
               heartbeat_ms: tuple[int, int] | None = None) -> Any:
        """A bound ROUTER: the service port (``audience="service"``) or the peer
        port (``"peer"``: with CURVE, only other nodes' keys may connect).

        ``ROUTER_MANDATORY`` so a send to a gone or full peer fails instead of
        vanishing, ``ROUTER_HANDOVER`` so a peer that reconnects with its
        identity takes over, linger 0 so closing never hangs, high-water marks
        well above any credit window (nothing relies on them). ``heartbeat_ms``
        (interval, timeout): ZMTP heartbeats, so a connection whose host
        vanished is dropped. Options are set before binding: libzmq copies a
        listener's options when it binds. ``plain``: a plain pyzmq socket even
        from a green factory (for a :class:`HubSocket`)."""
        sock = self.ctx.socket(zmq.ROUTER, socket_class=zmq.Socket if plain else None)
        sock.setsockopt(zmq.MAXMSGSIZE, self.frame_limit)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if heartbeat_ms is not None:
            sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms[0])
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms[1])
        self._common(sock, HWM, HWM)
        self._serve(sock, audience)
        sock.bind(bind)
        return sock

    def hub_router(self, bind: str, audience: str = "service", users: bool = False,
                   heartbeat_ms: tuple[int, int] | None = None, max_frames: int | None = None) -> HubSocket:
        """:meth:`router`'s socket as a :class:`HubSocket` (a green factory
        only); ``users``: each message comes with its connection's User-Id;
        ``max_frames``: messages are read with :func:`recv_bounded`, at most
        that many frames and :attr:`frame_limit` bytes."""
        limits = (max_frames, self.frame_limit) if max_frames is not None else None
        return HubSocket(self.router(bind, audience, plain=True, heartbeat_ms=heartbeat_ms), users, limits)

    def publisher(self, bind: str, *, plain: bool = False) -> Any:
        """A bound PUB (the replication stream). It drops at its high-water mark;
        streams carry sequence numbers and heartbeats so a loss is seen.
        ``plain`` as for :meth:`router` (a PUB never blocks a sender)."""
        sock = self.ctx.socket(zmq.PUB, socket_class=zmq.Socket if plain else None)
        self._common(sock, HWM, HWM)
        self._serve(sock, "peer")
        sock.bind(bind)
        return sock

    # -- connecting sockets -------------------------------------------------------
    def subscriber(self, topics: list[bytes], *, plain: bool = False) -> Any:
        """A SUB subscribed to ``topics``; connect it to publishers as they
        appear. Frames over :attr:`frame_limit` drop the connection.
        ``plain`` as for :meth:`router`."""
        sock = self.ctx.socket(zmq.SUB, socket_class=zmq.Socket if plain else None)
        sock.setsockopt(zmq.MAXMSGSIZE, self.frame_limit)
        self._common(sock, HWM, HWM)
        self._connect_as_client(sock)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        return sock

    def hub_subscriber(self, topics: list[bytes], max_frames: int) -> HubSocket:
        """:meth:`subscriber`'s socket as a :class:`HubSocket` (a green factory
        only), its messages read with :func:`recv_bounded`: at most
        ``max_frames`` frames and :attr:`frame_limit` bytes."""
        return HubSocket(self.subscriber(topics, plain=True), limits=(max_frames, self.frame_limit))

    def dealer(self, connect: str | None = None, *, identity: bytes | None = None,
               immediate: bool = False, sndhwm: int = HWM, reconnect_ms: tuple[int, int] | None = None,
               plain: bool = False, bounded: bool = False) -> Any:
        """A DEALER, connected to ``connect`` if given.

        ``immediate`` keeps messages from queueing for a connection that is not
        up (peer requests, heartbeats: never flood a node when it returns);
        ``reconnect_ms`` is (first, most) between reconnect attempts; ``plain``
        as for :meth:`router`; ``bounded`` limits each incoming frame to
        :attr:`frame_limit` (a node's link to its peers)."""
        sock = self.ctx.socket(zmq.DEALER, socket_class=zmq.Socket if plain else None)
        if bounded:
            sock.setsockopt(zmq.MAXMSGSIZE, self.frame_limit)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        if immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if reconnect_ms is not None:
            sock.setsockopt(zmq.RECONNECT_IVL, reconnect_ms[0])
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_ms[1])
        self._common(sock, sndhwm, HWM)
        self._connect_as_client(sock)
        if connect is not None:
            sock.connect(connect)
        return sock

    def hub_dealer(self, connect: str | None = None, **options: Any) -> HubSocket:
        """:meth:`dealer`'s socket as a :class:`HubSocket` (a green factory only)."""
        return HubSocket(self.dealer(connect, plain=True, **options))

    def pair(self, *, bind: str | None = None, connect: str | None = None) -> Any:
        """A PAIR, bound or connected (an ``inproc://`` wake-up line between
        two threads of one process: each end used by its own thread only)."""
        sock = self.ctx.socket(zmq.PAIR)
        self._common(sock, HWM, HWM)
        if bind is not None:
            sock.bind(bind)
        if connect is not None:
            sock.connect(connect)
        return sock

    def poller(self) -> Any:
        """A poller of this factory's flavour (green, plain or asyncio)."""
        return self.module.Poller()

    def zap_socket(self) -> Any:
        """The REP a ZAP handler serves in this context (miyaq.security.zap)."""
        sock = self.ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ZAP_ENDPOINT)
        return sock

    # -- shared ------------------------------------------------------------------
    def _serve(self, sock: Any, audience: str) -> None:
        if self.security is not None:
            self.security.apply_server(sock, audience)

    def _connect_as_client(self, sock: Any) -> None:
        if self.security is not None:
            self.security.apply_client(sock)

    @staticmethod
    def _common(sock: Any, sndhwm: int, rcvhwm: int) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)

    def close(self) -> None:
        """Close every socket of the context with linger 0. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            self.ctx.destroy(linger=0)
        except Exception:  # pragma: no cover - libzmq teardown
            pass
