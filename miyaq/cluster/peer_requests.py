"""Node-to-node requests without their wire: numbering, answers, deadlines.

:class:`PeerRequests` is the half of the peer link that knows no socket --
numbering requests, matching answers by ``req``, deadlines (monotonic),
handlers, the peer protocol version -- so the ZeroMQ link
(:class:`miyaq.cluster.peer.PeerEndpoint`) and the in-memory transport of
:mod:`miyaq.testing.memtransport` run the same code on the frames they
carry. A request that gets no answer by its deadline has its callback
called with ``None``: silence is an answer the replica logic relies on
("only silence lets it run"). A request may also say what a closed
connection means (``on_lost``): the link calls :meth:`connection_lost`
when it sees one. And it may take an answer that comes after its deadline
(``late``): a REPLICATE's answer lists what the receiver stored, which is
true whenever it arrives (:mod:`miyaq.cluster.late_answers`).

Frames are the service protocol's: ``[b"MQ1", COMMAND, msgpack map]``; every
request carries ``from`` (the sender's node id) and ``proto``, the peer
protocol version it is written in (absent means 1): the highest both nodes
speak, as the peer's answers said (``speaks``, in every answer:
:mod:`miyaq.cluster.peer_versions`). Every request and answer carries ``clock``,
the sender's wall clock as it sent it (:func:`clock_shift`: a receiver
moves a copy's times onto its own clock). A request in a version this
node does not speak is refused with ``bad_version`` and logged, never
guessed at; the sender logs the refusal (docs/cluster.md, "Versions").
Commands: docs/cluster.md.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from typing import Any, Callable

from miyaq.cluster.answer_times import AnswerTimes
from miyaq.cluster.deadlines import PastDeadline
from miyaq.cluster.late_answers import LateAnswers
from miyaq.cluster.peer_versions import PeerVersions, check_version
from miyaq.cluster.transport import Body, Callback, Handler, Reply
from miyaq.constants import LATE_ANSWER_WINDOW, MAX_LATE_ANSWERS
from miyaq.core import ignored
from miyaq.errors import BadVersion, Forbidden, MiyaqError, ProtocolError, TooManyValues
from miyaq.logs import LogLimiter, clipped
from miyaq.protocol import codec
from miyaq.runtime import LOG, Supervisor, monotonic, wall
from miyaq.security.guard import Guard

logger = logging.getLogger(__name__)

REPLICATE = b"REPLICATE"     # {"tasks": [record...]}          -> answer {"ids": [...]}
QUERY = b"QUERY"             # {"ids": [...]}                  -> answer {"states": {id: [state, ...]}}
SYNC = b"SYNC"               # {"cursor": n}                   -> answer {"tasks": [...], "stones": [...], "next"}
CANCEL = b"CANCEL"           # {"id": id}                      -> answer {"cancelled", "state", "held"?} or {"busy"}
ANSWER = b"ANSWER"           # {"req", ...}
PEER_COMMANDS = frozenset({REPLICATE, QUERY, SYNC, CANCEL})
PEER_REPLIES = frozenset({ANSWER})

BULK = "bulk"
"""The channel of copies and resyncs: every command not in :data:`CONTROL_COMMANDS`."""
CONTROL = "control"
"""The channel of small requests that must not wait behind copies (:mod:`miyaq.cluster.peer_channels`)."""
CONTROL_COMMANDS = frozenset({QUERY, CANCEL})
"""The commands a link sends on its control channel (:meth:`PeerRequests._send_control`):
a standby copy's QUERY waited behind megabytes of REPLICATE copies on a
narrow link and its answer came after the asker's patience; a CANCEL
forwarded to a task's first holder (:mod:`miyaq.cluster.first_holder_cancel`)
is as small and as waited for."""
WARN_EVERY = 60.0


class PeerRequests:
    """A :class:`~miyaq.cluster.transport.PeerLink` without its wire.

    Subclasses carry frames: :meth:`_send_request` sends a request's frames
    to a node, :meth:`_send_answer` an answer's frames back to whoever
    ``identity`` names; they hand what arrives to :meth:`_handle_request`
    (``[identity, *frames]``) and :meth:`_handle_answer`, call
    :meth:`_expire` now and then, and run :attr:`after_burst` after each
    burst. A link with a channel of its own for :data:`CONTROL_COMMANDS`
    (the ZeroMQ link) sends them with :meth:`_send_control`; by default
    they go as every other request. Every request is decoded and checked
    exactly as it would be off a socket
    (:func:`miyaq.protocol.codec.decode`, ``max_message``, the peer
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
        # req -> (its channel, what to do if that channel's connection closes)
        self._on_lost: dict[int, tuple[str, Callable[[], None]]] = {}
        self._late = LateAnswers(LATE_ANSWER_WINDOW, MAX_LATE_ANSWERS)
        # No request expires before this (monotonic; inf: none pending): the
        # answer reader waits until then at most (next_expiry).
        self._next_expiry = math.inf
        self._asked: dict[int, str] = {}
        self.answer_times = AnswerTimes()     # how long each peer lately took to answer (a QUERY's patience)
        self.versions = PeerVersions()      # the peer protocol each peer speaks, by its answers
        self._current: tuple[Any, Any] = (b"", None)
        self._req = itertools.count(1)
        self._last_req = 0          # the number of the last request sent (forget_version)
        self.errors: Counter[str] = Counter()
        self.sends_refused = 0     # requests whose send the link refused (never sent)
        self.ignored = ignored.IgnoredConnections()     # sent a body no node sends: dropped unread
        # Members a link could not be made to now (no file descriptor left):
        # the role calls ``connect`` again until it can (ClusterRole._ticker).
        self.unlinked: set[str] = set()
        self._warned: dict[tuple[str, str], float] = {}    # (peer, what) -> when last logged
        self._refusals = LogLimiter(logger)     # requests refused at the edge: five lines a minute a code
        # Answers that came after their request had ended in silence (none took
        # them late), per peer; logged five lines a minute.
        self.past_deadline = PastDeadline(logger)
        self.answers_past_deadline = self.past_deadline.counts
        self._closed = False

    def source_address(self) -> object:
        """Where the request being handled came from, for a line about a
        refused one: an object whose ``str`` is its IP address, read when
        the line is written (:class:`~miyaq.runtime.messages.SenderAddress`).
        A transport that cannot tell says so."""
        return "an address this transport does not give"

    def refused(self, err: MiyaqError, sender: Any) -> None:
        """Log a request refused at the edge (not a peer protocol's, or a
        key that is not a peer's), naming the connection's address and the
        node id it claimed: five lines a minute for each code, the rest
        counted with the next (all of them in STATUS ``peer`` errors);
        another protocol version at ERROR, the rest at WARNING. Before
        2026-12-06 only another protocol version was logged (once a minute
        per node id claimed, which a stranger chooses); the rest were
        counted only."""
        claimed = f"node {clipped(sender, 64)}" if isinstance(sender, str) else "no node id"
        level = logging.ERROR if isinstance(err, BadVersion) else logging.WARNING   # an upgrade gone wrong
        self._refusals.log(level, f"refused {err.code}", "refused a peer's request from %s (%s; %d so far, code %s): "
                           "%s", self.source_address(), claimed, self.errors[err.code], err.code,
                           clipped(err.message, 500))

    def unanswered(self) -> dict[str, int]:
        return dict(self.outstanding)

    # -- the wire (subclasses) ----------------------------------------------------------
    def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
        """Send a request's frames to ``node_id`` without blocking; False if it cannot go."""
        raise NotImplementedError

    def _send_control(self, node_id: str, frames: list[bytes]) -> bool:
        """Send a request of :data:`CONTROL_COMMANDS` to ``node_id`` without
        blocking, on the link's control channel; False if it cannot go.
        Here, as any other request (:meth:`_send_request`)."""
        return self._send_request(node_id, frames)

    def _send_answer(self, identity: Any, frames: list[bytes]) -> None:
        """Send an answer's frames to the asker ``identity``; a lost answer is silence."""
        raise NotImplementedError

    # -- sending ---------------------------------------------------------------------------
    def request(self, node_id: str, command: bytes, body: Body, timeout: float,
                callback: Callback, on_lost: Callable[[], None] | None = None,
                late: Callback | None = None, refused: Callable[[], None] | None = None) -> bool:
        """Send a request; ``callback(answer)`` or ``callback(None)`` on silence.
        ``on_lost``: called instead, at once, if the connection to the node
        closes before it answered (it may have read the request and exited:
        no answer will come); without it such a request waits its timeout.
        ``late``: called with an answer (not an error) that comes after
        ``callback(None)`` was called for silence, up to
        ``LATE_ANSWER_WINDOW`` after the deadline (never after ``on_lost``).
        The channel is chosen here, by ``command``: :data:`CONTROL_COMMANDS`
        go with :meth:`_send_control`, the others with :meth:`_send_request`;
        ``on_lost`` is about the connection of that channel.
        A request whose send is refused (the link to the node cannot take it
        now: not made yet, a handshake not done, or gone) returns False and
        calls ``callback(None)`` soon, in a greenlet of its own -- or
        ``refused()`` instead if given: the node was never asked, and a
        caller to whom silence means something (a standby copy's QUERY) may
        ask again. Counted in :attr:`sends_refused` either way."""
        req = self._last_req = next(self._req)
        body["req"] = req
        body["from"] = self.node_id
        body["proto"] = self.versions.version_for(node_id)
        body["clock"] = wall()
        control = command in CONTROL_COMMANDS
        send = self._send_control if control else self._send_request
        if not send(node_id, codec.encode(command, body)):
            self.sends_refused += 1
            if refused is not None:
                self.supervisor.spawn("peer refused", refused, policy=LOG)
            else:
                self.supervisor.spawn("peer callback", callback, None, policy=LOG)
            return False
        now = monotonic()
        deadline = now + timeout
        self.pending[req] = (deadline, callback)
        if deadline < self._next_expiry:
            self._next_expiry = deadline
            self._expiry_moved()
        self.answer_times.sent(req, node_id, now)
        self.outstanding[node_id] = self.outstanding.get(node_id, 0) + 1
        self._asked[req] = node_id
        if on_lost is not None:
            self._on_lost[req] = (CONTROL if control else BULK, on_lost)
        if late is not None:
            self._late.expect(req, late)
        return True

    def forget_version(self, node_id: str) -> None:
        """What ``node_id`` speaks is no longer known (its connection closed,
        or its link was made anew): written to in version 1 until it answers
        a request sent from now on (:meth:`PeerVersions.forget`)."""
        self.versions.forget(node_id, self._last_req)

    def connection_lost(self, node_id: str, channel: str | None = None) -> int:
        """The connection to ``node_id`` of ``channel`` (:data:`BULK` or
        :data:`CONTROL`; None: every channel) closed: the requests sent on
        it that it has not answered and that have an ``on_lost`` end now --
        their answer could only have come back on it (the others keep
        waiting for their timeout: an answer may still come on a new
        connection). How many ended. Any other ``channel`` raises ValueError."""
        if channel is not None and channel not in (BULK, CONTROL):
            raise ValueError(f"no peer channel {channel!r} (one of {BULK!r}, {CONTROL!r})")
        self.forget_version(node_id)        # it may come back as another build
        lost = [req for req, asked in self._asked.items() if asked == node_id and req in self._on_lost
                and (channel is None or self._on_lost[req][0] == channel)]
        for req in lost:
            _, on_lost = self._on_lost.pop(req)
            del self.pending[req]
            self._late.settled(req)
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
        if identity in self.ignored.ids:
            self.errors["ignored"] += 1
            return
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
            check_version(body.get("proto", 1), sender, self.node_id, self.versions.speaks)
            self._current = (identity, req)
            answer = self.handlers[command](sender, body)
        except MiyaqError as err:
            self.errors[err.code] += 1
            if isinstance(err, TooManyValues):
                self.ignored.ignore(identity, "peer", err.message)
                err.message += ignored.WHY
            if isinstance(err, (ProtocolError, Forbidden)):
                self.refused(err, sender)
            answer = err.to_wire()
        except Exception as exc:
            self.supervisor.report("peer handler", exc)
            self.errors["internal"] += 1
            answer = {"code": "internal", "message": "peer handler failed"}
        if answer is None:
            return
        try:
            self._answer(identity, req, answer)
        except Exception as exc:     # a bug in answering must not end the reader: the asker hears silence
            self.supervisor.report("peer answer", exc)
            self.errors["internal"] += 1

    def _answer(self, identity: Any, req: Any, answer: dict[str, Any]) -> None:
        answer["req"] = req
        answer["clock"] = wall()
        answer["speaks"] = self.versions.speaks     # the asker may write to this node in it (peer_versions)
        self._send_answer(identity, self._answer_frames(identity, req, answer))

    def _answer_frames(self, identity: Any, req: Any, answer: dict[str, Any]) -> list[bytes]:
        """The frames of ``answer`` (its ``req`` and ``clock`` in it); a link
        may send other frames instead (the ZeroMQ link: ``busy``)."""
        return codec.encode(ANSWER, answer)

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
        req = body.get("req")
        took = self.answer_times.answered(req, monotonic())      # in time or late: how slow this peer is now
        entry = self.pending.pop(req, None)  # type: ignore[arg-type]
        asked = self._asked.get(req) if isinstance(req, int) else None
        if asked is not None:
            self.versions.heard(asked, body.get("speaks"), req)    # req: an int (asked)
        if body.get("code") == BadVersion.code:
            peer = asked or "?"
            self.warn(peer, "refused-us", "peer %s refused our request: %s", peer, body.get("message"))
        self._settle(req)
        if entry is not None:
            self._late.settled(req)  # type: ignore[arg-type]
            self._call(entry[1], None if "code" in body else body)
        else:
            late = self._late.take(req)
            if late is not None and "code" not in body:
                self._call(late, body)
            elif late is None and took is not None:
                self.past_deadline.note(*took)

    def next_expiry(self) -> float:
        """When :meth:`_expire` has something to do next (``monotonic``; inf:
        nothing pending, no late answer awaited): a request's deadline, or a
        late answer's window ending. Never later than that; it may be sooner
        (a request answered since), and then :meth:`_expire` finds nothing."""
        return self._next_expiry

    def _expiry_moved(self) -> None:
        """A request was sent with a deadline before :meth:`next_expiry` was:
        a reader waiting until then must wait less (the ZeroMQ link wakes
        its answer reader)."""

    def _expire(self, now: float) -> None:
        """Call back with silence every request whose deadline came, and
        forget the late answers awaited past their window. Nothing to look
        at before :meth:`next_expiry` (no deadline is sooner): the pending
        requests are walked only then, not at every answer."""
        if now < self._next_expiry:
            return
        if self._late:
            self._late.forget(now)
        self._next_expiry = math.inf       # lowered by a request the callbacks below send
        nearest = math.inf
        for req, (deadline, callback) in list(self.pending.items()):
            if deadline > now:
                nearest = min(nearest, deadline)
            else:
                del self.pending[req]
                self._settle(req)
                self._late.expired(req, now)
                self._call(callback, None)
        nearest = min(nearest, self._late.next_end())
        self._next_expiry = min(self._next_expiry, nearest)

    def awaiting_late(self) -> int:
        """Requests past their deadline whose late answer is still taken."""
        return len(self._late)

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
