"""The threaded and gevent driver of the client's core: the only code that
touches a threaded client's sockets.

One I/O context -- a native thread (:class:`~miyaq.client.kit.ThreadKit`) or
a greenlet (:class:`~miyaq.client.kit.GeventKit`) -- reads the sockets and
runs :class:`~miyaq.client.core.ClientCore`. Callers hand it calls through a
deque and a wake-up pipe. Sockets come from a
:class:`~miyaq.runtime.sockets.SocketFactory` of the kit's flavour, with the
client's CURVE keys when it has them.

The short path (threads only): while the I/O thread sleeps -- in an OS-level
poll on the sockets' ``ZMQ_FD`` descriptors and the pipe, touching no
socket -- a caller that finds the client idle takes :attr:`IOLoop.lock`,
hands its submit or request to the core and sends it from its own thread:
no wake-up pipe, no switch to the I/O thread before the message leaves. The
lock guards the core and the sockets; whoever holds it may use them. The
``ZMQ_FD`` descriptors are edge-triggered (any operation on a socket may
consume the signal of a message that arrived), so after using a socket the
caller looks at ``ZMQ_EVENTS`` and wakes the I/O thread when a message waits.
A busy client (the I/O thread holds the lock, or submits are unacknowledged)
takes the queued path, where submits are batched.

A caller that waits at once (``submit(wait=True)``, a request, and so
``call()``) does not hand the reading back either: still holding the lock,
it *leads* -- reads the sockets and runs the core's timers itself until its
reply came -- so its reply wakes one thread, not the I/O thread and then
the caller. It hands over as soon as another caller needs the client (the
wake-up pipe) or at its deadline. While the last such call came back whole
and nothing is outstanding, the I/O thread sleeps on the pipe, its timer
and the connection monitors only ("deaf"): the next leader reads its own
reply without waking it, and a caller that leaves something outstanding
without waiting (a lone ``submit()``) wakes it to listen.

A lone submit's acknowledgement is read *in passing*: after such a submit
left from the caller's thread, the I/O thread sleeps deaf for at most
:data:`LAZY_ACK_WAIT`, and the next caller on the short path reads what
arrived before it sends. At a steady rate of lone submits (a web handler
submitting a job per request) the acknowledgements then cost no wake-up of
the I/O thread; the last one is read when that sleep ends. A caller that
waits on a submit it did not wait for at once (``flush()``,
``wait_accepted()``) wakes the I/O thread to listen (:meth:`IOLoop.heard_event`).

Each socket has a connection monitor (libzmq's socket monitor, read only by
the I/O context or a leader): when a connection closes, nothing sent on it
will be answered, so the core resends that node's unacknowledged submits
and fails its open requests at once (:meth:`ClientCore.on_disconnected`),
and until it is up again the node is asked last (:meth:`Nodes.mark`).
"""
from __future__ import annotations

import logging
import math
import os
import select
from collections import deque
from time import monotonic   # miyaq.runtime.monotonic, without importing the runtime (gevent) here
from typing import TYPE_CHECKING, Any, Callable

from ..errors import MiyaqError
from .core import ClientCore
from .nodes import Nodes
from .submits import Pending, Waiter

if TYPE_CHECKING:
    from ..runtime.sockets import SocketSecurity

logger = logging.getLogger(__name__)

READ_BURST = 1000
"""Most messages read from one socket per pass (the others get their turn)."""
SHORT_PATH_GAP = 0.001
"""A submit nobody waits for takes the short path only this long (seconds)
after the last one that did: faster than that, submits are a stream, and the
I/O thread's batches cost less than a message each."""
LAZY_ACK_WAIT = 0.02
"""Longest a lone submit's acknowledgement waits unread (seconds) when no
other submit comes to read it in passing: how late ``accepted`` turns true,
and a refusal (BUSY) is acted on, for a submit nobody waits for. The I/O
thread wakes at most once per this interval for such acknowledgements."""


