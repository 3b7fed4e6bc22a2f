"""The client's protocol core, without I/O: what the threaded, gevent and
asyncio clients share.

:class:`ClientCore` is a state machine. Its driver (``miyaq.client.io`` and ``.short_path`` for
threads and greenlets, ``miyaq.aio.driver`` for asyncio) owns the sockets
and the clock, and feeds it:

- calls: :meth:`submit` (a :class:`~miyaq.client.pending.Pending`),
  :meth:`request`;
- incoming messages: :meth:`on_frames` (node index, frames);
- time: :meth:`on_timer` at the latest at the time :meth:`next_timer`
  returns.

The core emits frames through ``Transport.send`` (which answers at once
whether the node took them: the client's sockets set ``IMMEDIATE``, so a
send to a node that is not connected fails instead of queueing), asks for
new connections through ``Transport.connect`` (nodes learnt from the ring)
and closes those of nodes that left the ring through
``Transport.disconnect`` (:mod:`.nodes`: a learned node no RING reply named
for ``DEPARTED_GRACE`` seconds, once nothing is in flight on it).
It resolves each call's waiter with ``set``/``fail``. Every method runs in
the driver's one I/O context (thread, greenlet or event loop) -- or in a
caller that holds that context's lock while the I/O context is idle, which
is what :meth:`submit` with ``now`` given is for: an idle client sends a
lone submit at once, from the caller, and a burst still takes the batched
path.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from ..errors import InvalidField, MiyaqError, Unavailable, UnknownCommand
from ..logs import LogLimiter
from ..protocol import codec
from ..protocol import commands as c
from .nodes import Nodes
from .requests import RequestTable
from .pending import Pending
from .resolver import Resolver, Waiter
from .submits import SubmitPipeline, Unencodable
from .wire import unsendable
from .withdrawals import Withdrawals

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a node sending garbage may send much of it: a few lines a minute

MAX_POLL = 0.1
"""The longest the driver sleeps between two ``on_timer`` calls."""
LOOP_RETRY = 1.0
"""Seconds between two reconnections of a connection found looped back to
this client (:meth:`ClientCore._looped`)."""


class Transport(Protocol):
    """What a driver gives the core."""

    def send(self, node: int, frames: list[bytes]) -> bool:
        """Send without blocking; False when node ``node`` is not connected."""

    def connect(self, endpoint: str) -> bool | None:
        """Open a connection to a node learnt from the ring (its index is the
        next one); False, with nothing opened, when the endpoint is refused
        (not one libzmq can dial: never asked again); None, with nothing
        opened, when no socket can be made now (the process has no file
        descriptor left: asked again at the next RING reply)."""

    def reconnect(self, node: int) -> None:
        """Drop node ``node``'s connection and connect to its endpoint again."""

    def disconnect(self, node: int) -> None:
        """Close node ``node``'s connection for good: its node left the ring
        and nothing is in flight on it (:meth:`Nodes.from_ring` retires its
        index). Nothing is sent on that index again until :meth:`connect`
        opens the next endpoint learned there."""


