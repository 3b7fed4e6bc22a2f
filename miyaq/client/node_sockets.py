"""A threaded or gevent client's sockets to its nodes (:class:`NodeSockets`,
the base of :class:`~miyaq.client.io.IOLoop`): one DEALER and its connection
monitor per node index, made, dialled, retired and redialled here; the
``Transport`` the core sends through (:class:`~miyaq.client.core.Transport`);
and the reads that hand what arrived to the core.

Sockets come from a :class:`~miyaq.runtime.sockets.SocketFactory` of the
kit's flavour, with the client's CURVE keys when it has them
(:mod:`~.dialling`). Each socket has a connection monitor (libzmq's socket
monitor, read only by the I/O context or a caller that reads in its stead):
when a connection closes, nothing sent on it will be answered, so the core
resends that node's unacknowledged submits and fails its open requests at
once (:meth:`ClientCore.on_disconnected`), and until it is up again the node
is asked last (:meth:`Nodes.mark`).

Constraints: only whoever holds the sockets calls these -- the I/O context,
or a caller holding the threaded loop's lock on the short path
(:mod:`~.short_path`); a read takes at most :data:`READ_BURST` messages from
one socket, so the others get their turn. Nothing here imports the runtime
(gevent) at import time.
"""
from __future__ import annotations

from time import monotonic   # miyaq.runtime.monotonic, without importing the runtime (gevent) here
from typing import TYPE_CHECKING, Any

from .dialling import client_heartbeats, dial_discovered, dial_given, hang_up, open_factory, place
from .nodes import Nodes

if TYPE_CHECKING:
    from ..runtime.sockets import SocketSecurity
    from .core import ClientCore

READ_BURST = 1000
"""Most messages read from one socket per pass (the others get their turn)."""


class NodeSockets:
    """The sockets of one client by node index (the module's docstring). Its
    subclass, the I/O loop, sets :attr:`core` and, once its greenlet loop
    runs, ``_poller``; the threaded loop watches descriptors instead
    (its own :meth:`_watch` and :meth:`_unwatch`)."""

    core: "ClientCore"

    def __init__(self, kit: Any, endpoints: list[str], *, max_message: int, security: "SocketSecurity | None",
                 endpoints_source: str, heartbeat_timeout: float) -> None:
        # Imported here: importing the client must not import the runtime (gevent, and
        # through it ssl) before a worker had a chance to monkey-patch.
        from ..runtime.messages import has_message
        from ..runtime.connections import connection_events
        self._has_message = has_message
        self._connection_events = connection_events
        self.zmq = kit.zmq
        self._send = kit.send
        self._recv = kit.recv
        # Room for the context, these sockets and the wake-up pipe first: see miyaq.client.dialling.
        self.factory = open_factory(kit.flavour, endpoints, max_message=max_message, security=security)
        self.nodes = Nodes(endpoints, source=endpoints_source, secure=security is not None)
        # Each socket has a monitor: its connections closing (a node that exited may
        # have read submits it never acknowledged: they are sent again at once) and
        # coming up.
        self.heartbeat_ms = client_heartbeats(heartbeat_timeout)
        # By node index; None where a node that left the ring was retired
        # (:meth:`disconnect`) and no endpoint learned since reuses its index.
        self.socks: list[Any]
        self.monitors: list[Any]
        self.socks, self.monitors = dial_given(self.factory, endpoints, self.heartbeat_ms)
        self._poller: Any = None       # the greenlet loop's poller, once it runs

    # -- Transport (called by the core, by whoever holds the lock) ------------------------
    def send(self, node: int, frames: list[bytes]) -> bool:
        sock = self.socks[node]
        if sock is None:
            return False          # retired (its node left the ring): not connected
        try:
            self._send(sock, frames)
        except self.zmq.Again:
            return False
        return True

    def connect(self, endpoint: str) -> bool | None:
        dialled = dial_discovered(self.factory, endpoint, self.heartbeat_ms)
        if not isinstance(dialled, tuple):
            return dialled
        sock, monitor = dialled
        node = self.nodes.next_slot
        place(self.socks, self.monitors, node, sock, monitor)
        self._watch(sock, monitor)
        return True

    def disconnect(self, node: int) -> None:
        """Close node ``node``'s connection for good (its node left the ring):
        its slot holds None until an endpoint learned later reuses it."""
        sock, monitor = self.socks[node], self.monitors[node]
        if sock is None:
            return
        self.socks[node] = self.monitors[node] = None
        self._unwatch(sock, monitor)
        hang_up(sock, monitor)

    def _watch(self, sock: Any, monitor: Any) -> None:
        """A socket and its monitor were added: the loop's poller (once it
        runs; the loop and the core share one greenlet) watches them."""
        if self._poller is not None:
            self._poller.register(sock, self.zmq.POLLIN)
            self._poller.register(monitor, self.zmq.POLLIN)

    def _unwatch(self, sock: Any, monitor: Any) -> None:
        """A socket and its monitor are about to close: no poll watches them."""
        if self._poller is not None:
            self._poller.unregister(sock)
            self._poller.unregister(monitor)

    def reconnect(self, node: int) -> None:
        """Drop node ``node``'s connection and connect again (called with the
        sockets in hand: by the I/O context or a leader). Its connection
        monitor then reports the closing, and the core sends again what was
        unacknowledged on it."""
        from ..runtime.connections import redial     # here: see __init__ (the runtime imports gevent)
        if self.socks[node] is not None:
            redial(self.socks[node], self.nodes.endpoints[node])

    # -- reading ----------------------------------------------------------------------
    def _read_all(self, monitors: bool = True) -> bool:
        """Read every socket until it has nothing; True if one still has more.
        ``monitors=False`` leaves the connection monitors for later: only
        for a reader whose OS poll watches their descriptors (a monitor's
        descriptor stays readable until its commands are processed, and only
        the reading thread touches a monitor)."""
        more = False
        for i, sock in enumerate(self.socks):
            if sock is not None:
                more = self._read(i, sock) or more
        if monitors:
            for i, monitor in enumerate(self.monitors):
                if monitor is not None:
                    self._read_monitor(i, monitor)
        return more

    def _read_monitor(self, node: int, monitor: Any) -> None:
        """Take the connection events of node ``node``'s socket: note whether
        it is connected, and tell the core if a connection closed. Only this
        loop (or a leading caller) reads monitors, so a caller's socket use
        never takes their descriptor's edge."""
        if not self._has_message(monitor):
            return
        closed, connected, failure = self._connection_events(monitor)
        if failure is not None:
            self.nodes.handshake_failed(node, failure)
        if connected is not None:
            self.nodes.mark(node, connected)
        if closed:
            self.core.on_disconnected(node, monotonic())

    def _read(self, node: int, sock: Any) -> bool:
        """Read up to READ_BURST messages; True if the burst ran out first."""
        again = self.zmq.Again
        recv = self._recv
        has_message = self._has_message
        core = self.core
        for _ in range(READ_BURST):
            # ZMQ_EVENTS first: a receive that finds nothing raises Again, and
            # making that exception costs more than asking.
            if not has_message(sock):
                return False
            try:
                frames = recv(sock)
            except again:
                return False
            core.on_frames(node, frames, monotonic())
            if self.socks[node] is not sock:
                return False      # its node left the ring, and this reply closed it
        return True
