"""The driver of the client's core: the only code that touches a client's
sockets.

One I/O context -- a native thread (:class:`~miyaq.client.kit.ThreadKit`) or
a greenlet (:class:`~miyaq.client.kit.GeventKit`) -- reads the sockets and
runs :class:`~miyaq.client.core.ClientCore`. Callers hand it calls through a
deque and a wake-up pipe (:class:`IOLoop`, the greenlet's loop, and the
queued path of every client), where submits are batched. The sockets, their
connection monitors and their reads are its base's,
:class:`~miyaq.client.node_sockets.NodeSockets`. A threaded client's calls
may also go from the caller's own thread while the I/O thread sleeps: the
short path, :class:`miyaq.client.short_path.ThreadedIOLoop`.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from time import monotonic   # miyaq.runtime.monotonic, without importing the runtime (gevent) here
from typing import TYPE_CHECKING, Any, Callable

from ..errors import MiyaqError
from .core import ClientCore
from .dialling import CLIENT_HEARTBEAT_TIMEOUT, ReachProbes, out_of_files
from .node_sockets import NodeSockets
from .pending import Pending
from .resolver import Waiter
from .window import WindowQueue

if TYPE_CHECKING:
    from ..runtime.sockets import SocketSecurity

logger = logging.getLogger(__name__)


class IOLoop(NodeSockets):
    """Runs a :class:`ClientCore` for callers in other threads (or greenlets)."""

    def __init__(self, kit: Any, endpoints: list[str], *, max_batch: int, ack_timeout: float,
                 max_message: int, security: "SocketSecurity | None" = None,
                 endpoints_source: str = "given", heartbeat_timeout: float = CLIENT_HEARTBEAT_TIMEOUT) -> None:
        self.kit = kit
        super().__init__(kit, endpoints, max_message=max_message, security=security,
                         endpoints_source=endpoints_source, heartbeat_timeout=heartbeat_timeout)
        self.nodes.explain = ReachProbes(self._wait_for_probe).reason
        self.count_lock = kit.lock()
        # Submits waiting for room in the window (counted in as they are let in).
        self.room = WindowQueue(kit.event, kit.lock(), self._count, self.uncount)
        self.core = ClientCore(self, self.nodes, max_batch=max_batch, ack_timeout=ack_timeout,
                               max_message=max_message, on_resolved=self.room.freed)
        self.inbox: deque[tuple[Any, ...]] = deque()
        try:
            self._rfd, self._wfd = os.pipe()
        except OSError as exc:         # another thread took the files counted free: nothing is left open
            self.factory.close()
            raise out_of_files(endpoints, exc) from None
        os.set_blocking(self._wfd, False)
        os.set_blocking(self._rfd, False)
        self._armed = False            # the I/O context sleeps (or is about to): wake it through the pipe
        self.stopped = False           # the loop ended: a call queued now would wait for nobody
        self._end_when_idle = False    # its Client was dropped unclosed: end once no submit is in flight
        self._handle: Any = None

    @staticmethod
    def _wait_for_probe(probe: Callable[[str, float], str], endpoint: str, timeout: float) -> str:
        """Run a first-contact probe (:class:`ReachProbes`) in the hub's
        thread pool: only the I/O greenlet, in which the core fails the call,
        waits for it (callers only queue their calls to it)."""
        from ..runtime.green import run_in_thread
        return run_in_thread(probe, endpoint, timeout)

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
        self._handle = self.kit.spawn(self._run, "miyaq-client-io")

    def submit(self, p: Pending, waits: bool = False, counted: bool = False) -> None:
        """Hand a submit over. ``waits``: its caller waits for it at once (it
        cannot be batched with its own later submits). ``counted``: it is
        counted in the window already (let in by the window's queue)."""
        if not counted:
            self._count(p)
        if not self._submit_directly(p, waits):
            self._put(("submit", p))

    def _count(self, p: Pending) -> None:
        """Count ``p`` in the window (callers of any thread: under ``count_lock``)."""
        with self.count_lock:
            self.core.admitted(p)

    def uncount(self, p: Pending) -> None:
        """Take ``p``, counted and never handed over, out of the window again."""
        with self.count_lock:
            self.core.submitted -= 1
            self.core.submitted_bytes -= p.size

    def _submit_directly(self, p: Pending, waits: bool) -> bool:
        """Send ``p`` from the caller's thread (the short path); False: it
        is queued for the I/O context. Never here."""
        return False

    def submit_then_ask(self, p: Pending, command: bytes, body: dict[str, Any], waiter: Waiter,
                        deadline: float, counted: bool = False) -> bool:
        """Send submit ``p`` and a request right behind it, read by the caller
        (``call()``): only on the short path
        (:class:`~miyaq.client.short_path.ThreadedIOLoop`); False
        here, and the caller takes the ordinary path."""
        return False

    def heard_event(self) -> Any:
        """The event for a caller about to wait on a submit it did not wait
        for at once (this loop always listens)."""
        return self.kit.event()

    def request(self, node: int, command: bytes, body: dict[str, Any], waiter: Waiter, deadline: float) -> None:
        """Send a request whose caller waits for ``waiter`` at once."""
        self._put(("request", node, command, body, waiter, deadline))

    def withdraw(self, req: int) -> None:
        """The caller of request ``req`` stopped waiting (see :meth:`ClientCore.withdraw`)."""
        self._put(("withdraw", req))

    def give_back(self, node: int, task: Any) -> None:
        """A RECEIVE's caller stopped waiting as its answer came: the task it
        brings goes back to ``node`` unstarted (see :meth:`ClientCore.give_back`)."""
        self._put(("give back", node, task))

    def next_req(self) -> int:
        return self.core.next_req()

    def close(self, timeout: float = 1.0) -> None:
        if self.stopped:
            return                     # ended already (its pipe is closed: nothing to wake)
        self._armed = True
        self._put(("close",))
        if self._handle is not None:
            self.kit.join(self._handle, timeout)

    def close_when_idle(self) -> None:
        """The Client was garbage-collected without :meth:`close`: end the loop
        (its thread or greenlet, its sockets) once every submit it holds is
        acknowledged or has failed by its own deadline -- what ``close()``
        would have waited for, in the background. From any thread."""
        if not self.stopped:
            self._put(("end when idle",))

    def _put(self, item: tuple[Any, ...]) -> None:
        self.inbox.append(item)
        if self.stopped:
            self._fail_queued()        # the loop ended (a call racing close(), or one after it)
        else:
            self._wake()

    def _wake(self) -> None:
        if self._armed:
            self._armed = False
            try:
                os.write(self._wfd, b"x")
            except (BlockingIOError, OSError):
                pass

    # -- the loop ---------------------------------------------------------------------
    def _run(self) -> None:
        """A greenlet: sleeps in the flavour's poller; callers always queue."""
        zmq = self.zmq
        poller = self._poller = self.factory.poller()
        for sock in self.socks + self.monitors:
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        poller.register(self._rfd, zmq.POLLIN)
        try:
            while True:
                try:
                    if self._turn(poller):
                        break
                except (KeyboardInterrupt, SystemExit) as exc:
                    # A signal landed in this greenlet (gevent: it runs in the
                    # main thread). The turn it cut short is lost as a fault
                    # is: its requests time out, its submits are sent again.
                    self.kit.interrupted(exc)
        except Exception:
            self._crashed()
        finally:
            self._closed()

    def _turn(self, poller: Any) -> bool:
        """One turn of the loop: the calls queued, the timers due, a wait in
        the poller, then what arrived. True: the loop is to end."""
        core = self.core
        if self._drain_inbox():
            return True
        now = monotonic()
        core.on_timer(now)
        self._armed = True
        if self.inbox:
            self._armed = False
            timeout_ms = 0
        else:
            timeout_ms = int(core.next_timer(now) * 1000)
        events = dict(poller.poll(timeout_ms))
        self._armed = False
        self._drain_pipe()
        # A socket dialled meanwhile (the ring named a node) is not in
        # `events`; one closed meanwhile (its node left) is None.
        for i, sock in enumerate(self.socks):
            if sock is not None and sock in events:
                self._read(i, sock)
        for i, monitor in enumerate(self.monitors):
            if monitor is not None and monitor in events:
                self._read_monitor(i, monitor)
        return False

    def _drain_pipe(self) -> None:
        try:
            os.read(self._rfd, 4096)
        except BlockingIOError:
            pass

    def _crashed(self) -> None:
        logger.exception("miyaq client I/O loop failed (a bug: please report this traceback); this Client can no "
                         "longer be used: its unfinished calls failed, make a new Client")
        self.core.fail_all(MiyaqError("client I/O loop failed; see the log"))

    def _closed(self) -> None:
        self.stopped = True
        self.core.fail_all(MiyaqError("the client was closed"))   # calls still waiting end now
        self._fail_queued()
        self.factory.close()
        os.close(self._rfd)
        os.close(self._wfd)

    def _fail_queued(self) -> None:
        """Fail the calls queued for a loop that ended. A caller appends its
        call before it looks at :attr:`stopped`, and the loop sets it before
        it calls this: whichever comes second takes the call, never neither."""
        error = MiyaqError("the client was closed")
        while True:
            try:
                item = self.inbox.popleft()
            except IndexError:
                return
            if item[0] == "submit":
                self.core.submits.resolve(item[1], error=error)
            elif item[0] == "request":
                item[4].fail(error)

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
            elif kind == "withdraw":
                core.withdraw(item[1], monotonic())
            elif kind == "give back":
                core.give_back(item[1], item[2], monotonic())
            elif kind == "close":
                return True
            elif kind == "end when idle":
                self._end_when_idle = True
        return self._end_when_idle and core.submits.idle
