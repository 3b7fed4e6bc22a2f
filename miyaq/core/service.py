"""The service ROUTER: the one socket producers, workers and pull consumers
talk to.

One greenlet reads it. It reads a burst of messages without blocking,
handles each, then flushes what the burst produced (batched SUBMITTED
replies) and runs the dispatcher once, so per-message work stays small and
replies leave in batches under load; a lone message is answered in the same
pass. A connection's first SUBMIT of a burst is acknowledged before the
reader reads on once the burst has done ``EARLY_ACK_WORK`` tasks, its later
ones at the burst's end
(:meth:`~miyaq.core.service_answers.ServiceAnswers.ack_early`): a quiet
producer read early in a burst of another's batches does not wait for the
rest of them, and a connection gets at most two SUBMITTED a burst. At the
same moment the tasks of such a SUBMIT that is small (a ``call()``) are
leased to an idle consumer (:attr:`ServiceEndpoint.dispatch_early`: the
dispatcher's ``dispatch_lone``), not at the burst's end. A bad
message gets an ERROR reply with a code, is counted, and changes nothing.
The socket is a :class:`~miyaq.runtime.hub_socket.HubSocket`: it waits on the
hub only when nothing can be read, and sends never block. What is sent
back, the SUBMITTED batches and the answers that wait for the log:
:mod:`miyaq.core.service_answers`.

With keys (a :class:`~miyaq.security.guard.Guard`), every message's User-Id
is looked up and its role checked before any handler runs (``forbidden``
otherwise); handlers read who sent the message being handled in
:attr:`ServiceEndpoint.caller`. Without keys ``caller`` is None and nothing
is checked: the reader takes the plain path, as fast as before.

Messages are read with :func:`~miyaq.runtime.messages.recv_bounded`: a
message with more frames than the protocol's (routing id + 3) or more bytes
than ``max_message`` plus the frames' slack is drained without being kept and
answered BAD_FRAME or TOO_LARGE.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from miyaq.constants import (
    SERVICE_BURST, SERVICE_BURST_WORK, SERVICE_HEARTBEAT_TIMEOUT,
)
from miyaq.core import ignored
from miyaq.core.service_answers import ServiceAnswers
from miyaq.errors import BadFrame, Forbidden, MiyaqError, ProtocolError, TooLarge, TooManyValues
from miyaq.logs import LogLimiter
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import wall
from miyaq.runtime.messages import MessageRefused
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.security.guard import Guard
from miyaq.security.keystore import Identity

logger = logging.getLogger(__name__)

EARLY_ACK_WORK = 64
"""Tasks of work a burst has done before it answers the first SUBMIT of
each connection early
(:meth:`~miyaq.core.service_answers.ServiceAnswers.send_early`) and leases
the lone tasks handled so far (:attr:`ServiceEndpoint.dispatch_early`); a
burst that stays lighter answers and dispatches at its end."""

Handler = Callable[[bytes, dict[str, Any], float], None]

#: Commands answered to their sender (REPLY, ERROR or SUBMITTED): from the
#: first one on, a connection is followed, and these are refused ``busy``
#: while it was sent its unread budget and has not taken it
#: (:mod:`miyaq.core.unread`). A TOUCH with ``req`` (a pull consumer's) is
#: answered too, and followed the same way.
ANSWERED = c.REQUESTS | {c.SUBMIT}


class ServiceEndpoint(ServiceAnswers):
    """The service socket bound at ``bind`` and its reader; what it sends
    back is :class:`~miyaq.core.service_answers.ServiceAnswers`'s."""

    def __init__(self, sockets: SocketFactory, bind: str, guard: Guard | None = None,
                 heartbeat_timeout: float = SERVICE_HEARTBEAT_TIMEOUT) -> None:
        # A frame over the limit is dropped by libzmq (and the peer
        # disconnected) before it is read; a message over it gets TOO_LARGE.
        # ZMTP heartbeats: a PING every third of ``heartbeat_timeout`` (the
        # node's service_heartbeat_timeout), a connection that sends no whole
        # message for the timeout after one is dropped.
        heartbeat_ms = (round(heartbeat_timeout * 1000 / 3), round(heartbeat_timeout * 1000))
        super().__init__(sockets.hub_router(bind, users=guard is not None, heartbeat_ms=heartbeat_ms,
                                            max_frames=c.FRAMES + 1, sources=True),
                         sockets.security is not None)
        self.max_message = sockets.max_message
        self.message_limit = sockets.frame_limit
        self.handlers: dict[bytes, Handler] = {}
        self.guard = guard
        self.caller: Identity | None = None   # the key behind the message being handled (None: no keys)
        self.after_burst: list[Callable[[float], None]] = []
        # Run with the early answers, before the burst reads on (the
        # dispatcher's dispatch_lone: the lone tasks handled so far).
        self.dispatch_early: Callable[[float], object] = _nothing_early
        self._refusals = LogLimiter(logger)   # requests refused for their key's role: a few lines a minute
        self.ignored = ignored.IgnoredConnections()     # sent a body no client sends: dropped unread
        self.messages = 0
        self.work = 0        # tasks handled in the current burst (handlers add to it)
        self._closed = False

    def caller_name(self) -> str | None:
        """The name of the key behind the message being handled (None without keys)."""
        caller = self.caller
        return caller.name if caller is not None else None

    def bind(self, endpoint: str) -> None:
        """Also serve on ``endpoint`` (a unix socket): same socket, same handlers, same keys."""
        self.sock.bind(endpoint)

    # -- receiving -----------------------------------------------------------
    def handle(self, frames: list[bytes], now: float, user: str | None = None) -> None:
        """One message (``user``: its connection's User-Id, with keys)."""
        self.messages += 1
        if len(frames) < 2:
            self.errors["bad_frame"] += 1
            return  # no routing id: nothing to answer
        identity = frames[0]
        if identity in self.ignored.ids:
            self.errors["ignored"] += 1
            return
        try:
            command, body = codec.decode(frames[1:], c.NODE_COMMANDS, self.max_message)
        except ProtocolError as err:
            if isinstance(err, TooManyValues):
                self.ignored.ignore(identity, "service", err.message)
                err.message += ignored.WHY
            # A client of another protocol version, or one that is not a miyaq
            # client (a REQ socket, another encoding): say so where the
            # operator looks -- its own error reply may never be read.
            self._refused_unread(err, identity)
            self.error(identity, err)
            return
        req = body.get("req")
        if command in ANSWERED or (command == c.TOUCH and req is not None):
            source = self.sock.source
            if not self.unread.asked(identity, source.fd if source is not None else -1):
                self.error(identity, self.unread.refusal(identity), req)    # not read what it was sent
                return
        try:
            if self.guard is not None:
                self.caller = self.guard.service(user, command)
            self.handlers[command](identity, body, now)
        except MiyaqError as err:
            if isinstance(err, Forbidden):
                # A key of the wrong role (a worker given a producer's key) is
                # refused every message and may never show it to anyone: the
                # node says so too, at a bounded rate.
                self._refusals.warning("forbidden", "refused a request from %s: %s", self.sock.sender_address(),
                                       err.message)
            self.error(identity, err, req)
        except Exception:  # a bug must not take the node down; it is logged and answered
            logger.exception("handler for %s failed", command)
            self.error(identity, MiyaqError("internal error while handling the request"), req)
        if command == c.SUBMIT:
            self.ack_early(identity)

    def refuse(self, refused: MessageRefused) -> None:
        """Answer a message the reader drained without keeping (too many frames or bytes)."""
        self.messages += 1
        err: MiyaqError
        if refused.reason == "frames":
            err = BadFrame(f"expected {c.FRAMES} frames [tag, command, body], got {refused.frames - 1}")
        else:
            err = TooLarge(f"message of {refused.size} bytes exceeds the limit of {self.message_limit}")
        self._refused_unread(err, refused.head)
        self.error(refused.head, err)

    def _refused_unread(self, err: ProtocolError, identity: Any) -> None:
        """Log a message refused before it was read: a WARNING, at most
        five a minute for each code, the rest counted and told with the
        next (and all of them in STATUS ``errors``); DEBUG for those held
        back. Before 2026-12-06 only ``bad_version`` was logged, on the first
        and every thousandth; that bound grew with the sender's rate. The
        line names the sender's IP address (the message's own metadata, read
        only for a line written: :meth:`HubSocket.sender_address`); before
        2026-12-06, later, it did not, and the operator could not tell
        which machine sent it."""
        if not self._refusals.warning(f"refused {err.code}", "refused a client's message from %s (%d so far, "
                                      "code %s): %s", self.sock.sender_address(), self.errors[err.code] + 1,
                                      err.code, err.message):
            logger.debug("refused a message from %r: %s", identity, err.message)

    def serve(self) -> None:
        """The reader loop; returns when the socket is closed."""
        sock = self.sock
        while not self._closed:
            try:
                try:
                    frames, user = sock.recv()
                except MessageRefused as refused:
                    self.refuse(refused)
                    continue
                now = wall()
                self.work = 0
                self.handle(frames, now, user)
                for _ in range(SERVICE_BURST):
                    if self.work >= SERVICE_BURST_WORK or sock.turn_over():
                        break
                    try:
                        more = sock.recv_nowait()
                    except MessageRefused as refused:
                        self.refuse(refused)
                        continue
                    if more is None:
                        break
                    if self._early and self.work >= EARLY_ACK_WORK:
                        self.send_early()
                        self.dispatch_early(now)
                    self.handle(more[0], now, more[1])
            except zmq.ZMQError:
                if self._closed:
                    return
                raise
            self.flush_acks()
            for hook in self.after_burst:
                hook(now)

    def close(self) -> None:
        self._closed = True
        self.sock.close(linger=0)


def _nothing_early(now: float) -> None:
    """No dispatcher (an endpoint in a unit test): nothing to lease early."""
