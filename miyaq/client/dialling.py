"""How both client drivers (threads and greenlets: :mod:`.node_sockets`; asyncio:
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

Room is asked for *before* libzmq is: the context's first socket starts its
reaper and I/O thread, each with an ``epoll``, and libzmq aborts the whole
process (``Too many open files (src/epoll.cpp:38)``, SIGABRT) when it cannot
make one; a socket it fails to make halfway leaves a half-built object whose
finalizer prints a traceback. So :func:`open_factory` makes the context only
when the process has :data:`CONTEXT_FILES` and :data:`NODE_FILES` for each
given endpoint to spare (:func:`miyaq.runtime.open_files.room_for`, as the
worker's links ask), and :func:`dial_discovered` a node's socket only with
:data:`NODE_FILES` to spare. Another thread of the process may take files
between the count and the socket: the count only makes the abort unlikely,
and the errors libzmq still raises are turned into the same ones.
"""
from __future__ import annotations

import errno
import logging
import threading
from time import monotonic   # miyaq.runtime.monotonic, without importing the runtime (gevent) here
from typing import TYPE_CHECKING, Any, Callable

from zmq import ZMQError      # one class whatever the flavour (plain, green, asyncio)

from ..errors import ConfigError, Unavailable
from ..logs import LogLimiter

if TYPE_CHECKING:
    from ..runtime.sockets import SocketFactory, SocketSecurity

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


#: File descriptors a client's context and I/O loop take: the context's own
#: mailbox, libzmq's reaper and its I/O thread (a mailbox and an ``epoll``
#: each, made with the first socket), the threaded and gevent I/O loop's
#: wake-up pipe (two), one to spare.
CONTEXT_FILES = 8

#: File descriptors one node's connection takes: its DEALER's mailbox, its
#: connection monitor's two ends (libzmq's and the client's), the TCP or
#: unix socket connection.
NODE_FILES = 4


#: Seconds a probe of an endpoint no node answered at may take (a TCP
#: connect: :func:`miyaq.protocol.reach.explain`).
PROBE_TIMEOUT = 0.5

#: Seconds what a probe found is taken as still true: a first contact that
#: fails for many calls at once probes each endpoint once.
PROBE_FRESH = 5.0

#: Seconds the asyncio driver lets an unconnected first contact wait before
#: it probes (in a thread of its own): a node that is up is connected long
#: before, and is never probed.
PROBE_AFTER = 0.5


def client_heartbeats(timeout: float) -> tuple[int, int]:
    """The ``heartbeat_ms`` (interval, timeout in milliseconds) of a client's
    ``heartbeat_timeout`` in seconds."""
    from ..runtime.sockets import heartbeat_options    # the runtime is loaded once a client dials
    return heartbeat_options(timeout)


def open_factory(flavour: str, endpoints: list[str], *, max_message: int,
                 security: "SocketSecurity | None") -> "SocketFactory":
    """A client's :class:`SocketFactory` (its ZeroMQ context) of ``flavour``,
    made only when the process has room for it and the sockets to
    ``endpoints`` (:data:`CONTEXT_FILES`, :data:`NODE_FILES` each). Else
    :class:`~miyaq.errors.Unavailable` naming the open files and the limit,
    with nothing left open."""
    # The runtime is loaded once a client dials (see client_heartbeats).
    from ..runtime import io_threads
    from ..runtime.open_files import room_for
    from ..runtime.sockets import SocketFactory
    policy = io_threads.for_client()        # a bad MIYAQ_IO_THREADS is the ConfigError it is
    needed = CONTEXT_FILES + NODE_FILES * len(endpoints)
    if not room_for(needed):
        raise out_of_files(endpoints, ZMQError(errno.EMFILE), needed)
    try:
        return SocketFactory(flavour=flavour, max_message=max_message, security=security, io_threads=policy)
    except ZMQError as exc:
        raise out_of_files(endpoints, exc) from None


def out_of_files(endpoints: list[str], exc: BaseException, needed: int | None = None) -> Unavailable:
    """The error of a client that cannot open its sockets to ``endpoints``:
    ``exc`` says why (for want of file descriptors, the message names the
    open files and the limit); ``needed``: the files it asked room for and
    did not find (None: libzmq or the OS refused one)."""
    shown = ", ".join(endpoints[:3]) + (" ..." if len(endpoints) > 3 else "")
    why = f"{exc}" if needed is None else f"the client needs {needed} more files for its context and connections"
    return Unavailable(f"cannot open a socket to {shown}: {why}{_hint(exc)}")


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
        raise out_of_files([endpoint], exc) from None
    return [sock for sock, _ in watched], [monitor for _, monitor in watched]


def dial_discovered(factory: "SocketFactory", endpoint: str,
                    heartbeat_ms: tuple[int, int]) -> tuple[Any, Any] | bool | None:
    """The socket and monitor of a node a RING reply named; False (logged)
    when libzmq refuses its endpoint; None (logged) when no socket can be
    made now (no file descriptor left, or fewer than :data:`NODE_FILES`):
    as for ``Transport.connect``."""
    from ..runtime.open_files import room_for
    try:
        if not room_for(NODE_FILES):
            raise ZMQError(errno.EMFILE)      # asked first: see the module's docstring
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


class ReachProbes:
    """Why endpoints no node answers at do not answer, for the first-contact
    message (:attr:`miyaq.client.nodes.Nodes.explain`): one TCP connect each
    (:func:`miyaq.protocol.reach.explain`, at most :data:`PROBE_TIMEOUT`
    seconds and a name's resolving), what it found kept :data:`PROBE_FRESH`
    seconds.

    ``wait`` runs a probe and waits for it: the threaded driver's own call
    (its I/O thread or a leading caller, where the call fails for want of
    any node), the gevent driver's hub thread pool (only the I/O greenlet
    waits). None (the asyncio driver, whose event loop must never wait):
    :meth:`reason` answers from what the last probe found and starts the
    next in a thread of its own; :meth:`start` starts one early."""

    def __init__(self, wait: Callable[[Callable[[str, float], str], str, float], str] | None) -> None:
        self._wait = wait
        self._found: dict[str, tuple[float, str]] = {}   # endpoint -> (when, what the probe found)
        self._running: set[str] = set()                  # endpoints a probe thread is connecting to

    def reason(self, endpoint: str) -> str | None:
        """The likely reason no node answers at ``endpoint`` (None: not known yet)."""
        found = self._found.get(endpoint)
        if found is not None and monotonic() - found[0] < PROBE_FRESH:
            return found[1]
        if self._wait is None:
            self.start(endpoint)
            return None if found is None else found[1]
        from ..protocol.reach import explain     # loads the runtime: a client exists
        why = self._wait(explain, endpoint, PROBE_TIMEOUT)
        self._found[endpoint] = (monotonic(), why)
        return why

    def start(self, endpoint: str) -> None:
        """Probe ``endpoint`` in a thread of its own, unless one is running or
        what the last found is fresh."""
        found = self._found.get(endpoint)
        if endpoint in self._running or (found is not None and monotonic() - found[0] < PROBE_FRESH):
            return
        self._running.add(endpoint)
        threading.Thread(target=self._probe, args=(endpoint,), name="miyaq-client-probe", daemon=True).start()

    def _probe(self, endpoint: str) -> None:
        from ..protocol.reach import explain
        try:
            self._found[endpoint] = (monotonic(), explain(endpoint, PROBE_TIMEOUT))
        finally:
            self._running.discard(endpoint)
