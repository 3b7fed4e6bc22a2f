"""The short path of a threaded client: calls that leave from the caller's
own thread while the I/O thread sleeps (docs/performance.md).

While the I/O thread sleeps -- in an OS-level poll on the sockets'
``ZMQ_FD`` descriptors and the pipe, touching no socket -- a caller that
finds the client idle takes :attr:`ThreadedIOLoop.lock`,
hands its submit or request to the core and sends it from its own thread:
no wake-up pipe, no switch to the I/O thread before the message leaves. The
lock guards the core and the sockets; whoever holds it may use them. The
``ZMQ_FD`` descriptors are edge-triggered (any operation on a socket may
consume the signal of a message that arrived), so after using a socket the
caller looks at ``ZMQ_EVENTS`` and wakes the I/O thread when a message waits.
A busy client (the I/O thread holds the lock, a submit waits to be sent, more
than :data:`LONE_UNACKED` are unacknowledged, or submits come faster than
:data:`SHORT_PATH_GAP` apart) takes the queued path, where submits are batched.

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
arrived after it sent. At a steady rate of lone submits (a web handler
submitting a job per request) the acknowledgements then cost no wake-up of
the I/O thread; the last one is read when that sleep ends. While callers keep
coming, the I/O thread woken by that bound only looks whether one came since
it fell asleep and sleeps on (:meth:`ThreadedIOLoop._sleep_on`). A caller that
waits on a submit it did not wait for at once (``flush()``,
``wait_accepted()``) wakes the I/O thread to listen (:meth:`ThreadedIOLoop.heard_event`).
"""
from __future__ import annotations

import math
import select
import threading
from time import monotonic   # miyaq.runtime.monotonic, without importing the runtime (gevent) here
from typing import TYPE_CHECKING, Any, Callable

from .dialling import CLIENT_HEARTBEAT_TIMEOUT
from .io import IOLoop
from .pending import Pending
from .resolver import Waiter

if TYPE_CHECKING:
    from ..runtime.sockets import SocketSecurity

SHORT_PATH_GAP = 0.001
"""A submit nobody waits for takes the short path only this long (seconds)
after the last one that did: faster than that, submits are a stream, and the
I/O thread's batches cost less than a message each."""
LONE_UNACKED = 8
"""A lone submit (one that takes the short path: :data:`SHORT_PATH_GAP` after
the last) leaves from the caller's thread while at most this many earlier
ones wait for their acknowledgement and none waits to be sent. A node slow to
answer (a loaded machine) would otherwise turn such a submit into a wake-up
of the I/O thread, which sends it alone all the same."""
LAZY_ACK_WAIT = 0.02
"""Longest a lone submit's acknowledgement waits unread (seconds) when no
other submit comes to read it in passing: how late ``accepted`` turns true,
and a refusal (BUSY) is acted on, for a submit nobody waits for. The I/O
thread wakes at most once per this interval for such acknowledgements."""


