"""The monitors a :class:`~miyaq.runtime.sockets.SocketFactory` attaches to
its sockets (libzmq's socket monitors: one message per connection event,
nothing per message): the connection monitor a caller reads to see its
connections close, fail their handshake or become ready
(:meth:`SocketMonitors.connection_monitor`, :meth:`SocketMonitors.watched_dealer`;
read with :func:`~miyaq.runtime.connections.connection_events`), and the
handshake monitors of bound sockets, which count the handshakes that fail
before a ZAP handler is asked (:meth:`SocketMonitors.watch_handshakes`;
:mod:`miyaq.security.handshakes` reads them).

:class:`SocketMonitors` is the factory's base: the factory makes the
sockets, this part what watches them.
"""
from __future__ import annotations

from typing import Any, Callable

import itertools

import zmq

from ..errors import ConfigError
from .connections import (
    CONNECTION_CLOSED, CONNECTION_READY, FAILED_BEFORE_ZAP, HANDSHAKE_FAILED, connect_or_refuse,
)

_monitor_numbers = itertools.count(1)
"""Numbers the inproc addresses of the monitors (a handshake monitor per
bound socket, a connection monitor per socket watched)."""

__all__ = ["SocketMonitors", "quiet_monitor"]


def quiet_monitor(sock: Any) -> None:
    """Stop ``sock`` sending events to its monitor: call it before the
    monitor is closed while ``sock`` may still live. libzmq sends a
    monitor's events from the context's I/O thread and waits for room:
    an event sent to a monitor nobody reads any more (closed) blocked that
    thread for good -- every socket of the process silent, heartbeats
    unanswered, every handshake timing out after 30 s (a chaos run,
    2026-12-06: a node retired a peer's DEALER, monitor first, as the peer
    restarted). A socket already closed, or without a monitor, is left as
    it is."""
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        pass


class SocketMonitors:
    """The monitors of a :class:`~miyaq.runtime.sockets.SocketFactory`'s
    sockets (its base). The factory sets ``ctx``, ``handshake_monitors``
    and ``on_handshake_monitor``, and makes the DEALER that
    :meth:`watched_dealer` watches (its ``dealer``)."""

    ctx: Any
    handshake_monitors: list[tuple[str, Any]] | None
    on_handshake_monitor: Callable[[str, Any], None] | None
    dealer: Callable[..., Any]

    def watch_handshakes(self) -> None:
        """From now on, give every bound socket (:meth:`router`,
        :meth:`publisher`) a monitor of the handshakes that fail on it
        before a ZAP handler is asked -- keys on one side only, a client
        with another node key, a peer that is not ZeroMQ -- in
        :attr:`handshake_monitors` (refusals of the ZAP handler itself are
        its own count). One monitor message per failed connection, nothing
        per message. libzmq sends each event from its I/O thread and waits
        while the monitor's queue is full (it does not drop them): a reader
        that falls about 1,000 events behind stalls every socket of the
        context until it catches up, so the node reads these monitors as
        the other sockets."""
        if self.handshake_monitors is None:
            self.handshake_monitors = []

    def _watch(self, sock: Any, port: str) -> None:
        """Attach ``sock``'s handshake monitor (before it binds: libzmq reports
        an event only to a monitor that exists when it happens)."""
        if self.handshake_monitors is None:
            return
        address = f"inproc://miyaq-handshakes-{next(_monitor_numbers)}"
        sock.monitor(address, FAILED_BEFORE_ZAP)
        monitor = self.ctx.socket(zmq.PAIR, socket_class=zmq.Socket)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(address)
        self.handshake_monitors.append((port, monitor))
        if self.on_handshake_monitor is not None:
            self.on_handshake_monitor(port, monitor)

    def connection_monitor(self, sock: Any, *, ready: bool = False) -> Any:
        """A PAIR that receives a message each time a connection of ``sock``
        closes or fails its handshake, and with ``ready`` each time one is
        ready for messages (libzmq's socket monitor: ``ZMQ_EVENT_DISCONNECTED``,
        the three ``ZMQ_EVENT_HANDSHAKE_FAILED_*``,
        ``ZMQ_EVENT_HANDSHAKE_SUCCEEDED``; nothing per message). It is of
        this factory's flavour and closed with it; read it with
        :func:`connection_events`.

        Attach it before ``sock`` connects (:meth:`watched_dealer`): libzmq
        reports an event only to a monitor that exists when it happens.

        Each monitor has an address of its own. pyzmq's default,
        ``inproc://monitor.s-<FD>``, is the socket's file descriptor: a
        socket closed just before frees its descriptor before libzmq frees
        its monitor's address, and a new socket given that descriptor failed
        with ``EADDRINUSE`` (2026-12-06: 19 of 300 peer links remade at once,
        218 of 300 with 40 at a time, each then "no socket to member now"
        until the role relinked it a second later)."""
        events = CONNECTION_CLOSED | HANDSHAKE_FAILED | (CONNECTION_READY if ready else 0)
        return sock.get_monitor_socket(events, addr=f"inproc://miyaq-monitor-{next(_monitor_numbers)}")

    def watched_dealer(self, connect: str, *, ready: bool, **options: Any) -> tuple[Any, Any]:
        """A DEALER connected to ``connect`` (``options`` as for :meth:`dealer`)
        and its :meth:`connection_monitor` (``ready`` as there), the monitor
        attached *before* the socket connects: libzmq reports an event only
        to a monitor that exists when it happens, and on loopback the
        handshake can be over before the next line runs.

        An endpoint libzmq refuses raises :class:`~miyaq.errors.ConfigError`
        (:func:`connect_or_refuse`) with both sockets closed."""
        sock = self.dealer(**options)
        try:
            monitor = self.connection_monitor(sock, ready=ready)
        except zmq.ZMQError:
            sock.close(0)        # out of file descriptors, say: nothing is left open
            raise
        try:
            connect_or_refuse(sock, connect)
        except ConfigError:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            raise
        return sock, monitor
