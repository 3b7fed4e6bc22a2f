"""The threaded and gevent driver of the client's core: the only code that
touches a threaded client's sockets.

One I/O context -- a native thread (:class:`~miyaq.client.kit.ThreadKit`) or
a greenlet (:class:`~miyaq.client.kit.GeventKit`) -- polls the sockets and
runs :class:`~miyaq.client.core.ClientCore`. Callers hand it calls through a
deque and a wake-up pipe (the poller sleeps on the pipe and the sockets).
Sockets come from a :class:`~miyaq.runtime.sockets.SocketFactory` of the
kit's flavour, with the client's CURVE keys when it has them.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from time import monotonic   # miyaq.runtime.monotonic, without importing the runtime (gevent) here
from typing import TYPE_CHECKING, Any

from ..errors import MiyaqError
from .core import ClientCore
from .nodes import Nodes
from .submits import Pending, Waiter

if TYPE_CHECKING:
    from ..runtime.sockets import SocketSecurity

logger = logging.getLogger(__name__)

READ_BURST = 1000
"""Most messages read from one socket per pass (the others get their turn)."""


class IOLoop:
    """Runs a :class:`ClientCore` for callers in other threads (or greenlets)."""

    def __init__(self, kit: Any, endpoints: list[str], *, max_batch: int, ack_timeout: float,
                 max_message: int, security: "SocketSecurity | None" = None,
                 endpoints_source: str = "given") -> None:
        # Imported here: importing the client must not import the runtime (gevent, and
        # through it ssl) before a worker had a chance to monkey-patch.
        from ..runtime.sockets import SocketFactory
        self.kit = kit
        self.zmq = kit.zmq
        self.factory = SocketFactory(flavour=kit.flavour, max_message=max_message, security=security)
        self.nodes = Nodes(endpoints, source=endpoints_source, secure=security is not None)
        self.socks: list[Any] = [self.factory.dealer(ep, immediate=True) for ep in endpoints]
        self.room = kit.event()
        self.room.set()
        self.core = ClientCore(self, self.nodes, max_batch=max_batch, ack_timeout=ack_timeout,
                               max_message=max_message, on_resolved=self.room.set)
        self.inbox: deque[tuple[Any, ...]] = deque()
        self._poller: Any = None
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        os.set_blocking(self._rfd, False)
        self._armed = False
        self.count_lock = kit.lock()
        self._handle: Any = None

    # -- Transport (called by the core, in the I/O context) ----------------------------
    def send(self, node: int, frames: list[bytes]) -> bool:
        try:
            self.socks[node].send_multipart(frames, self.zmq.NOBLOCK)
        except self.zmq.Again:
            return False
        return True

    def connect(self, endpoint: str) -> None:
        sock = self.factory.dealer(endpoint, immediate=True)
        self.socks.append(sock)
        if self._poller is not None:
            self._poller.register(sock, self.zmq.POLLIN)

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

    def submit(self, p: Pending) -> None:
        with self.count_lock:
            self.core.submitted += 1
        self._put(("submit", p))

    def request(self, node: int, command: bytes, body: dict[str, Any], waiter: Waiter, deadline: float) -> None:
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
        if self._armed:
            self._armed = False
            try:
                os.write(self._wfd, b"x")
            except (BlockingIOError, OSError):
                pass

    # -- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        zmq = self.zmq
        poller = self._poller = self.factory.poller()
        for sock in self.socks:
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
                events = dict(poller.poll(timeout_ms))
                self._armed = False
                if self._rfd in events:
                    try:
                        os.read(self._rfd, 4096)
                    except BlockingIOError:
                        pass
                for i, sock in enumerate(list(self.socks)):
                    if sock in events:
                        self._read(i, sock)
        except Exception:
            logger.exception("miyaq client I/O loop failed")
            core.fail_all(MiyaqError("client I/O loop failed; see the log"))
        finally:
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

    def _read(self, node: int, sock: Any) -> None:
        zmq = self.zmq
        core = self.core
        for _ in range(READ_BURST):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            core.on_frames(node, frames, monotonic())
