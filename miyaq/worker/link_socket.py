"""The socket of a worker's link to one node (:class:`LinkSocket`, the base
of :class:`~miyaq.worker.link.NodeLink`), and what is sent on it: a fresh
socket and its connection monitor -- or, libzmq refusing one (out of file
descriptors), why not --; the link's greenlets, ended when it is retired;
messages sent now or failing at once (:meth:`LinkSocket.post`, never
blocking), the extra credit of the default prefetch, and results queued in
the link's :class:`~miyaq.worker.outbox.Outbox`. Registering, the reader
and what each message from the node does are the link's.
"""
from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any, Callable

from ..errors import MiyaqError, Unavailable
from ..logs import LogLimiter
from ..protocol import codec
from ..protocol import commands as c
from ..runtime import Policy, green, monotonic
from ..runtime.hub_socket import HubSocket
from ..runtime.open_files import open_files_hint, room_for
from ..runtime.socket_monitors import quiet_monitor
from ..runtime.sockets import SocketFactory, heartbeat_options, zmq
from .link_watch import LinkWatch
from .outbox import Outbox
from .prefetch import ExtraCredit, RunTimes
from .transit import Transit

if TYPE_CHECKING:
    from .runner import Worker

logger = logging.getLogger("miyaq.worker.link")     # the link's lines: one logger to follow it
_log = LogLimiter(logger)     # what a node sends may repeat (a buggy or hostile one): a few lines a minute

SOCKET_FILES = 8
"""File descriptors a fresh link socket may need at once (its mailbox, its
monitor's, the TCP connection, libzmq's own), with room to spare."""


__all__ = ["LinkSocket", "SOCKET_FILES"]