class ThreadedIOLoop(IOLoop):
    """The I/O loop of a threaded client (:class:`~miyaq.client.kit.ThreadKit`):
    a native I/O thread, and the short path for callers (module docstring)."""

    def __init__(self, kit: Any, endpoints: list[str], *, max_batch: int, ack_timeout: float,
                 max_message: int, security: "SocketSecurity | None" = None,
                 endpoints_source: str = "given", heartbeat_timeout: float = CLIENT_HEARTBEAT_TIMEOUT) -> None:
        super().__init__(kit, endpoints, max_batch=max_batch, ack_timeout=ack_timeout,
                         max_message=max_message, security=security, endpoints_source=endpoints_source,
                         heartbeat_timeout=heartbeat_timeout)
        # The core and the sockets (see the module's docstring). An RLock only
        # so that a caller can tell whether it holds it (never taken twice by
        # one thread: :meth:`_direct` refuses while this thread holds it): a
        # KeyboardInterrupt raised just after a plain Lock's ``acquire(False)``
        # succeeded, before the ``try`` that releases it, left the lock held by
        # nobody, and the I/O thread and every later call waited for good.
        self.lock = threading.RLock()
        self._held_here: Callable[[], bool] = getattr(self.lock, "_is_owned")
        self._fds: Any = None          # the I/O thread's OS poll
        self._last_short = 0.0         # when a submit last took the short path
        self._led = False              # the last leading caller got its reply itself
        self._deaf = False             # the I/O thread sleeps on the pipe (and monitors) only (under lock)
        self._deaf_fds: Any = None     # what it polls then
        self._deaf_until = 0.0         # when a deaf I/O thread wakes by itself (monotonic)
        self._lazy_acks = False        # a lone submit left from a caller: its ack may wait unread
        self._hear = False             # a caller waits for a submit: the I/O thread must listen
        self._lead_fds: Any = None     # a leading caller's OS poll
        self._monitor_fds: set[int] = set()   # the monitors' descriptors in it

    @staticmethod
    def _wait_for_probe(probe: Callable[[str, float], str], endpoint: str, timeout: float) -> str:
        """Run a first-contact probe in this thread (the I/O thread, or a
        leading caller): where a call fails for want of any node."""
        return probe(endpoint, timeout)

    def _watch(self, sock: Any, monitor: Any) -> None:
        for fds in (self._fds, self._lead_fds):
            if fds is not None:
                fds.register(sock.getsockopt(self.zmq.FD), select.POLLIN)
                fds.register(monitor.getsockopt(self.zmq.FD), select.POLLIN)
        if self._lead_fds is not None:
            self._monitor_fds.add(monitor.getsockopt(self.zmq.FD))
        if self._deaf_fds is not None:
            self._deaf_fds.register(monitor.getsockopt(self.zmq.FD), select.POLLIN)

    def _unwatch(self, sock: Any, monitor: Any) -> None:
        # Under the lock (the core retires a node): no leading caller polls now;
        # the I/O thread may (it sleeps in its poll without the lock). The
        # descriptors go before the sockets close: a poll that still watches one
        # wakes on it closing (POLLNVAL), reads nothing, and polls again without it.
        sock_fd, monitor_fd = sock.getsockopt(self.zmq.FD), monitor.getsockopt(self.zmq.FD)
        for fds, gone in ((self._fds, (sock_fd, monitor_fd)), (self._lead_fds, (sock_fd, monitor_fd)),
                          (self._deaf_fds, (monitor_fd,))):
            if fds is not None:
                for fd in gone:
                    try:
                        fds.unregister(fd)
                    except KeyError:
                        pass
        self._monitor_fds.discard(monitor_fd)

    def _submit_directly(self, p: Pending, waits: bool) -> bool:
        # Unacknowledged submits, or a stream of them: queue it, to be batched.
        # Acknowledgements left unread (lazy) do not count: the caller reads them first.
        if ((self.core.submits.idle or self._lazy_acks)
                and (waits or p.created - self._last_short >= SHORT_PATH_GAP)
                and self._direct(lambda now: self._submit_now(p, now), p.waiter if waits else None,
                                 p.deadline, when_idle=True, lone=not waits)):
            self._last_short = p.created
            return True
        return False

    def submit_then_ask(self, p: Pending, command: bytes, body: dict[str, Any], waiter: Waiter,
                        deadline: float, counted: bool = False) -> bool:
        """The short path for ``call()``: send submit ``p`` and, right behind it
        on the same connection, a request (its RESULT long-poll) that the node
        reads after storing the task; then read both replies here. False:
        nothing was sent (the client is busy) and the caller takes the
        ordinary path. ``waiter`` may still fail with ``not_found`` (the task
        was refused, retried elsewhere, or is held by other nodes), and the
        caller then asks again the ordinary way. ``counted``: as :meth:`submit`'s."""
        def both(now: float) -> None:
            core = self.core
            if not counted:
                self._count(p)
            core.submit(p, now, LONE_UNACKED)
            body["id"] = p.wire["id"]
            core.request(p.node, command, body, waiter, deadline, now)

        return ((self.core.submits.idle or self._lazy_acks)
                and self._direct(both, waiter, deadline, when_idle=True))

    def _submit_now(self, p: Pending, now: float) -> None:
        if not self.core.submit(p, now, LONE_UNACKED):
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

    def _direct(self, call: Callable[[float], Any], lead: Any = None, until: float = 0.0,
                when_idle: bool = False, lone: bool = False) -> bool:
        """The short path: run ``call(now)`` in this thread if the I/O thread
        sleeps and nothing is queued for it; False: queue the call instead.
        ``lead``: the caller's future (it waits at once): read the sockets
        here until it resolves (see the module's docstring), at most until
        ``until`` (monotonic seconds). ``when_idle``: only if no submit is
        waiting and at most :data:`LONE_UNACKED` are unacknowledged, once the
        acknowledgements that arrived are read (read after the call when
        that bound holds before: the call leaves first). ``lone``: a submit
        nobody waits for, whose acknowledgement may wait for the next caller
        to read (lazy)."""
        if not self._armed or self._held_here():
            return False
        try:
            if not self.lock.acquire(False):
                return False
            if not self._armed or self.inbox:
                return False
            core = self.core
            submits = core.submits
            # Acknowledgements left for us to read in passing (the monitors are the
            # I/O thread's: its poll, deaf or not, watches their descriptors). Read
            # before the call only when they decide whether it may go; else after
            # it (a leader reads them as it waits), so that the call leaves first.
            read_after = when_idle and lead is None and not submits.idle
            if when_idle and (submits.waiting or len(submits.pending) > LONE_UNACKED):
                self._read_all(monitors=False)
                if submits.waiting or len(submits.pending) > LONE_UNACKED:
                    return False
                read_after = False
            now = monotonic()
            call(now)
            if lead is not None:
                self._led = self._lead(lead, until)
            else:
                self._led = False
                if read_after:
                    self._read_all(monitors=False)
            if lone:
                self._lazy_acks = True
                self._last_short = now
                if submits.waiting:
                    # A refusal read in passing left a submit to send again later: the
                    # I/O thread times its retry (its sleep was set before it existed).
                    self._wake()
                    return True
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
            if self._held_here():     # acquired, even if interrupted right after
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
                if sock is not None:
                    fds.register(sock.getsockopt(self.zmq.FD), select.POLLIN)
            fds.register(self._rfd, select.POLLIN)
            self._monitor_fds = {monitor.getsockopt(self.zmq.FD) for monitor in self.monitors
                                 if monitor is not None}
        rfd = self._rfd
        monitor_fds = self._monitor_fds
        # The monitors are read only when the poll says one has something: a
        # monitor's descriptor stays readable until its commands are processed,
        # and only the thread holding the lock touches a monitor, so an event
        # this leader leaves unread wakes whoever polls next (the I/O thread's
        # deaf sleep watches the monitors too). Asking them after every reply
        # was two zero-timeout polls a call.
        monitors = False
        while not future.done():
            more = self._read_all(monitors)
            monitors = False
            if more or future.done():
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
            else:
                monitors = any(fd in monitor_fds for fd, _ in events)
        return True

    def _readable(self) -> bool:
        """A socket has a message (threads only: plain pyzmq sockets)."""
        for sock in self.socks:
            if sock is not None and self._has_message(sock):
                return True
        return False

    # -- the loop -------------------------------------------------------------------------
    def _sleep_on(self) -> int | None:
        """How long (ms) the I/O thread, deaf after lone submits and woken by
        its own timeout, may sleep on without a pass: a caller submitted since
        it fell asleep (and read what had arrived by then, just after its own
        submit left), so the acknowledgements left unread are due
        :data:`LAZY_ACK_WAIT` after that caller, and no timer of the core is
        due before. At a steady rate of
        lone submits the deaf sleep ends every :data:`LAZY_ACK_WAIT` and finds
        nothing to do: a pass then (the lock, the timers, every socket read)
        cost as much CPU as a submit. None: a pass is due, or a caller holds
        the lock."""
        if not self.lock.acquire(False):
            return None
        try:
            core = self.core
            now = monotonic()
            lazy_for = self._last_short + LAZY_ACK_WAIT - now
            if lazy_for <= 0 or not self._armed or self._hear or self.inbox or not core.no_requests:
                return None
            timer = core.next_timer(now)
            if timer <= 0:
                return None
            rest = math.ceil(min(lazy_for, timer) * 1000)
            self._deaf_until = now + rest / 1000
            return rest
        finally:
            self.lock.release()

    def _run(self) -> None:
        """A native thread: sleeps in an OS poll, uses the sockets under the lock."""
        fds = self._fds = select.poll()
        for sock in self.socks + self.monitors:
            if sock is not None:
                fds.register(sock.getsockopt(self.zmq.FD), select.POLLIN)
        fds.register(self._rfd, select.POLLIN)
        # Deaf, it still hears the monitors: a connection that closed while
        # nothing was outstanding must not be taken, later, for one that closed
        # under messages sent on its successor.
        pipe = self._deaf_fds = select.poll()
        pipe.register(self._rfd, select.POLLIN)
        for monitor in self.monitors:
            if monitor is not None:
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
                events = (pipe if deaf else fds).poll(timeout_ms)
                while deaf and lazy and not events:     # its own timeout: lone submits may go on
                    rest = self._sleep_on()
                    if rest is None:
                        break
                    events = pipe.poll(rest)
                if any(fd == self._rfd for fd, _ in events):
                    self._drain_pipe()
        except Exception:
            self._crashed()
        finally:
            with self.lock:       # a caller on the short path may hold the sockets
                self._armed = False
                resolver.deferring = False
                resolver.run()
                self._closed()
