"""The asyncio driver of the client's core (:mod:`miyaq.client.core`).

Everything runs in the event loop's thread: one reader task per socket
feeds replies to the core; one timer (:mod:`.timer`) runs the core's
``on_timer`` no later than it asks; submits made in one pass of the loop
leave together at the end of it (``call_soon``), so a burst is batched while
a lone submit from an idle client leaves at once. Sockets are
``zmq.asyncio`` sockets from a :class:`~miyaq.runtime.sockets.SocketFactory`
of the asyncio flavour, with the client's CURVE keys when it has them.

The driver starts on first use and belongs to the event loop it started in.
Its readers and watchers hold it only weakly, its timer only while no
submit is unresolved (:meth:`AsyncDriver._arm`): a client dropped without
``close()`` while its loop runs delivers its submits, then is collected,
and its finalizer stops its readers and closes its sockets in that loop
(before 2026-12-06 they held it for as long as the loop ran: 9
descriptors, 2 libzmq threads and 2 tasks kept for each client dropped).
"""
from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import Any

import zmq

from ..client.core import ClientCore
from ..client.dialling import (
    CLIENT_HEARTBEAT_TIMEOUT, PROBE_AFTER, ReachProbes, client_heartbeats, dial_discovered, dial_given, hang_up,
    open_factory, place,
)
from ..client.nodes import Nodes
from ..client.pending import Pending
from ..client.resolver import Waiter
from ..errors import MiyaqError
from ..runtime.clock import monotonic
from ..runtime.connections import CONNECTION_CLOSED, CONNECTION_READY, monitor_event, redial
from ..runtime.sockets import SocketSecurity
from .readers import pump
from .timer import LoopTimer
from .unclosed import close_unclosed
from .window import WindowRoom

logger = logging.getLogger(__name__)


#: What a call on a closed client raises.
CLOSED_FOR_GOOD = ("client is closed: a miyaq.aio.Client is not used again after close() (a lifespan's shutdown, "
                   "`async with` ending); make one in the lifespan, for each run of it, or use app.aio, which "
                   "makes a new one after await app.aclose()")


