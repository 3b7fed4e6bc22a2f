"""The peer link: node-to-node requests over ZeroMQ.

The ZeroMQ :class:`~miyaq.cluster.transport.PeerLink`. Each node binds a
ROUTER on its peer port (requests from other nodes) and keeps one DEALER per
other member (its requests, and their answers). One greenlet reads the
ROUTER, one reads every DEALER through a poller (both critical: a node that
stops reading its peers stops the process); replies are matched to requests
by ``req`` and a request that gets no answer by its deadline (monotonic) has
its callback called with ``None`` — silence is an answer the replica logic
relies on ("only silence lets it run"). A callback that raises is logged
and counted by the supervisor; it never stops the readers.

Frames are the service protocol's: ``[b"MQ1", COMMAND, msgpack map]``; every
body carries ``from`` (the sender's node id) and ``proto``, the peer protocol
version the sender speaks (``PEER_PROTOCOL``; absent means 1). A request in a
version this node does not speak is refused with ``bad_version`` and logged,
never guessed at; the sender logs the refusal (docs/cluster.md, "Versions").
Commands: docs/cluster.md.

:class:`PeerRequests` is the half that knows no socket -- numbering
requests, matching answers, deadlines, handlers, versions -- so the
in-memory transport of :mod:`miyaq.testing.memtransport` runs the same code
on frames it carries itself; :class:`PeerEndpoint` adds the ZeroMQ sockets.

With keys, only peer keys complete the handshake on the peer port (ZAP
domain ``miyaq-peer``), and each request's key is looked up again (a
:class:`~miyaq.security.guard.Guard`): a key revoked while connected is
answered ``forbidden`` from its next request on.

Both readers bound what they keep of a message
(:func:`~miyaq.runtime.messages.recv_bounded`): a request over the limit is
answered ``bad_frame`` or ``too_large``, an answer over it is dropped (the
request then ends in silence); senders split what they send to stay under
``max_message`` (:mod:`miyaq.cluster.sizes`).
"""
from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Collection
from typing import Any, Callable

from miyaq.cluster.transport import Body, Callback, Handler, Reply
from miyaq.constants import PEER_RECONNECT_MS
from miyaq.errors import BadFrame, BadVersion, MiyaqError, ProtocolError, TooLarge
from miyaq.protocol import codec
from miyaq.protocol.commands import FRAMES
from miyaq.runtime import CRITICAL, LOG, Supervisor, green, monotonic
from miyaq.runtime.messages import MessageRefused, recv_bounded
from miyaq.runtime.sockets import SocketFactory, disconnects, zmq
from miyaq.security.guard import Guard

logger = logging.getLogger(__name__)

REPLICATE = b"REPLICATE"     # {"tasks": [record...]}          -> answer {"ids": [...]}
QUERY = b"QUERY"             # {"ids": [...]}                  -> answer {"states": {id: [state, ...]}}
SYNC = b"SYNC"               # {"cursor": n}                   -> answer {"tasks": [...], "stones": [...], "next"}
ANSWER = b"ANSWER"           # {"req", ...}
PEER_COMMANDS = frozenset({REPLICATE, QUERY, SYNC})
PEER_REPLIES = frozenset({ANSWER})
PEER_PROTOCOL = 1
"""The peer protocol version this node speaks (peer requests and streams)."""
WARN_EVERY = 60.0