class LinkSocket:
    """The socket of a :class:`~miyaq.worker.link.NodeLink` and its sending
    (its base). The link sets the attributes below."""

    worker: Worker
    factory: SocketFactory
    endpoint: str
    sock: Any
    monitor: Any
    heartbeat: float
    node_timeout: float
    last_heard: float
    answered: bool
    slow: bool
    lost: bool
    liveness: int
    send_errors: int
    open_error: str | None
    retired: bool
    watch: LinkWatch
    outbox: Outbox
    extra: ExtraCredit
    transit: Transit
    _parts: set[Any]

    def _open(self) -> bool:
        """A fresh socket (and its monitor) to the node. libzmq may refuse to
        make one -- the process is out of file descriptors (its handlers hold
        them?) -- then the link has no socket: it is logged, sends fail as
        to a node that is not there, and the reader tries again a heartbeat
        later (:meth:`serve`). True if the socket is open; a retired link
        opens none."""
        self.close()
        if self.retired:
            return False
        self.answered = False
        self.slow = False
        self.transit.reset()        # another connection: what came late on the last one says nothing here
        self.last_heard = monotonic()
        self.watch.opened(self.last_heard)
        try:
            if not room_for(SOCKET_FILES):
                # Asked first: a socket libzmq fails to make halfway leaves a
                # half-built object whose finalizer prints a traceback.
                raise zmq.ZMQError(errno.EMFILE)
            sock, self.monitor = self.factory.watched_dealer(
                self.endpoint, ready=True, plain=True, heartbeat_ms=heartbeat_options(self.node_timeout))
        except zmq.ZMQError as exc:
            self.open_error = str(exc)
            _log.warning("open", "worker %s cannot open a socket to node %s: %s%s; trying again every %gs",
                         self.worker.wid, self.endpoint, exc, open_files_hint(exc), self.heartbeat)
            return False
        self.sock = HubSocket(sock)
        self.open_error = None
        return True

    def spawn(self, name: str, fn: Callable[[], Any], policy: Policy) -> Any:
        """Start one of this link's greenlets under the worker's supervisor
        (its restarts too are this link's): :meth:`retire` ends them."""
        return self.worker.supervisor.spawn(name, self._run_part, fn, policy=policy)

    def _run_part(self, fn: Callable[[], Any]) -> None:
        if self.retired:
            return      # a restart due after the link was retired
        me = green.current()
        self._parts.add(me)
        try:
            fn()
        finally:
            self._parts.discard(me)

    def retire(self) -> None:
        """The node left the ring and nothing of it is held here: close the
        socket and its monitor (a reader or watcher waiting on them wakes and
        ends) and end this link's other greenlets -- not the caller, which
        may be this link's own reader (the list that retired it came on it):
        it ends once it has handled that message. The link never opens a
        socket again."""
        self.retired = True
        self.close()
        me = green.current()
        green.killall([g for g in self._parts if g is not me], block=False)

    def silent(self) -> bool:
        """The node is lost, or has not been heard from for heartbeat ×
        liveness (it may only be stalled: another holder is better to report
        to, but the link keeps it)."""
        return self.lost or monotonic() - self.last_heard > self.heartbeat * self.liveness

    def post(self, command: bytes, body: dict[str, Any]) -> None:
        """Send one message now or raise :class:`Unavailable` (counted in
        ``send_errors``); never blocks. A full queue (``Again``) is a failure
        too: nothing is dropped silently."""
        sock = self.sock
        if sock is None:
            self.send_errors += 1
            raise Unavailable(f"sending {command.decode()} to {self.endpoint} failed: no socket "
                              f"({self.open_error or 'closed'})")
        try:
            sock.send(codec.encode(command, body))
        except zmq.ZMQError as exc:
            self.send_errors += 1
            raise Unavailable(f"sending {command.decode()} to {self.endpoint} failed: {exc}") from exc

    def send(self, command: bytes, body: dict[str, Any]) -> bool:
        """Send a message whose loss the protocol recovers from (READY is sent
        again on silence, a lost RETURN or BYE ends as a lost worker): log a
        failure instead of raising. True if it was sent."""
        try:
            self.post(command, body)
            return True
        except Unavailable as err:
            logger.warning("%s", err.message)
            return False

    def grant_extra(self, run_times: RunTimes, backlog_dry: bool) -> None:
        """Default prefetch: grant this node more credit (the backlog ran dry
        and tasks are short) or plan to take some back (they grew longer)."""
        extra = self.extra
        if extra.at_most(run_times):
            return
        n = extra.adjust(extra.target(run_times), backlog_dry)
        if n and self.send(c.CREDIT, {"n": n}):
            extra.granted(n)

    def report_done(self, task_id: str, attempt: int, result: bytes | None, elsewhere: bool = False) -> None:
        """``elsewhere``: no slot back here (another node gave us the task,
        its node lost; or this worker is stopping)."""
        self.outbox.add_done(task_id, attempt, result, elsewhere)

    def report_failed(self, task_id: str, attempt: int, error: dict[str, Any], elsewhere: bool = False) -> None:
        self.outbox.add_failed(task_id, attempt, error, elsewhere)

    def touch(self, task_id: str) -> None:
        self.outbox.add_touch(task_id)

    def flush(self) -> None:
        """Send every queued result now (on stop); a failure is logged, not raised."""
        try:
            self.outbox.flush()
        except MiyaqError as err:
            logger.warning("%d result(s) for %s not sent: %s", len(self.outbox), self.endpoint, err.message)

    def close(self) -> None:
        """Close the socket and its monitor (the monitor first, so the
        watcher never reads the closing socket's own events). The socket
        stops reporting to the monitor before the monitor closes
        (:func:`~miyaq.runtime.socket_monitors.quiet_monitor`): an event
        sent to a closed monitor blocks the process's ZeroMQ I/O thread
        for good, every link of the worker silent."""
        if self.monitor is not None:
            if self.sock is not None:
                quiet_monitor(self.sock.sock)
            self.monitor.close(linger=0)
            self.monitor = None
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