class AsyncDriver:
    def __init__(self, endpoints: list[str], *, max_batch: int, ack_timeout: float, max_message: int,
                 security: SocketSecurity | None = None, endpoints_source: str = "given",
                 heartbeat_timeout: float = CLIENT_HEARTBEAT_TIMEOUT) -> None:
        self._max_message = max_message
        self._heartbeat_ms = client_heartbeats(heartbeat_timeout)
        self._security = security
        self.nodes = Nodes(endpoints, source=endpoints_source, secure=security is not None)
        # Why no node answers, for the first-contact message: probed in threads of
        # their own (the event loop never waits), from PROBE_AFTER on (see send).
        self._probes = ReachProbes(None)
        self.nodes.explain = self._probes.reason
        self.loop: asyncio.AbstractEventLoop | None = None
        # node index -> its reader and watcher; the finalizer holds this dict too
        self._readers: dict[int, list[asyncio.Task[None]]] = {}
        self._dial()
        self.room = WindowRoom(self._count, self._uncount)     # submits waiting for room in the window
        self.core = ClientCore(self, self.nodes, max_batch=max_batch, ack_timeout=ack_timeout,
                               max_message=max_message, on_resolved=self.room.freed)
        self._timer: LoopTimer | None = None     # made in the loop, when it starts (see _arm)
        self._flush_soon = False
        self.closed = False

    def _dial(self) -> None:
        """Open the context and the sockets to the given endpoints (a bad one
        is a ConfigError here, at construction)."""
        self._pid = os.getpid()
        self._dialled_at = monotonic()
        # Room for the context and these sockets first: see miyaq.client.dialling.
        self.factory = open_factory("asyncio", self.nodes.endpoints, max_message=self._max_message,
                                    security=self._security)
        # Each socket has a monitor: its connections closing (unacknowledged submits
        # are sent again at once) and coming up. By node index; None where a node
        # that left the ring was retired (:meth:`disconnect`) and no endpoint
        # learned since reuses its index.
        self.socks: list[Any]
        self.monitors: list[Any]
        self.socks, self.monitors = dial_given(self.factory, self.nodes.endpoints, self._heartbeat_ms)
        self._finalize_unclosed()

    def _finalize_unclosed(self) -> None:
        """(Re)make the finalizer of a driver collected unclosed (its client
        dropped without close()): see :func:`~.unclosed.close_unclosed`. Made again
        once the driver knows its loop and readers."""
        # Left to pyzmq, the context's finalizer would wait for sockets of the same
        # garbage cycle, whose weak references the collector has already cleared: the
        # process hung in that collection for good. The finalizer holds the socket
        # lists, so they stay reachable, and the readers, to stop them.
        # It holds the submits not yet acknowledged (the pipeline's own dict and
        # list, which reach no driver) to report those dropped with the driver.
        previous = getattr(self, "_finalizer", None)
        if previous is not None:
            previous.detach()
        core: ClientCore | None = getattr(self, "core", None)     # None while __init__ dials: no submit yet
        unsent = (core.submits.pending, core.submits.waiting) if core is not None else ({}, [])
        self._finalizer = weakref.finalize(self, close_unclosed, self.factory, self.socks, self.monitors,
                                           self._readers, self.loop, *unsent)
        self._finalizer.atexit = False     # at exit pyzmq leaves contexts alone: nothing waits

    # -- Transport (called by the core) --------------------------------------------------
    def send(self, node: int, frames: list[bytes]) -> bool:
        sock = self.socks[node]
        if sock is None:
            return False        # retired (its node left the ring): not connected
        # With DONTWAIT a zmq.asyncio send is tried at once and returns a finished future.
        sent = sock.send_multipart(frames, zmq.DONTWAIT)
        error = sent.exception()
        if isinstance(error, zmq.Again):
            if not self.nodes.reached and monotonic() - self._dialled_at >= PROBE_AFTER and not self.nodes.secure:
                # No node reached yet: find out why in time for the first-contact message.
                self._probes.start(self.nodes.endpoints[node])
            return False
        if error is not None:
            raise error
        return True

    def reconnect(self, node: int) -> None:
        """Drop node ``node``'s connection and connect again (it looped back)."""
        if self.socks[node] is not None:
            redial(self.socks[node], self.nodes.endpoints[node])

    def connect(self, endpoint: str) -> bool | None:
        dialled = dial_discovered(self.factory, endpoint, self._heartbeat_ms)
        if not isinstance(dialled, tuple):
            return dialled
        sock, monitor = dialled
        node = self.nodes.next_slot
        place(self.socks, self.monitors, node, sock, monitor)
        if self.loop is not None:
            self._readers[node] = self._readers_of(self.loop, node)
        return True

    def disconnect(self, node: int) -> None:
        """Close node ``node``'s connection for good (its node left the ring):
        its reader and watcher are cancelled (one of them may be the caller:
        it stops at its next turn, seeing its socket gone), and its slot
        holds None until an endpoint learned later reuses it."""
        sock, monitor = self.socks[node], self.monitors[node]
        if sock is None:
            return
        self.socks[node] = self.monitors[node] = None
        for task in self._readers.pop(node, ()):
            task.cancel()
        hang_up(sock, monitor)

    # -- lifecycle -------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start the readers in the running loop; refuse another loop, and
        a closed client, saying what to do (a web app's module-level client
        closed by one lifespan's shutdown and used by the next: a test
        suite's TestClient per test)."""
        if self.closed:
            raise MiyaqError(CLOSED_FOR_GOOD)
        self.check_loop()
        if self.loop is not None:
            return
        if self._pid != os.getpid():
            # Made before a fork, first used in the child (a client made at import
            # time in a pre-forking server): the parent's ZeroMQ context does not
            # work here. Its sockets are let go (pyzmq closes nothing in a child)
            # and this process dials its own.
            self._finalizer.detach()
            self._dial()
        self.loop = loop = asyncio.get_running_loop()
        self._readers.update({i: self._readers_of(loop, i) for i, sock in enumerate(self.socks) if sock is not None})
        self._finalize_unclosed()     # now with the loop and the readers to stop there
        self._timer = LoopTimer(loop, self)
        self._arm()

    def check_loop(self) -> None:
        """Refuse a call from another event loop than the one this driver
        runs in (nothing there would ever resolve what it awaits)."""
        if self.loop is not None and self.loop is not asyncio.get_running_loop():
            raise MiyaqError("a miyaq.aio.Client belongs to the event loop that first used it; "
                             "make one client per loop")

    def _readers_of(self, loop: asyncio.AbstractEventLoop, node: int) -> list[asyncio.Task[None]]:
        """Node ``node``'s reader and watcher: each holds the driver weakly."""
        me = weakref.ref(self)
        return [loop.create_task(pump(me, AsyncDriver._on_reply, node, self.socks[node])),
                loop.create_task(pump(me, AsyncDriver._on_event, node, self.monitors[node]))]

    @property
    def in_own_loop(self) -> bool:
        """True when called from the event loop this driver runs in."""
        return self.loop is not None and self.loop is asyncio.get_running_loop()

    async def close(self) -> None:
        """Stop and close the sockets. From another loop than its own (whose
        loop may be closed already), only the sockets are closed."""
        if self.closed:
            return
        self.closed = True
        if self.in_own_loop:
            if self._timer is not None:
                self._timer.cancel()
            readers = [task for tasks in self._readers.values() for task in tasks]
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        self.core.fail_all(MiyaqError("client is closed"))
        self.room.wake_all()     # waiting for room: each finds the client closed
        if self._finalizer.detach() is not None:
            self.factory.close()     # the sockets, now and once

    def abandon(self) -> None:
        """Close a driver whose loop is closed: its finalizer's work now
        (:func:`~.unclosed.close_unclosed`: the unacknowledged submits reported as
        dropped, the sockets closed). Its futures are left as they are:
        their loop is closed, nobody awaits them. In a forked child (the
        parent's client, let go there) nothing is closed: the parent's
        context and sockets are not this process's (see :meth:`ensure_started`)."""
        if self.closed:
            return
        self.closed = True
        if self._pid != os.getpid():
            self._finalizer.detach()
            return
        self._finalizer()

    # -- calls ---------------------------------------------------------------------------
    def submit(self, p: Pending, counted: bool = False) -> None:
        """Hand a submit to the core: at once when the client is idle, else at
        the end of this pass of the loop, batched with the others.
        ``counted``: counted in the window already (let in by :attr:`room`)."""
        if not counted:
            self.core.admitted(p)
        if not self.core.submit(p, monotonic()) and not self._flush_soon:
            self._flush_soon = True
            assert self.loop is not None
            self.loop.call_soon(self._flush)
        self._arm()

    def _count(self, p: Pending) -> None:
        self.core.admitted(p)

    def _uncount(self, p: Pending) -> None:
        """Take ``p``, counted and never handed over, out of the window again."""
        self.core.submitted -= 1
        self.core.submitted_bytes -= p.size

    def request(self, node: int, command: bytes, body: dict[str, Any], waiter: Waiter, deadline: float) -> None:
        self.core.request(node, command, body, waiter, deadline, monotonic())
        self._arm()

    def withdraw(self, req: int) -> None:
        """The caller of request ``req`` stopped waiting (see :meth:`ClientCore.withdraw`)."""
        if not self.closed:
            self.core.withdraw(req, monotonic())
            self._arm()

    def give_back(self, node: int, task: Any) -> None:
        """A task node ``node`` leased to a RECEIVE whose caller was cancelled
        as its answer came: back to the node unstarted (see :meth:`ClientCore.give_back`)."""
        if not self.closed:
            self.core.give_back(node, task, monotonic())
            self._arm()

    # -- the loop's side -----------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_soon = False
        if not self.closed:
            self.core.submits.send_due(monotonic())
            self._arm()

    def _on_timer(self) -> None:
        assert self._timer is not None
        late = self._timer.went_off()
        if self.closed or self._timer.catching_up(late, self.core.in_flight > 0):
            return
        try:
            self.core.on_timer(monotonic())
        except Exception:
            self._crash()
            return
        self._arm()

    def _arm(self) -> None:
        """Make sure ``on_timer`` runs when the core next needs it. While
        submits are unresolved the timer holds the driver, so a client
        dropped without close() still delivers them (as the threaded client
        does: acknowledged, or failed by their ``submit_timeout``); otherwise
        it holds the driver weakly, and a dropped client is collected."""
        assert self.loop is not None and self._timer is not None
        self._timer.schedule(self.loop.time() + self.core.next_timer(monotonic()), self.core.in_flight > 0)

    def _on_reply(self, node: int, sock: Any, frames: list[bytes]) -> bool:
        """One message from node ``node``; False once ``sock`` is no longer its
        socket (its node left the ring, and this reply closed it)."""
        self.core.on_frames(node, frames, monotonic())
        self._arm()
        return self.socks[node] is sock

    def _on_event(self, node: int, monitor: Any, frames: list[bytes]) -> bool:
        """Node ``node``'s connection events: a closed one resends its
        unacknowledged submits and fails its open requests, and the node is
        asked last until it is up again. False once ``monitor`` is closed
        (its node left the ring)."""
        event = monitor_event(frames)
        if self.monitors[node] is not monitor:
            return False
        if event == CONNECTION_READY:
            self.nodes.mark(node, True)
        elif event == CONNECTION_CLOSED:
            self.nodes.mark(node, False)
            self.core.on_disconnected(node, monotonic())
            self._arm()
        return True

    def _crash(self) -> None:
        logger.exception("miyaq asyncio client failed (a bug: please report this traceback); this AsyncClient can "
                         "no longer be used: its unfinished calls failed, make a new one")
        self.closed = True
        self.core.fail_all(MiyaqError("client I/O failed; see the log"))