class IOLoop:
    """Runs a :class:`ClientCore` for callers in other threads (or greenlets)."""

    def __init__(self, kit: Any, endpoints: list[str], *, max_batch: int, ack_timeout: float,
                 max_message: int, security: "SocketSecurity | None" = None,
                 endpoints_source: str = "given") -> None:
        # Imported here: importing the client must not import the runtime (gevent, and
        # through it ssl) before a worker had a chance to monkey-patch.
        from ..runtime.messages import has_message
        from ..runtime.sockets import SocketFactory, connection_events
        self._has_message = has_message
        self.kit = kit
        self._connection_events = connection_events
        self.zmq = kit.zmq
        self._send = kit.send
        self._recv = kit.recv
        self.factory = SocketFactory(flavour=kit.flavour, max_message=max_message, security=security)
        self.nodes = Nodes(endpoints, source=endpoints_source, secure=security is not None)
        self.socks: list[Any] = [self.factory.dealer(ep, immediate=True) for ep in endpoints]
        # One per socket: its connections closing (a node that exited may have read
        # submits it never acknowledged: they are sent again at once) and coming up.
        self.monitors: list[Any] = [self.factory.connection_monitor(sock, ready=True) for sock in self.socks]
        self.room = kit.event()
        self.room.set()
        self.core = ClientCore(self, self.nodes, max_batch=max_batch, ack_timeout=ack_timeout,
                               max_message=max_message, on_resolved=self._room_freed)
        self.inbox: deque[tuple[Any, ...]] = deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        os.set_blocking(self._rfd, False)
        self._armed = False            # the I/O context sleeps (or is about to): wake it through the pipe
        self.count_lock = kit.lock()
        self.short_path = kit.name == "thread"
        self.lock = kit.lock()         # the core and the sockets (threads: see the module's docstring)
        self._fds: Any = None          # the I/O thread's OS poll
        self._last_short = 0.0         # when a submit last took the short path
        self._led = False              # the last leading caller got its reply itself
        self._deaf = False             # the I/O thread sleeps on the pipe (and monitors) only (under lock)
        self._deaf_fds: Any = None     # what it polls then
        self._deaf_until = 0.0         # when a deaf I/O thread wakes by itself (monotonic)
        self._lazy_acks = False        # a lone submit left from a caller: its ack may wait unread
        self._hear = False             # a caller waits for a submit: the I/O thread must listen
        self._lead_fds: Any = None     # a leading caller's OS poll
        self._handle: Any = None

    # -- Transport (called by the core, by whoever holds the lock) ------------------------
    def send(self, node: int, frames: list[bytes]) -> bool:
        try:
            self._send(self.socks[node], frames)
        except self.zmq.Again:
            return False
        return True

    def connect(self, endpoint: str) -> None:
        sock = self.factory.dealer(endpoint, immediate=True)
        self.socks.append(sock)
        monitor = self.factory.connection_monitor(sock, ready=True)
        self.monitors.append(monitor)
        for fds in (self._fds, self._lead_fds):
            if fds is not None:
                fds.register(sock.getsockopt(self.zmq.FD), select.POLLIN)
                fds.register(monitor.getsockopt(self.zmq.FD), select.POLLIN)
        if self._deaf_fds is not None:
            self._deaf_fds.register(monitor.getsockopt(self.zmq.FD), select.POLLIN)

    def reconnect(self, node: int) -> None:
        """Drop node ``node``'s connection and connect again (called with the
        sockets in hand: by the I/O context or a leader). Its connection
        monitor then reports the closing, and the core sends again what was
        unacknowledged on it."""
        from ..runtime.sockets import redial     # here: see __init__ (the runtime imports gevent)
        redial(self.socks[node], self.nodes.endpoints[node])

    def _room_freed(self) -> None:
        """A submit was resolved: wake a caller waiting for room in the window.
        Only a caller that found the window full clears the event (and then
        looks at ``in_flight`` again, which already counts this one), so an
        event still set needs no ``set()`` -- a lock and a notify per task."""
        if not self.room.is_set():
            self.room.set()

    # -- called from any thread / greenlet ---------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return self.nodes.endpoints

    @property
    def in_flight(self) -> int:
        return self.core.in_flight

    @property
    def busy_replies(self) -> int:
        return self.core.submits.busy_replies

    @property
    def resends(self) -> int:
        return self.core.submits.resends

    def start(self) -> None:
        run = self._run_threaded if self.short_path else self._run_polling
        self._handle = self.kit.spawn(run, "miyaq-client-io")

    def submit(self, p: Pending, waits: bool = False) -> None:
        """Hand a submit over. ``waits``: its caller waits for it at once (it
        cannot be batched with its own later submits)."""
        with self.count_lock:
            self.core.submitted += 1
        # Unacknowledged submits, or a stream of them: queue it, to be batched.
        # Acknowledgements left unread (lazy) do not count: the caller reads them first.
        if ((self.core.submits.idle or self._lazy_acks)
                and (waits or p.created - self._last_short >= SHORT_PATH_GAP)
                and self._direct(lambda now: self._submit_now(p, now), p.waiter if waits else None,
                                 p.deadline, when_idle=True, lone=not waits)):
            self._last_short = p.created
            return
        self._put(("submit", p))

    def submit_then_ask(self, p: Pending, command: bytes, body: dict[str, Any], waiter: Waiter,
                        deadline: float) -> bool:
        """The short path for ``call()``: send submit ``p`` and, right behind it
        on the same connection, a request (its RESULT long-poll) that the node
        reads after storing the task; then read both replies here. False:
        nothing was sent (the client is busy) and the caller takes the
        ordinary path. ``waiter`` may still fail with ``not_found`` (the task
        was refused, retried elsewhere, or is held by other nodes), and the
        caller then asks again the ordinary way."""
        def both(now: float) -> None:
            core = self.core
            with self.count_lock:
                core.submitted += 1
            core.submit(p, now)
            body["id"] = p.wire["id"]
            core.request(p.node, command, body, waiter, deadline, now)

        return ((self.core.submits.idle or self._lazy_acks)
                and self._direct(both, waiter, deadline, when_idle=True))

    def _submit_now(self, p: Pending, now: float) -> None:
        if not self.core.submit(p, now):
            self._wake()          # queued behind unacknowledged submits: the I/O thread batches it

    def heard_event(self) -> Any:
        """The event for a caller about to wait on a submit it did not wait for
        at once: the I/O thread is woken to listen, so an acknowledgement left
        for a caller to read in passing is read now, not after :data:`LAZY_ACK_WAIT`."""
        self._hear = True
        self._wake()
        return self.kit.event()

    def request(self, node: int, command: bytes, body: dict[str, Any], waiter: Waiter, deadline: float) -> None:
        """Send a request whose caller waits for ``waiter`` at once."""
        if not self._direct(lambda now: self.core.request(node, command, body, waiter, deadline, now),
                            waiter, deadline):
            self._put(("request", node, command, body, waiter, deadline))

    def next_req(self) -> int:
        return self.core.next_req()

    def close(self, timeout: float = 1.0) -> None:
        self._armed = True
        self._put(("close",))
        if self._handle is not None:
            self.kit.join(self._handle, timeout)

    def _put(self, item: tuple[Any, ...]) -> None:
        self.inbox.append(item)
        self._wake()

    def _wake(self) -> None:
        if self._armed:
            self._armed = False
            try:
                os.write(self._wfd, b"x")
            except (BlockingIOError, OSError):
                pass

    def _direct(self, call: Callable[[float], Any], lead: Any = None, until: float = 0.0,
                when_idle: bool = False, lone: bool = False) -> bool:
        """The short path: run ``call(now)`` in this thread if the I/O thread
        sleeps and nothing is queued for it; False: queue the call instead.
        ``lead``: the caller's future (it waits at once): read the sockets
        here until it resolves (see the module's docstring), at most until
        ``until`` (monotonic seconds). ``when_idle``: only if no submit is
        waiting or unacknowledged either, once the acknowledgements that
        arrived are read. ``lone``: a submit nobody waits for, whose
        acknowledgement may wait for the next caller to read (lazy)."""
        if not (self.short_path and self._armed and self.lock.acquire(False)):
            return False
        try:
            if not self._armed or self.inbox:
                return False
            core = self.core
            if when_idle and not core.submits.idle:
                self._read_all()          # acknowledgements left for us to read in passing
                if not core.submits.idle:
                    return False
            now = monotonic()
            call(now)
            if lead is not None:
                self._led = self._lead(lead, until)
            else:
                self._led = False
            if lone:
                self._lazy_acks = True
                self._last_short = now
                # A deaf I/O thread reads this acknowledgement when its sleep ends; wake
                # it only if that is later than the bound (it sleeps after a confirmed call).
                if self._deaf:
                    if not core.quiet and self._deaf_until > now + LAZY_ACK_WAIT:
                        self._wake()
                    return True
            # Wake the I/O thread if a message waits (we may have taken the edge of
            # its descriptor), or if it sleeps deaf and something is now outstanding.
            if (self._deaf and not core.quiet) or self._readable():
                self._wake()
            return True
        finally:
            self.lock.release()

    def _lead(self, future: Any, until: float) -> bool:
        """Read the sockets and run the core in this thread (the lock held)
        until ``future`` resolves; stop early when another caller queued a
        call or woke the I/O thread, or at ``until``. True if it resolved."""
        core = self.core
        fds = self._lead_fds
        if fds is None:
            fds = self._lead_fds = select.poll()
            for sock in self.socks + self.monitors:
                fds.register(sock.getsockopt(self.zmq.FD), select.POLLIN)
            fds.register(self._rfd, select.POLLIN)
        rfd = self._rfd
        while not future.done():
            if self._read_all() or future.done():
                continue
            if self.inbox or not self._armed:
                return False       # somebody else needs the client: the I/O thread takes over
            now = monotonic()
            if now >= until:
                return False
            left = min(until - now, core.next_timer(now))
            events = fds.poll(max(1, math.ceil(left * 1000)))
            if not events:
                core.on_timer(monotonic())
            elif any(fd == rfd for fd, _ in events):
                return future.done()
        return True

    def _readable(self) -> bool:
        """A socket has a message (threads only: plain pyzmq sockets)."""
        for sock in self.socks:
            if self._has_message(sock):
                return True
        return False

    # -- the loops --------------------------------------------------------------------
    def _run_threaded(self) -> None:
        """A native thread: sleeps in an OS poll, uses the sockets under the lock."""
        fds = self._fds = select.poll()
        for sock in self.socks + self.monitors:
            fds.register(sock.getsockopt(self.zmq.FD), select.POLLIN)
        fds.register(self._rfd, select.POLLIN)
        # Deaf, it still hears the monitors: a connection that closed while
        # nothing was outstanding must not be taken, later, for one that closed
        # under messages sent on its successor.
        pipe = self._deaf_fds = select.poll()
        pipe.register(self._rfd, select.POLLIN)
        for monitor in self.monitors:
            pipe.register(monitor.getsockopt(self.zmq.FD), select.POLLIN)
        core = self.core
        resolver = core.resolver
        try:
            while True:
                with self.lock:
                    self._armed = False
                    resolver.deferring = True
                    if self._drain_inbox():
                        break
                    now = monotonic()
                    core.on_timer(now)
                    more = self._read_all()
                    resolver.deferring = False
                    self._armed = True
                    if self._hear and core.submits.idle:
                        self._hear = False
                    busy = more or self.inbox or self._readable()
                    timeout_ms = 0 if busy else int(core.next_timer(now) * 1000)
                    # Deaf while callers lead and nothing is outstanding: their replies
                    # must not wake this thread too. Deaf for a while after a lone submit
                    # left from a caller: the next caller reads its acknowledgement.
                    lazy_for = self._last_short + LAZY_ACK_WAIT - now
                    if lazy_for <= 0 and core.submits.idle:
                        self._lazy_acks = False
                    lazy = lazy_for > 0 and self._lazy_acks and not self._hear and core.no_requests
                    deaf = self._deaf = not busy and ((self._led and core.quiet) or lazy)
                    if deaf and lazy:
                        timeout_ms = min(timeout_ms, math.ceil(lazy_for * 1000))
                    self._deaf_until = now + timeout_ms / 1000
                # Wake the callers whose replies came only now, with the lock free: the
                # next call of a caller that waits at once takes the short path.
                resolver.run()
                if any(fd == self._rfd for fd, _ in (pipe if deaf else fds).poll(timeout_ms)):
                    self._drain_pipe()
        except Exception:
            self._crashed()
        finally:
            with self.lock:       # a caller on the short path may hold the sockets
                self._armed = False
                resolver.deferring = False
                resolver.run()
                self._closed()

    def _run_polling(self) -> None:
        """A greenlet: sleeps in the flavour's poller; callers always queue."""
        zmq = self.zmq
        poller = self.factory.poller()
        for sock in self.socks + self.monitors:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._rfd, zmq.POLLIN)
        core = self.core
        try:
            while True:
                if self._drain_inbox():
                    break
                now = monotonic()
                core.on_timer(now)
                self._armed = True
                if self.inbox:
                    self._armed = False
                    timeout_ms = 0
                else:
                    timeout_ms = int(core.next_timer(now) * 1000)
                known = len(self.socks)
                events = dict(poller.poll(timeout_ms))
                self._armed = False
                self._drain_pipe()
                for i, sock in enumerate(self.socks):
                    if sock in events:
                        self._read(i, sock)
                for i, monitor in enumerate(self.monitors[:known]):
                    if monitor in events:
                        self._read_monitor(i, monitor)
                for sock in self.socks[known:] + self.monitors[known:]:
                    poller.register(sock, zmq.POLLIN)
        except Exception:
            self._crashed()
        finally:
            self._closed()

    def _drain_pipe(self) -> None:
        try:
            os.read(self._rfd, 4096)
        except BlockingIOError:
            pass

    def _crashed(self) -> None:
        logger.exception("miyaq client I/O loop failed")
        self.core.fail_all(MiyaqError("client I/O loop failed; see the log"))

    def _closed(self) -> None:
        self.core.fail_all(MiyaqError("the client was closed"))   # calls still waiting end now
        self.factory.close()
        os.close(self._rfd)
        os.close(self._wfd)

    def _drain_inbox(self) -> bool:
        inbox = self.inbox
        core = self.core
        while inbox:
            item = inbox.popleft()
            kind = item[0]
            if kind == "submit":
                core.submit(item[1])
            elif kind == "request":
                _, node, command, body, waiter, deadline = item
                core.request(node, command, body, waiter, deadline, monotonic())
            elif kind == "close":
                return True
        return False

    def _read_all(self) -> bool:
        """Read every socket until it has nothing; True if one still has more."""
        more = False
        for i, sock in enumerate(self.socks):
            more = self._read(i, sock) or more
        for i, monitor in enumerate(self.monitors):
            self._read_monitor(i, monitor)
        return more

    def _read_monitor(self, node: int, monitor: Any) -> None:
        """Take the connection events of node ``node``'s socket: note whether
        it is connected, and tell the core if a connection closed. Only this
        loop (or a leading caller) reads monitors, so a caller's socket use
        never takes their descriptor's edge."""
        if not self._has_message(monitor):
            return
        closed, connected = self._connection_events(monitor)
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
        return True