class PeerRequests:
    """A :class:`~miyaq.cluster.transport.PeerLink` without its wire.

    Subclasses carry frames: :meth:`_send_request` sends a request's frames
    to a node, :meth:`_send_answer` an answer's frames back to whoever
    ``identity`` names; they hand what arrives to :meth:`_handle_request`
    (``[identity, *frames]``) and :meth:`_handle_answer`, call
    :meth:`_expire` now and then, and run :attr:`after_burst` after each
    burst. Every request is decoded and checked exactly as it would be off
    a socket (:func:`miyaq.protocol.codec.decode`, ``max_message``, the peer
    protocol version), and by ``guard`` when there is one (the key it came
    with must be a peer's)."""

    def __init__(self, supervisor: Supervisor, node_id: str, max_message: int, guard: Guard | None = None) -> None:
        self.guard = guard
        self.supervisor = supervisor
        self.node_id = node_id
        self.max_message = max_message
        self.handlers: dict[bytes, Handler] = {}
        self.after_burst: list[Callable[[], None]] = []
        self.pending: dict[int, tuple[float, Callback]] = {}
        self.outstanding: dict[str, int] = {}     # node id -> requests awaiting an answer
        self._on_lost: dict[int, Callable[[], None]] = {}   # req -> what to do if the connection closes
        self._asked: dict[int, str] = {}
        self._current: tuple[Any, Any] = (b"", None)
        self._req = itertools.count(1)
        self.errors: Counter[str] = Counter()
        self._warned: dict[tuple[str, str], float] = {}    # (peer, what) -> when last logged
        self._closed = False

    def unanswered(self) -> dict[str, int]:
        return dict(self.outstanding)

    # -- the wire (subclasses) ----------------------------------------------------------
    def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
        """Send a request's frames to ``node_id`` without blocking; False if it cannot go."""
        raise NotImplementedError

    def _send_answer(self, identity: Any, frames: list[bytes]) -> None:
        """Send an answer's frames to the asker ``identity``; a lost answer is silence."""
        raise NotImplementedError

    # -- sending ---------------------------------------------------------------------------
    def request(self, node_id: str, command: bytes, body: Body, timeout: float,
                callback: Callback, on_lost: Callable[[], None] | None = None) -> bool:
        """Send a request; ``callback(answer)`` or ``callback(None)`` on silence.
        ``on_lost``: called instead, at once, if the connection to the node
        closes before it answered (it may have read the request and exited:
        no answer will come); without it such a request waits its timeout."""
        req = next(self._req)
        body["req"] = req
        body["from"] = self.node_id
        body["proto"] = PEER_PROTOCOL
        if not self._send_request(node_id, codec.encode(command, body)):
            self.supervisor.spawn("peer callback", callback, None, policy=LOG)
            return False
        self.pending[req] = (monotonic() + timeout, callback)
        self.outstanding[node_id] = self.outstanding.get(node_id, 0) + 1
        self._asked[req] = node_id
        if on_lost is not None:
            self._on_lost[req] = on_lost
        return True

    def connection_lost(self, node_id: str) -> int:
        """The connection to ``node_id`` closed: the requests it has not
        answered that have an ``on_lost`` end now (the others keep waiting
        for their timeout: an answer may still come on a new connection).
        How many ended."""
        lost = [req for req, asked in self._asked.items() if asked == node_id and req in self._on_lost]
        for req in lost:
            on_lost = self._on_lost.pop(req)
            del self.pending[req]
            self._settle(req)
            try:
                on_lost()
            except Exception as exc:
                self.supervisor.report("peer callback", exc)
        return len(lost)

    # -- receiving ---------------------------------------------------------------------------
    def _handle_request(self, frames: list[bytes], user: str | None = None) -> None:
        if len(frames) < 2:
            return
        identity = frames[0]
        req: Any = None
        sender: Any = None
        try:
            if self.guard is not None:
                self.guard.peer(user)
            command, body = codec.decode(frames[1:], PEER_COMMANDS, self.max_message)
            req = body.get("req")
            sender = body.get("from")
            if not isinstance(sender, str):
                raise ProtocolError("peer request without 'from'")
            check_version(body.get("proto", 1), sender, self.node_id)
            self._current = (identity, req)
            answer = self.handlers[command](sender, body)
        except MiyaqError as err:
            self.errors[err.code] += 1
            if isinstance(err, BadVersion):
                who = sender if isinstance(sender, str) else repr(bytes(identity[:16]))
                self.warn(who, "refused", "refused a peer's request: %s", err.message)
            answer = err.to_wire()
        except Exception as exc:
            self.supervisor.report("peer handler", exc)
            self.errors["internal"] += 1
            answer = {"code": "internal", "message": "peer handler failed"}
        if answer is None:
            return
        self._answer(identity, req, answer)

    def _answer(self, identity: Any, req: Any, answer: dict[str, Any]) -> None:
        answer["req"] = req
        self._send_answer(identity, codec.encode(ANSWER, answer))

    def later(self) -> Reply:
        """Called by a handler that answers later (it then returns None): the
        function it gets sends the answer to the current request."""
        identity, req = self._current
        return lambda answer: self._answer(identity, req, answer)

    def _handle_answer(self, frames: list[bytes]) -> None:
        try:
            _, body = codec.decode(frames, PEER_REPLIES, self.max_message)
        except MiyaqError as err:
            self.errors[err.code] += 1
            return
        entry = self.pending.pop(body.get("req"), None)  # type: ignore[arg-type]
        if body.get("code") == BadVersion.code:
            req = body.get("req")
            peer = self._asked.get(req, "?") if isinstance(req, int) else "?"
            self.warn(peer, "refused-us", "peer %s refused our request: %s", peer, body.get("message"))
        self._settle(body.get("req"))
        if entry is not None:
            self._call(entry[1], None if "code" in body else body)

    def _expire(self, now: float) -> None:
        if not self.pending:
            return
        for req, (deadline, callback) in list(self.pending.items()):
            if deadline <= now:
                del self.pending[req]
                self._settle(req)
                self._call(callback, None)

    def _settle(self, req: Any) -> None:
        if not isinstance(req, int):
            return
        if self._on_lost:
            self._on_lost.pop(req, None)
        node_id = self._asked.pop(req, None)
        if node_id is not None:
            left = self.outstanding.get(node_id, 1) - 1
            if left > 0:
                self.outstanding[node_id] = left
            else:
                self.outstanding.pop(node_id, None)

    def _call(self, callback: Callback, answer: Body | None) -> None:
        try:
            callback(answer)
        except Exception as exc:
            self.supervisor.report("peer callback", exc)

    def warn(self, peer: str, what: str, fmt: str, *args: Any) -> None:
        """Log an error about ``peer`` at most once a minute per kind."""
        now = monotonic()
        key = (peer, what)
        if now - self._warned.get(key, -WARN_EVERY) >= WARN_EVERY:
            if len(self._warned) > 1000:
                self._warned.clear()
            self._warned[key] = now
            logger.error(fmt, *args)


