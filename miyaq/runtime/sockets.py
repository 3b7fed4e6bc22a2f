"""The one module that imports ``zmq.green``, and the one place sockets are made.

Every ZeroMQ socket of miyaq -- the node's service and peer ROUTERs, the
replication PUB and SUB, the peer DEALERs, the worker's link and heartbeat
DEALERs, the client's DEALERs -- comes from a :class:`SocketFactory`, so each
kind's options (high-water marks, ``ROUTER_MANDATORY``, linger, size limits,
reconnect intervals, heartbeats and connect timeouts) are written once, and security (CURVE) can be applied in
one place. What watches the sockets' connections and handshakes (libzmq's
socket monitors) is the factory's base, :mod:`.socket_monitors`.

A factory wraps one context of one *flavour*: ``"green"`` (``zmq.green``, for
code running in the gevent hub), ``"plain"`` (pyzmq, for native threads: the
threaded client, the worker's heartbeat thread) or ``"asyncio"``
(``zmq.asyncio``, for the asyncio client: sockets whose ``recv`` is awaited
in the event loop's thread). ``green=True``/``False`` still choose the first
two. Socket types and options are the same constants in every flavour.
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Protocol

import importlib

import zmq

from ..errors import ConfigError
from .connections import connect_or_refuse, use_family_of
from .endpoints import names_version
from .io_threads import apply as apply_io_policy, chosen as chosen_io_policy
from .routing_ids import unpredictable_routing_ids
from .socket_monitors import SocketMonitors

if TYPE_CHECKING:
    from .hub_socket import HubPoller, HubSocket

#: Every socket's high-water marks, a count of messages. Receiving, keep it
#: far above what a connection ever has waiting: libzmq stops reading a
#: connection whose queue is full, and then cannot read the peer's ZMTP
#: heartbeats either; the heartbeat times out and the engine, torn down while
#: its input is stopped, aborts the whole process (``Assertion failed:
#: !_io_error`` or ``_input_stopped``, libzmq issues 3937, 4364 and 4767, open).
#: A node's ports with 64 did so when a peer's backlog met a node thawed
#: after a freeze (found by the chaos harness, 2026-12-05): what one
#: connection may have waiting stays bounded by this count, not by bytes
#: (docs/security.md).
HWM = 100_000


def __getattr__(name: str) -> Any:
    """``green_zmq`` (pyzmq's gevent flavour) on first use: the plain and
    asyncio factories, and the asyncio client with them, never import gevent
    (the hub's sockets, :mod:`.hub_socket`, are imported by the methods that
    make them)."""
    if name == "green_zmq":
        return importlib.import_module("zmq.green")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Bytes one message may carry beyond ``max_message`` (its body): the routing
#: id, the tag and command frames, and the fields a node adds to a record it
#: forwards to another node. It is also each frame's limit over ``max_message``
#: (libzmq ``MAXMSGSIZE``): no frame the protocol needs is larger.
FRAME_SLACK = 4096

ZAP_ENDPOINT = "inproc://zeromq.zap.01"

#: The largest frame the replication stream's port takes (libzmq
#: ``MAXMSGSIZE``, which also bounds the handshake's commands): a node's SUB
#: sends it a subscription of 18 bytes (38 more as a CURVE ``MESSAGE``), and
#: CURVE's ``INITIATE``, with the metadata a SUB sends, takes about 300.
SUBSCRIPTION_FRAME_LIMIT = 1024
#: The ZAP domain of the stream's port without keys (see :meth:`SocketFactory.publisher`).
STREAM_ZAP_DOMAIN = b"miyaq-stream"

#: The pyzmq module of each flavour. ``zmq.asyncio`` is imported only when an
#: asyncio factory is made: it imports asyncio and with it ``ssl``, which a
#: gevent worker may import only after it has monkey-patched.
FLAVOURS = {"green": "zmq.green", "plain": "zmq", "asyncio": "zmq.asyncio"}

__all__ = ["FLAVOURS", "HWM", "SUBSCRIPTION_FRAME_LIMIT", "SocketFactory", "SocketSecurity", "heartbeat_options", "zmq"]

class SocketSecurity(Protocol):
    """What a factory applies to every socket it makes (CURVE: miyaq.security.curve)."""

    def apply_server(self, sock: Any, audience: str) -> None:
        """Options for a bound socket, set before it binds. ``audience`` is
        ``"service"`` (producers, workers, operators) or ``"peer"`` (other
        nodes only: the peer ROUTER and the replication PUB)."""

    def apply_client(self, sock: Any) -> None:
        """Options for a connecting socket, set before it connects."""


def heartbeat_options(timeout: float) -> tuple[int, int]:
    """The ``heartbeat_ms`` (interval, timeout in milliseconds) of a heartbeat
    ``timeout`` in seconds: a PING every fifth of it."""
    return round(timeout * 200), round(timeout * 1000)


class SocketFactory(SocketMonitors):
    """Makes and closes the sockets of one process part.

    ``max_message`` is the size limit of one message's body in bytes;
    :attr:`frame_limit` (``max_message + FRAME_SLACK``) bounds each frame of
    what the node's bound sockets and its SUB receive (libzmq ``MAXMSGSIZE``:
    a larger frame drops the connection before it is buffered) and, read with
    :func:`recv_bounded`, each whole message.
    """

    def __init__(self, *, green: bool = True, flavour: str | None = None, ctx: Any = None,
                 max_message: int = 16 * 1024 * 1024, security: SocketSecurity | None = None,
                 io_threads: str | None = None) -> None:
        """``io_threads``: how the kernel schedules the new context's I/O
        threads (:mod:`miyaq.runtime.io_threads`): ``"batch"`` or
        ``"normal"``; None reads ``MIYAQ_IO_THREADS`` (``normal`` when unset).
        A context passed in (``ctx``) is left as it is.

        A ``MIYAQ_IP_VERSION`` other than 4 or 6 raises
        :class:`~miyaq.errors.ConfigError` here, when the process part
        starts: read first at a connect, it would stop whatever part dialled
        a host name first -- a running node's stream, when the ring named one."""
        names_version()
        if flavour is None:
            flavour = "green" if green else "plain"
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown socket flavour {flavour!r} (one of {', '.join(FLAVOURS)})")
        self.flavour = flavour
        self.module: ModuleType = importlib.import_module(FLAVOURS[flavour])
        self.green = flavour == "green"
        #: The policy this factory's context's I/O threads run with (None: a context passed in).
        self.io_threads: str | None = None
        if ctx is None:
            policy = io_threads if io_threads is not None else chosen_io_policy()
            if self.green:     # its sockets keep out of a forked copy's way (.green_sockets)
                from .green_sockets import Context as GreenContext
                ctx = GreenContext()
            else:
                ctx = self.module.Context()
            self.io_threads = apply_io_policy(ctx, policy)
        self.ctx = ctx
        self.max_message = max_message
        self.frame_limit = max_message + FRAME_SLACK
        self.security = security
        #: ``(port, monitor)`` of every bound socket made since
        #: :meth:`watch_handshakes`: a plain PAIR that receives the handshakes
        #: that failed on that port before any ZAP handler was asked
        #: (:mod:`miyaq.security.handshakes` reads them). None: not watched.
        self.handshake_monitors: list[tuple[str, Any]] | None = None
        #: Called with ``(port, monitor)`` for each handshake monitor made from
        #: now on (its reader adopts it without polling for new ones).
        self.on_handshake_monitor: Callable[[str, Any], None] | None = None
        self._closed = False

    # -- bound sockets -----------------------------------------------------------
    def router(self, bind: str, audience: str = "service", *, plain: bool = False,
               heartbeat_ms: tuple[int, int] | None = None) -> Any:
        """A bound ROUTER: the service port (``audience="service"``) or the peer
        port (``"peer"``: with CURVE, only other nodes' keys may connect).

        ``ROUTER_MANDATORY`` so a send to a gone or full peer fails instead of
        vanishing, no ``ROUTER_HANDOVER`` (a connection that sets a routing id
        another live connection has is not served until that one closes:
        before 2026-12-05 it took the other's place, so any key holder that
        knew or guessed the routing id a worker had set received its
        deliveries and could report on its tasks), linger 0 so closing never hangs, high-water marks
        well above any credit window (nothing relies on them). ``heartbeat_ms``
        (interval, timeout): ZMTP heartbeats, so a connection whose host
        vanished is dropped. Options are set before binding: libzmq copies a
        listener's options when it binds. ``plain``: a plain pyzmq socket even
        from a green factory (for a :class:`HubSocket`)."""
        unpredictable_routing_ids()
        sock = self.ctx.socket(zmq.ROUTER, socket_class=zmq.Socket if plain else None)
        sock.setsockopt(zmq.MAXMSGSIZE, self.frame_limit)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._heartbeats(sock, heartbeat_ms)
        self._common(sock, HWM, HWM)
        self._serve(sock, audience)
        self._watch(sock, audience)
        use_family_of(sock, bind)
        sock.bind(bind)
        return sock

    def hub_router(self, bind: str, audience: str = "service", users: bool = False,
                   heartbeat_ms: tuple[int, int] | None = None, max_frames: int | None = None,
                   sources: bool = False) -> HubSocket:
        """:meth:`router`'s socket as a :class:`HubSocket` (a green factory
        only); ``users``: each message comes with its connection's User-Id;
        ``max_frames``: messages are read with :func:`recv_bounded`, at most
        that many frames and :attr:`frame_limit` bytes; ``sources`` (with
        ``max_frames``): the socket's ``source`` tells the descriptor of the
        connection each message came by."""
        limits = (max_frames, self.frame_limit) if max_frames is not None else None
        from .hub_socket import HubSocket
        return HubSocket(self.router(bind, audience, plain=True, heartbeat_ms=heartbeat_ms), users, limits,
                         routed=True, sources=sources)

    def publisher(self, bind: str, *, plain: bool = False, heartbeat_ms: tuple[int, int] | None = None) -> Any:
        """A bound XPUB (the replication stream). It drops at its high-water mark;
        streams carry sequence numbers and heartbeats so a loss is seen.
        ``plain`` as for :meth:`router` (a PUB never blocks a sender).
        ``heartbeat_ms`` as for :meth:`router`: the high-water mark counts
        messages, not bytes, so a heartbeat drops a subscriber whose process
        froze (its connection, and what was queued for it, goes).

        Its subscribers send it nothing but their subscriptions, so the socket
        takes none larger than :data:`SUBSCRIPTION_FRAME_LIMIT` bytes (a larger
        frame drops the connection before it is kept) and hands each one to
        its owner (``XPUB_VERBOSE``: every subscription a connection sends,
        each with its connection's descriptor, ``ZMQ_SRCFD``), which decides
        what a connection may subscribe to and drops one that does more
        (:class:`miyaq.cluster.stream.ZmqStreamPublisher`). libzmq applies a
        subscription before it hands it over: nothing on this socket limits
        how many a connection makes, its owner must read them. Without keys
        the socket still has a ZAP domain: libzmq then refuses ZMTP 1.0 and
        2.0 peers, whose messages carry no descriptor (no ZAP handler is
        asked: without one, libzmq lets a NULL connection in)."""
        sock = self.ctx.socket(zmq.XPUB, socket_class=zmq.Socket if plain else None)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_FRAME_LIMIT)
        self._heartbeats(sock, heartbeat_ms)
        self._common(sock, HWM, HWM)
        if self.security is None:
            sock.setsockopt(zmq.ZAP_DOMAIN, STREAM_ZAP_DOMAIN)
        self._serve(sock, "peer")
        self._watch(sock, "stream")
        use_family_of(sock, bind)
        sock.bind(bind)
        return sock

    # -- connecting sockets -------------------------------------------------------
    def subscriber(self, topics: list[bytes], *, plain: bool = False,
                   heartbeat_ms: tuple[int, int] | None = None) -> Any:
        """A SUB subscribed to ``topics``; connect it to publishers as they
        appear. Frames over :attr:`frame_limit` drop the connection.
        ``plain`` as for :meth:`router`. ``heartbeat_ms`` (interval, timeout):
        ZMTP heartbeats of the SUB's own, so a connection to a publisher that
        went silent is dropped and dialled again. A SUB sends nothing else
        after its subscriptions: without them a connection the publisher
        dropped during a partition (its FIN lost) stayed open on this side,
        silent, until the publisher's kernel resent that FIN at its doubling
        timeout, or for good once it had given up."""
        sock = self.ctx.socket(zmq.SUB, socket_class=zmq.Socket if plain else None)
        sock.setsockopt(zmq.MAXMSGSIZE, self.frame_limit)
        self._heartbeats(sock, heartbeat_ms)
        self._dial_timeout(sock, heartbeat_ms)
        self._common(sock, HWM, HWM)
        self._connect_as_client(sock)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        return sock

    def hub_subscriber(self, topics: list[bytes], max_frames: int,
                       heartbeat_ms: tuple[int, int] | None = None) -> HubSocket:
        """:meth:`subscriber`'s socket as a :class:`HubSocket` (a green factory
        only), its messages read with :func:`recv_bounded`: at most
        ``max_frames`` frames and :attr:`frame_limit` bytes; ``heartbeat_ms``
        as for :meth:`subscriber`."""
        from .hub_socket import HubSocket
        return HubSocket(self.subscriber(topics, plain=True, heartbeat_ms=heartbeat_ms),
                         limits=(max_frames, self.frame_limit))

    def dealer(self, connect: str | None = None, *, identity: bytes | None = None,
               immediate: bool = False, sndhwm: int = HWM, reconnect_ms: tuple[int, int] | None = None,
               plain: bool = False, bounded: bool = False, heartbeat_ms: tuple[int, int] | None = None) -> Any:
        """A DEALER, connected to ``connect`` if given.

        ``immediate`` keeps messages from queueing for a connection that is not
        up (peer requests, heartbeats: never flood a node when it returns);
        ``reconnect_ms`` is (first, most) between reconnect attempts; ``plain``
        as for :meth:`router`; ``bounded`` limits each incoming frame to
        :attr:`frame_limit` (a node's link to its peers); ``heartbeat_ms`` as
        for :meth:`router` (with ``immediate``, a connection dropped for its
        silence takes what was queued for it along), and with them a TCP
        connect attempt is abandoned after the heartbeat timeout
        (:meth:`_dial_timeout`). An endpoint libzmq
        refuses raises :class:`~miyaq.errors.ConfigError` (the socket closed)."""
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
        self._heartbeats(sock, heartbeat_ms)
        self._dial_timeout(sock, heartbeat_ms)
        self._common(sock, sndhwm, HWM)
        self._connect_as_client(sock)
        if connect is not None:
            try:
                connect_or_refuse(sock, connect)
            except ConfigError:
                sock.close(0)
                raise
        return sock

    def hub_dealer(self, connect: str | None = None, **options: Any) -> HubSocket:
        """:meth:`dealer`'s socket as a :class:`HubSocket` (a green factory only)."""
        from .hub_socket import HubSocket
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

    @staticmethod
    def hub_poller() -> HubPoller:
        """A poller of plain sockets for one reader in the gevent hub
        (:class:`~miyaq.runtime.hub_socket.HubPoller`)."""
        from .hub_socket import HubPoller
        return HubPoller()

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
    def _heartbeats(sock: Any, heartbeat_ms: tuple[int, int] | None) -> None:
        """ZMTP heartbeats (interval, timeout in ms): a PING every interval, and
        a connection that sends nothing for the timeout after one is dropped."""
        if heartbeat_ms is not None:
            sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms[0])
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms[1])

    @staticmethod
    def _dial_timeout(sock: Any, heartbeat_ms: tuple[int, int] | None) -> None:
        """A connecting socket with heartbeats abandons a TCP connect attempt
        that has not completed within the heartbeat timeout (libzmq
        ``CONNECT_TIMEOUT``) and starts a new one at its reconnect interval.

        Without it an attempt begun while the other host cannot be reached
        waits on the kernel's SYN backoff, which doubles (1, 3, 7, 15, 31 s
        after the first before Linux 6.5; from 6.5 1 s apart for the first
        four, then doubling): a node's link dropped by its heartbeat
        during a partition crossed again up to about the partition's length
        after the heal (docs/operations.md, "After a partition heals").
        The heartbeat timeout is the longest a live peer may leave a PING
        unanswered, and a handshake is three small packets: a link on which
        one takes longer is one the heartbeat gives up on anyway, so no
        slow-but-alive link is refused a connection that it could keep.
        Only TCP connects have such a timeout (``ipc://`` ones complete or
        fail at once)."""
        if heartbeat_ms is not None:
            sock.setsockopt(zmq.CONNECT_TIMEOUT, heartbeat_ms[1])

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
