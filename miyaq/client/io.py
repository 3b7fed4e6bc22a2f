"""The client's I/O loop: the only code that touches the client's sockets.

Callers hand it work through a deque and a wake-up pipe; it batches submits
into SUBMIT messages (one per node per pass), keeps a bounded window of
unacknowledged submits, resends a submit that was not acknowledged in
``ack_timeout`` (same id, so the node creates nothing new), backs off and
moves to another node on BUSY, and fails a submit with one clear error once
its deadline passes. Requests (status, cancel, result...) carry a ``req``
number and resolve a :class:`~miyaq.client.futures.Future`.
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections import deque
from typing import Any

from ..errors import Busy, MiyaqError, ShuttingDown, Timeout, Unavailable, from_wire
from ..protocol import codec
from ..protocol import commands as c
from .futures import Future

logger = logging.getLogger(__name__)

POLL_MAX = 0.1
DISCOVERY_INTERVAL = 10.0
CONNECT_WAIT = 1.5       # a request waits this long for a connection to its node
FIRST_CONTACT = 5.0
"""Seconds a submit waits for a connection while the client has never reached
any node; then it fails at once with :meth:`IOLoop.unreachable`'s message
instead of retrying until ``submit_timeout``. Once any node has been reached,
an unreachable node is retried (elsewhere, with backoff) until the deadline."""
BATCH_BYTES = 4 * 1024 * 1024    # payload bytes per SUBMIT (the node's default limit is 16 MiB)


class Pending:
    """One submit between ``submit()`` and its acknowledgement."""

    __slots__ = ("wire", "future", "deadline", "created", "sent", "tries", "node", "next_try", "last_error")

    def __init__(self, wire: dict[str, Any], future: Future, deadline: float) -> None:
        self.wire = wire
        self.created = time.time()
        self.future = future
        self.deadline = deadline
        self.sent = 0.0
        self.tries = 0
        self.node = -1
        self.next_try = 0.0
        self.last_error: MiyaqError | None = None


class IOLoop:
    def __init__(self, kit: Any, endpoints: list[str], *, max_batch: int, ack_timeout: float,
                 max_message: int, identity: bytes | None = None, endpoints_source: str = "given") -> None:
        self.kit = kit
        self.endpoints_source = endpoints_source   # where the endpoints came from, for messages
        self.reached = False                       # True once any node took a message from us
        zmq = kit.zmq
        self.zmq = zmq
        self.ctx = zmq.Context()
        self.endpoints = list(endpoints)
        self.socks: list[Any] = []
        for ep in list(self.endpoints):
            self.socks.append(self._socket(ep))
        self._poller: Any = None
        self.discover = True
        self._ring_req = 0
        self._next_discovery = 0.0
        self._discovery_gap = 0.25
        self.max_batch = max_batch
        self.ack_timeout = ack_timeout
        self.max_message = max_message
        self.inbox: deque[tuple[Any, ...]] = deque()
        self.pending: dict[str, Pending] = {}     # sent, awaiting ack, oldest first
        self.waiting: list[Pending] = []          # to (re)send when next_try passes
        self.requests: dict[int, tuple[Future, float]] = {}
        # Requests waiting for a connection: (node, command, body, since).
        self.unsent: list[tuple[int, bytes, dict[str, Any], float]] = []
        self._req = itertools.count(1)
        self._rr = itertools.count()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        os.set_blocking(self._rfd, False)
        self._armed = False
        self._closing = False
        self.room = kit.event()
        self.room.set()
        # Unresolved submits = submitted - resolved. Callers bump `submitted`
        # under their own lock; only this loop bumps `resolved`, so the two
        # sides never contend for one lock on every task.
        self.submitted = 0
        self.resolved = 0
        self.count_lock = kit.lock()
        self.resends = 0
        self.busy_replies = 0
        self._handle: Any = None

    def _socket(self, endpoint: str) -> Any:
        zmq = self.zmq
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.connect(endpoint)
        return sock

    def _add_endpoint(self, endpoint: str) -> None:
        """Connect to a node learnt from the ring (I/O loop only)."""
        if endpoint in self.endpoints or len(self.endpoints) >= 256:
            return
        sock = self._socket(endpoint)
        self.endpoints.append(endpoint)
        self.socks.append(sock)
        self._poller.register(sock, self.zmq.POLLIN)
        logger.info("miyaq client: discovered node %s", endpoint)

    def _discover(self, now: float) -> None:
        """Every DISCOVERY_INTERVAL, ask one node for the ring."""
        if not self.discover or now < self._next_discovery:
            return
        # Soon after start the ring may still be forming: ask again after 0.5 s,
        # doubling up to DISCOVERY_INTERVAL.
        self._discovery_gap = min(DISCOVERY_INTERVAL, self._discovery_gap * 2)
        self._next_discovery = now + self._discovery_gap
        self._ring_req = next(self._req)
        self._send(next(self._rr) % len(self.socks), c.RING, {"req": self._ring_req})

    def _on_ring(self, body: dict[str, Any]) -> None:
        members = body.get("members")
        if isinstance(members, dict):
            for info in members.values():
                if isinstance(info, dict) and isinstance(info.get("service"), str):
                    self._add_endpoint(info["service"])

    # -- called from any thread / greenlet ---------------------------------------------
    def start(self) -> None:
        self._handle = self.kit.spawn(self._run, "miyaq-client-io")

    def put(self, item: tuple[Any, ...]) -> None:
        self.inbox.append(item)
        if self._armed:
            self._armed = False
            try:
                os.write(self._wfd, b"x")
            except (BlockingIOError, OSError):
                pass

    @property
    def in_flight(self) -> int:
        return self.submitted - self.resolved

    def next_req(self) -> int:
        return next(self._req)

    def close(self, timeout: float = 1.0) -> None:
        self._closing = True
        self._armed = True
        self.put(("close",))
        if self._handle is not None:
            self.kit.join(self._handle, timeout)

    # -- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        zmq = self.zmq
        poller = self._poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._rfd, zmq.POLLIN)
        try:
            while True:
                if self._drain_inbox():
                    break
                now = time.time()
                if self.unsent:
                    self._send_unsent()
                self._send_waiting(now)
                self._check_timeouts(now)
                self._discover(now)
                self._armed = True
                if self.inbox:
                    self._armed = False
                    timeout_ms = 0
                else:
                    timeout_ms = int(self._poll_timeout(now) * 1000)
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
            self._fail_everything(MiyaqError("client I/O loop failed; see the log"))
        finally:
            for sock in self.socks:
                sock.close(linger=0)
            self.ctx.term()
            os.close(self._rfd)
            os.close(self._wfd)

    def _send_unsent(self) -> None:
        """Retry requests whose node was not connected; after CONNECT_WAIT the
        node counts as unreachable and the request fails (callers that can
        ask another node do so)."""
        unsent, self.unsent = self.unsent, []
        now = time.time()
        for node, command, body, since in unsent:
            if body["req"] not in self.requests or self._send(node, command, body):
                continue
            if now - since > CONNECT_WAIT:
                future, _ = self.requests.pop(body["req"])
                future.fail(self._no_connection(node))
            else:
                self.unsent.append((node, command, body, since))

    def _poll_timeout(self, now: float) -> float:
        if self.unsent:
            return 0.01
        nearest = now + POLL_MAX
        if self.waiting:
            nearest = min(nearest, min(p.next_try for p in self.waiting))
        return max(0.0, min(POLL_MAX, nearest - now))

    def _drain_inbox(self) -> bool:
        inbox = self.inbox
        while inbox:
            item = inbox.popleft()
            kind = item[0]
            if kind == "submit":
                self.waiting.append(item[1])
            elif kind == "request":
                # Submits queued before this request leave first, so a status or
                # cancel right after submit() finds the task.
                self._send_waiting(time.time())
                _, node, command, body, future, deadline = item
                self.requests[body["req"]] = (future, deadline)
                if not self._send(node, command, body):
                    self.unsent.append((node, command, body, time.time()))   # not connected (yet)
            elif kind == "close":
                return True
        return False

    def _send(self, node: int, command: bytes, body: dict[str, Any]) -> bool:
        try:
            self.socks[node].send_multipart(codec.encode(command, body), self.zmq.NOBLOCK)
        except self.zmq.Again:
            return False   # IMMEDIATE: not connected to that node
        self.reached = True
        return True

    def unreachable(self) -> Unavailable:
        """The first-contact error: no node was ever reached. Names the endpoints and where they came from."""
        shown = ", ".join(self.endpoints[:3]) + (" ..." if len(self.endpoints) > 3 else "")
        source = "" if self.endpoints_source == "given" else f" ({self.endpoints_source})"
        message = (f"cannot reach any node: nothing is listening on {shown}{source} -- is a node running? "
                   f"Start one with `miyaq node`, or check with `miyaq status --connect {self.endpoints[0]}`")
        return Unavailable(message)

    def _no_connection(self, node: int) -> Unavailable:
        if not self.reached:
            return self.unreachable()
        return Unavailable(f"no connection to {self.endpoints[node]}")

    def _pick_node(self, avoid: int) -> int:
        n = len(self.socks)
        i = next(self._rr) % n
        if n > 1 and i == avoid:
            i = (i + 1) % n
        return i

    def _send_waiting(self, now: float) -> None:
        if not self.waiting:
            return
        # Only the due prefix leaves: a submit waiting to be retried (e.g. the
        # node was not connected yet) is never overtaken by a later one, so
        # one producer's tasks reach the node in the order it submitted them.
        waiting = self.waiting
        i = 0
        while i < len(waiting) and waiting[i].next_try <= now:
            i += 1
        if not i:
            return
        due, self.waiting = waiting[:i], waiting[i:]
        by_node: dict[int, list[Pending]] = {}
        for p in due:
            node = p.node if p.node >= 0 and p.last_error is None else self._pick_node(p.node)
            by_node.setdefault(node, []).append(p)
        for node, batch in by_node.items():
            for chunk in _chunks(batch, self.max_batch, BATCH_BYTES):
                for p in chunk:
                    if p.tries and "resent" not in p.wire:
                        p.wire["resent"] = True    # the node may have stored (and run) an earlier try
                if self._send(node, c.SUBMIT, {"tasks": [p.wire for p in chunk]}):
                    for p in chunk:
                        p.sent = now
                        p.tries += 1
                        p.node = node
                        self.pending[p.wire["id"]] = p
                else:
                    # Not connected yet: try again soon, keeping the order of the batch
                    # (no jitter), so one producer's tasks stay FIFO -- unless no node
                    # was ever reached for FIRST_CONTACT seconds: then say so now.
                    error = Unavailable(f"no connection to {self.endpoints[node]}")
                    retry_node = self._pick_node(node) if len(self.socks) > 1 else node
                    for p in chunk:
                        if not self.reached and (now - p.created >= FIRST_CONTACT or now >= p.deadline):
                            self._resolve_submit(p, error=self.unreachable())
                            continue
                        p.node = retry_node
                        self._retry_later(p, now, error, delay=0.01)

    def _retry_later(self, p: Pending, now: float, error: MiyaqError, delay: float | None = None) -> None:
        p.last_error = error
        if now >= p.deadline:
            self._resolve_submit(p, error=_final(error, p))
            return
        if delay is None:
            delay = min(2.0, 0.01 * (2 ** min(p.tries, 8))) * (0.5 + random.random() / 2)
        p.next_try = min(now + delay, p.deadline)
        self.waiting.append(p)

    def _check_timeouts(self, now: float) -> None:
        pending = self.pending
        if pending:
            cutoff = now - self.ack_timeout
            for task_id in list(itertools.islice(pending, 1000)):
                p = pending[task_id]
                if p.sent > cutoff:
                    break
                del pending[task_id]
                self.resends += 1
                p.node = -1
                self._retry_later(p, now, Timeout(f"no acknowledgement within {self.ack_timeout:g}s"))
        if self.requests:
            for req, (future, deadline) in list(self.requests.items()):
                if deadline <= now:
                    del self.requests[req]
                    unsent = [node for node, _, body, _ in self.unsent if body["req"] == req]
                    if unsent:
                        future.fail(self._no_connection(unsent[0]))
                    else:
                        future.fail(Timeout("the node did not answer in time"))

    def _read(self, node: int, sock: Any) -> None:
        zmq = self.zmq
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                command, body = codec.decode(frames, c.NODE_REPLIES, self.max_message)
            except MiyaqError as err:
                logger.warning("ignoring a malformed reply from %s: %s", self.endpoints[node], err.message)
                continue
            if command == c.SUBMITTED:
                self._on_submitted(node, body)
            elif command in (c.REPLY, c.ERROR):
                if body.get("req") == self._ring_req and command == c.REPLY:
                    self._on_ring(body)
                    continue
                entry = self.requests.pop(body.get("req"), None)  # type: ignore[arg-type]
                if entry is None:
                    if command == c.ERROR and body.get("req") is None:
                        logger.warning("node %s: %s", self.endpoints[node], body.get("message"))
                    continue
                if command == c.REPLY:
                    entry[0].set(body)
                else:
                    entry[0].fail(from_wire(body))

    def _on_submitted(self, node: int, body: dict[str, Any]) -> None:
        now = time.time()
        for item in body.get("results", ()):
            if not isinstance(item, list) or len(item) != 3:
                continue
            task_id, status, detail = item
            p = self.pending.pop(task_id, None)
            if p is None:
                continue   # a late ack for a resend that was already acknowledged
            if status == c.REJECTED:
                err = from_wire(detail if isinstance(detail, dict) else {})
                if err.retryable:
                    self.busy_replies += 1
                    self._retry_later(p, now, err)
                else:
                    self._resolve_submit(p, error=err)
            else:
                self._resolve_submit(p, value=(self.endpoints[node], status, detail))

    def _resolve_submit(self, p: Pending, value: Any = None, error: MiyaqError | None = None) -> None:
        if error is not None:
            p.future.fail(error)
        else:
            p.future.set(value)
        self.resolved += 1
        self.room.set()

    def _fail_everything(self, error: MiyaqError) -> None:
        for p in list(self.pending.values()) + self.waiting:
            p.future.fail(error)
        self.pending.clear()
        self.waiting.clear()
        for future, _ in self.requests.values():
            future.fail(error)
        self.requests.clear()
        self.room.set()


def _chunks(batch: list[Pending], max_items: int, max_bytes: int) -> list[list[Pending]]:
    """Split submits so no SUBMIT exceeds ``max_items`` tasks or about
    ``max_bytes`` of payload (a node refuses a message over its max_message)."""
    chunks: list[list[Pending]] = []
    current: list[Pending] = []
    size = 0
    for p in batch:
        body = len(p.wire.get("body") or b"") + 128
        if current and (len(current) >= max_items or size + body > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(p)
        size += body
    if current:
        chunks.append(current)
    return chunks


def _final(error: MiyaqError, p: Pending) -> MiyaqError:
    task_id = p.wire.get("id")
    if error.code == Busy.code:   # full, or (reason "storage") unable to write its log
        why = error.message if error.details.get("reason") == "storage" else "every node tried was full"
        return Busy(f"task {task_id} not accepted before its deadline: {why}", **error.details)
    if error.code == ShuttingDown.code:
        return Unavailable(f"task {task_id} not accepted before its deadline: the nodes are shutting down")
    if isinstance(error, Timeout):
        return Timeout(f"task {task_id} not acknowledged before its deadline ({p.tries} tries)")
    return Unavailable(f"task {task_id} not accepted before its deadline: {error.message}")