class PeerEndpoint(PeerRequests):
    """The peer link over ZeroMQ: a ROUTER bound on ``bind`` (requests from
    the others) and one DEALER per other member (requests to them, and their
    answers), each read by one critical greenlet."""

    def __init__(self, sockets: SocketFactory, supervisor: Supervisor, node_id: str, bind: str,
                 guard: Guard | None = None) -> None:
        # A peer's body may exceed max_message by the fields a node adds to the
        # records it forwards (a client's largest task plus its holders...).
        super().__init__(supervisor, node_id, sockets.frame_limit, guard)
        self.sockets = sockets
        # With CURVE: other nodes only. Requests are read within FRAMES + 1 frames
        # ([identity, tag, command, body]) and the peer frame limit.
        self.router = sockets.hub_router(bind, audience="peer", users=guard is not None,
                                         max_frames=FRAMES + 1)
        self.dealers: dict[str, Any] = {}          # node id -> DEALER
        self.endpoints: dict[str, str] = {}
        # Each DEALER's disconnect monitor -> its node id; None once retired
        # (its DEALER's closing says nothing about the node's new link).
        self._monitors: dict[str, Any] = {}        # node id -> monitor
        self._watching: dict[Any, str | None] = {}
        self._retired: list[Any] = []
        self._poller = sockets.poller()

    def start(self) -> None:
        self.supervisor.spawn("peer requests", self.serve_requests, policy=CRITICAL)
        self.supervisor.spawn("peer answers", self.serve_answers, policy=CRITICAL)

    # -- membership ------------------------------------------------------------------
    def connect(self, members: dict[str, str], fresh: Collection[str] = ()) -> None:
        """Keep one DEALER per member id -> peer endpoint (others are closed).
        The nodes in ``fresh`` get a new DEALER even at the same endpoint: it
        connects at once, where the old one, which lost its connection when
        the node went down, retries on a backoff of up to
        ``PEER_RECONNECT_MS[1]`` -- and with IMMEDIATE, every request to the
        node fails until it does."""
        for node_id in list(self.dealers):
            if node_id not in members or members[node_id] != self.endpoints.get(node_id) or node_id in fresh:
                # The answer reader may be polling it: it closes retired sockets itself.
                self._retired.append(self.dealers.pop(node_id))
                self.endpoints.pop(node_id, None)
                monitor = self._monitors.pop(node_id)
                self._watching[monitor] = None
                self._retired.append(monitor)
        for node_id, endpoint in members.items():
            if node_id == self.node_id or node_id in self.dealers:
                continue
            # IMMEDIATE: never queue for a peer that is not there.
            sock = self.sockets.dealer(endpoint, immediate=True, reconnect_ms=PEER_RECONNECT_MS, bounded=True)
            self.dealers[node_id] = sock
            self.endpoints[node_id] = endpoint
            self._poller.register(sock, zmq.POLLIN)
            monitor = self.sockets.disconnect_monitor(sock)
            self._monitors[node_id] = monitor
            self._watching[monitor] = node_id
            self._poller.register(monitor, zmq.POLLIN)

    # -- the wire ----------------------------------------------------------------------------
    def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
        sock = self.dealers.get(node_id)
        if sock is None:
            return False
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _send_answer(self, identity: Any, frames: list[bytes]) -> None:
        try:
            self.router.send([identity, *frames])
        except (zmq.Again, zmq.ZMQError):
            pass   # the asker is gone; it will treat this as silence

    # -- receiving ---------------------------------------------------------------------------
    def serve_requests(self) -> None:
        """Read the ROUTER (requests from peers) and answer each."""
        while not self._closed:
            try:
                self._read_request(wait=True)
                for _ in range(256):
                    if not self._read_request(wait=False):
                        break
            except zmq.ZMQError:
                if self._closed:
                    return        # closed under the reader
                raise
            for hook in self.after_burst:
                hook()

    def _read_request(self, wait: bool) -> bool:
        """Handle the next request (waiting for one if ``wait``); False if none was there."""
        try:
            message = self.router.recv() if wait else self.router.recv_nowait()
        except MessageRefused as refused:
            err: MiyaqError
            if refused.reason == "frames":
                err = BadFrame(f"expected {FRAMES} frames [tag, command, body], got {refused.frames - 1}")
            else:
                err = TooLarge(f"message of {refused.size} bytes exceeds the limit of {self.max_message}")
            self.errors[err.code] += 1
            self._answer(refused.head, None, err.to_wire())
            return True
        if message is None:
            return False
        frames, user = message
        self._handle_request(frames, user)
        return True

    def serve_answers(self) -> None:
        """Read every DEALER; expire requests that got no answer."""
        while not self._closed:
            if self.dealers or self._retired:
                events = dict(self._poller.poll(100))
            else:
                events = {}
                green.sleep(0.1)
            for sock in list(events):
                if sock in self._watching:
                    self._watch(sock)
                    continue
                for _ in range(256):
                    try:
                        frames, _ = recv_bounded(sock, FRAMES, self.max_message, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except MessageRefused as refused:
                        self.errors["too_large" if refused.reason == "bytes" else "bad_frame"] += 1
                        continue    # dropped: its request ends in silence
                    except zmq.ZMQError:
                        break   # closed by connect() meanwhile
                    self._handle_answer(frames)
            while self._retired:
                sock = self._retired.pop()
                self._watching.pop(sock, None)
                self._poller.unregister(sock)
                sock.close(linger=0)
            self._expire(monotonic())
            for hook in self.after_burst:
                hook()

    def _watch(self, monitor: Any) -> None:
        """A DEALER's monitor has events: if its connection closed, end the
        requests to that node that say what to do then."""
        try:
            closed = disconnects(monitor)
        except zmq.ZMQError:
            return    # retired by connect() meanwhile
        node_id = self._watching.get(monitor)
        if closed and node_id is not None:
            ended = self.connection_lost(node_id)
            if ended:
                logger.info("the connection to peer %s closed with %d request(s) unanswered", node_id, ended)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for sock in list(self.dealers.values()) + list(self._monitors.values()) + self._retired:
                sock.close(linger=0)
            self.dealers.clear()
            self._monitors.clear()
            self._watching.clear()
            self._retired.clear()
            self.router.close(linger=0)
        except Exception:
            logger.exception("closing the peer sockets failed")


def check_version(proto: Any, sender: str, me: str) -> None:
    """Raise ``BadVersion`` unless ``proto`` is a peer protocol this node speaks."""
    if isinstance(proto, bool) or not isinstance(proto, int) or not 1 <= proto <= PEER_PROTOCOL:
        raise BadVersion(f"peer {sender} speaks peer protocol {proto!r}; node {me} speaks 1 to {PEER_PROTOCOL}: "
                         "upgrade every node to one version before using what the new one adds")