class ClientCore:
    def __init__(self, transport: Transport, nodes: Nodes, *, max_batch: int, ack_timeout: float,
                 max_message: int, on_resolved: Callable[[], None] = lambda: None) -> None:
        self.transport = transport
        self.nodes = nodes
        self.max_message = max_message
        self.resolver = Resolver()
        self.submits = SubmitPipeline(nodes, self._send, self.resolver, max_batch=max_batch,
                                      ack_timeout=ack_timeout, on_resolved=on_resolved,
                                      ask_limits=self._ask_limits)
        self.requests = RequestTable(nodes, self._send, self.resolver, on_refused=self.submits.refused)
        self._ring_req = 0
        self._ring_node = -1      # the node the discovery RING _ring_req went to
        self._limits_asks: dict[int, int] = {}    # req of a RING asking a node its limits -> that node
        self.withdrawals = Withdrawals(self.requests, self._send)   # requests their callers stopped waiting for
        self._looped_at: dict[int, float] = {}    # node -> when its connection was last found looped
        # Unresolved submits (and bytes) = submitted - submits.resolved. The threaded
        # driver's callers bump `submitted` (admitted()) under their own lock; only the I/O
        # context bumps `resolved`, so the two sides never share a lock per task.
        self.submitted = 0
        self.submitted_bytes = 0

    @property
    def in_flight(self) -> int:
        return self.submitted - self.submits.resolved

    @property
    def bytes_in_flight(self) -> int:
        """What those hold, each its :attr:`Pending.size` (:mod:`.window`)."""
        return self.submitted_bytes - self.submits.resolved_bytes

    def admitted(self, p: Pending) -> None:
        """``p`` is in the window (counted by whoever hands it over)."""
        self.submitted += 1
        self.submitted_bytes += p.size

    @property
    def quiet(self) -> bool:
        """Nothing is outstanding: no submit waits or is unacknowledged, no
        request is open, no discovery reply is due. A message that arrives
        now answers nobody, so the driver may leave it unread for a while."""
        return self.submits.idle and self.no_requests

    @property
    def no_requests(self) -> bool:
        """No request is open or waits to be sent, no discovery reply is due:
        whatever is outstanding is submits."""
        return (not self.requests.open and not self.requests.unsent and not self._ring_req
                and not self._limits_asks)

    # -- calls --------------------------------------------------------------------------
    def submit(self, p: Pending, now: float | None = None, beside: int = 0) -> bool:
        """Queue a submit. With ``now``: send it at once if the client is idle
        -- nothing waiting to be sent, at most ``beside`` unacknowledged (0:
        none) -- the short path for a lone submit (a burst after it takes the
        batched path). True if it left now. ``beside`` is for a driver that
        tells a lone submit from a burst by itself (the threaded client's
        callers, by the time since the last one): a submit then leaves at once
        while a few earlier ones wait for their acknowledgement, instead of
        waking the I/O context to send it alone all the same."""
        submits = self.submits
        sent_now = now is not None and not submits.waiting and len(submits.pending) <= beside
        self.submits.add(p)
        if sent_now:
            assert now is not None
            self.submits.send_due(now)
            return not self.submits.waiting     # it may wait for its node's limits (a large payload)
        return False

    def next_req(self) -> int:
        return self.requests.next_req()

    def request(self, node: int, command: bytes, body: dict[str, Any], waiter: Waiter,
                deadline: float, now: float) -> None:
        """Send a request (``body["req"]`` from :meth:`next_req`). Submits made
        before it leave first, so a status or cancel right after ``submit()``
        finds the task."""
        self.submits.send_due(now)
        if node in self.nodes.retired:
            # Named in the caller's thread just before its node left the ring
            # (the index is not reused for REUSE_AFTER: no other node answers).
            self.resolver.fail(waiter, Unavailable(f"node {self.nodes.endpoints[node]} left the ring; this "
                                                   "client no longer connects to it"))
            return
        self.requests.start(node, command, body, waiter, deadline, now)

    # -- events -------------------------------------------------------------------------
    def on_frames(self, node: int, frames: list[bytes], now: float) -> None:
        """One message from node ``node``."""
        try:
            command, body = codec.decode(frames, c.NODE_REPLIES, self.max_message)
        except MiyaqError as err:
            if isinstance(err, UnknownCommand) and frames[1] in c.NODE_COMMANDS:
                self._looped(node, now)
                return
            _log.warning("malformed", "ignoring a malformed reply from %s: %s", self.nodes.endpoints[node],
                         err.message)
            return
        if command == c.SUBMITTED:
            self.submits.on_submitted(node, body, now)
        elif command in (c.REPLY, c.ERROR):
            req = body.get("req")
            if type(req) is not int:
                self.requests.on_reply(node, command, body)
            elif self.withdrawals.receives and self.withdrawals.receives.get(req) == node:
                self.withdrawals.answered(node, req, body, now)
            elif self._own_ring(node, req):
                self._on_ring(node, body if command == c.REPLY else None, now)
            else:
                self.requests.on_reply(node, command, body)

    def _own_ring(self, node: int, req: int) -> bool:
        """Whether ``req`` is a RING of the core's own to ``node`` (discovery,
        limits); if so it is taken off the books."""
        if self._ring_req and req == self._ring_req:
            self._ring_req = 0
            return True
        if self._limits_asks and self._limits_asks.get(req) == node:
            del self._limits_asks[req]
            return True
        return False

    def withdraw(self, req: int, now: float) -> None:
        """The caller of request ``req`` stopped waiting (its call was
        cancelled or interrupted): :meth:`Withdrawals.withdraw <.withdrawals.Withdrawals.withdraw>`."""
        self.withdrawals.withdraw(req)

    def give_back(self, node: int, task: Any, now: float) -> None:
        """``task``, the map a RECEIVE answer of node ``node`` brings, is
        taken by nobody: :meth:`Withdrawals.give_back <.withdrawals.Withdrawals.give_back>`."""
        self.withdrawals.give_back(node, task, now)

    def _on_ring(self, node: int, body: dict[str, Any] | None, now: float) -> None:
        """Node ``node`` answered a RING (None: with an error): its limits, and
        the nodes its ring names."""
        self.nodes.learn_limits(node, None if body is None else body.get("limits"))
        self.submits.limits_heard(now)
        if body is not None:
            via = self.nodes.endpoints[node]
            for endpoint in self.nodes.from_ring(body, via, dial=self.transport.connect, now=now,
                                                 release=self._release):
                logger.info("miyaq client: discovered node %s", endpoint)

    def _release(self, departed: list[int]) -> list[int]:
        """Learned nodes no RING reply named for ``DEPARTED_GRACE``: close the
        connections of those with nothing in flight -- no submit unacknowledged
        or waiting to go there, no request open or waiting to be sent, no RING
        of the core's own unanswered -- and forget what the core kept of them.
        The ones closed (:meth:`Nodes.from_ring` retires their indexes); the
        others are looked at again at the next RING reply."""
        busy = self._busy_nodes()
        released = []
        for node in departed:
            if node in busy:
                continue
            logger.info("miyaq client: closing the connection to %s: it left the ring (no RING reply "
                        "has named it for the grace)", self.nodes.endpoints[node])
            self.transport.disconnect(node)
            self._looped_at.pop(node, None)
            self.withdrawals.forget(node)
            released.append(node)
        return released

    def _busy_nodes(self) -> set[int]:
        """The nodes something is in flight on (see :meth:`_release`)."""
        busy = {p.node for p in self.submits.pending.values()}
        busy.update(p.node for p in self.submits.waiting)
        busy.update(entry[2] for entry in self.requests.open.values())
        busy.update(node for node, _, _, _ in self.requests.unsent)
        busy.update(self._limits_asks.values())
        if self._ring_req:
            busy.add(self._ring_node)
        return busy

    def _ask_limits(self, node: int) -> None:
        """Ask node ``node`` what it takes (a RING), unless already asked."""
        if node in self._limits_asks.values():
            return
        req = self.requests.next_req()
        if self._send(node, c.RING, {"req": req}):
            self._limits_asks[req] = node

    def _looped(self, node: int, now: float) -> None:
        """One of our own messages came back: the connection to node ``node``
        loops to this socket (a TCP self-connect: the node's port is in the
        ephemeral range and nothing listened there as ZeroMQ retried), and
        ZeroMQ would keep it for ever. Connect again -- at most once every
        LOOP_RETRY seconds, so that a peer that echoes is not a loop; what
        was sent on it is sent again when its closing is seen
        (:meth:`on_disconnected`)."""
        if now - self._looped_at.get(node, -LOOP_RETRY) < LOOP_RETRY:
            return
        self._looped_at[node] = now
        logger.warning("miyaq client: the connection to %s came back to this client (its own message arrived: "
                       "a TCP self-connect while nothing listened there); connecting again",
                       self.nodes.endpoints[node])
        self.transport.reconnect(node)

    def on_disconnected(self, node: int, now: float) -> None:
        """The connection to node ``node`` closed: a node answers on the
        connection a message came on, so nothing sent on this one will be
        answered. Its unacknowledged submits are sent again now
        (:meth:`SubmitPipeline.node_lost`) and its open requests fail with
        ``Unavailable`` (:meth:`RequestTable.node_lost`: a long-poll for a
        result then asks another node)."""
        lost = self.submits.node_lost(node, now)
        failed = self.requests.node_lost(node)
        if self._limits_asks:       # a RING asked on that connection is not answered: ask again
            self._limits_asks = {req: n for req, n in self._limits_asks.items() if n != node}
        if self._ring_req and self._ring_node == node:
            self._ring_req = 0          # nor is the discovery's: the next discovery asks again
        if lost or failed:
            logger.info("miyaq client: the connection to %s closed with %d submit(s) unacknowledged (sent "
                        "again) and %d request(s) unanswered", self.nodes.endpoints[node], lost, failed)
        self.submits.send_due(now)

    def on_timer(self, now: float) -> None:
        """Send what is due, resend what was not acknowledged, fail what is late, discover."""
        if self.requests.unsent:
            self.requests.retry_unsent(now)
        self.submits.send_due(now)
        self.submits.check_acks(now)
        if self.requests.open:
            self.requests.check_deadlines(now)
        if self.nodes.discovery_due(now):
            self._ring_req = self.requests.next_req()
            self._ring_node = self.nodes.pick_to_ask()      # a node that can answer, when there is one
            if not self._send(self._ring_node, c.RING, {"req": self._ring_req}):
                self._ring_req = 0      # not connected: the next discovery asks again

    def next_timer(self, now: float) -> float:
        """Seconds until :meth:`on_timer` must run again (at most MAX_POLL)."""
        nearest = now + MAX_POLL
        for due in (self.submits.next_due(), self.requests.next_due(now)):
            if due is not None and due < nearest:
                nearest = due
        return max(0.0, nearest - now)

    def fail_all(self, error: MiyaqError) -> None:
        """The driver stopped: every waiting call fails with ``error`` (at once)."""
        self.resolver.deferring = False
        self.submits.fail_all(error)
        self.requests.fail_all(error)
        self.resolver.run()

    # -- sending ------------------------------------------------------------------------
    def _send(self, node: int, command: bytes, body: dict[str, Any]) -> bool:
        """Encode and send one message; False when node ``node`` is not
        connected. A message msgpack cannot encode never ends the I/O loop
        (:meth:`_unencodable`): the callers check what they hand the client
        (:mod:`.wire`), so one that gets here is a value changed after the
        call returned, or a check missing -- before 2026-12-05 a lone
        surrogate in any string field got here, and the loop died of it,
        every submit in flight failing with it.

        Nothing goes to a node whose connection closed (the driver marked it
        down from the connection monitor) until a new one completed its
        handshake (marked up): libzmq reports the closing before its I/O
        thread has taken that connection's pipe off the socket, and a
        message sent in between is taken -- ``IMMEDIATE`` still sees the
        pipe -- and dropped with it, with no event to say so. The request
        or submit :meth:`on_disconnected` sends again at once went there: a
        result long-poll whose only node restarted then waited for its
        deadline (its wait plus ``request_timeout``) instead of asking the
        node that came back (a loaded host: 56 of 100 messages sent right
        after the closing's event were lost so, none sent after the new
        connection's handshake). The pipe of the closed connection is gone
        once the next one is up: libzmq ends it before it dials again."""
        if node in self.nodes.down:
            return False   # its connection closed and no new one is up yet: see below
        try:
            frames = codec.encode(command, body)
        except (TypeError, ValueError, OverflowError) as exc:     # UnicodeEncodeError is a ValueError
            return self._unencodable(command, body, exc)
        if not self.transport.send(node, frames):
            return False   # IMMEDIATE: not connected to that node
        self.nodes.reached = True
        return True

    def _unencodable(self, command: bytes, body: dict[str, Any], exc: Exception) -> bool:
        """A message msgpack could not encode: only its own calls fail. A
        SUBMIT raises :class:`Unencodable` to the submit pipeline, which fails
        the submits that cannot be encoded and sends the others; a request's
        caller fails with ``InvalidField`` naming the field, and the request
        is forgotten (True: nothing is to be sent again)."""
        if command == c.SUBMIT:
            raise Unencodable(str(exc))
        found = unsendable(body)
        name, why = found if found is not None else ("body", str(exc))
        error = InvalidField(f"the {command.decode(errors='replace')} request was not sent: field {name!r} is a "
                             f"value msgpack cannot encode ({why})", field=name)
        _log.warning("unencodable", "miyaq client: %s", error.message)
        req = body.get("req")
        entry = self.requests.open.pop(req, None) if type(req) is int else None
        if entry is not None:
            self.resolver.fail(entry[0], error)
        return True
