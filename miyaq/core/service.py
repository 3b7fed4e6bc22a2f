"""The service ROUTER: the one socket producers, workers and pull consumers
talk to.

One greenlet reads it. It reads a burst of messages without blocking,
handles each, then flushes what the burst produced (batched SUBMITTED
replies) and runs the dispatcher once, so per-message work stays small and
replies leave in batches under load; a lone message is answered in the same
pass. A connection's first SUBMIT of a burst is acknowledged before the
reader reads on once the burst has done ``EARLY_ACK_WORK`` tasks, its later
ones at the burst's end (:meth:`ServiceEndpoint.ack_early`): a quiet
producer read early in a burst of another's batches does not wait for the
rest of them, and a connection gets at most two SUBMITTED a burst. At the
same moment the tasks of such a SUBMIT that is small (a ``call()``) are
leased to an idle consumer (:attr:`ServiceEndpoint.dispatch_early`: the
dispatcher's ``dispatch_lone``), not at the burst's end. A bad
message gets an ERROR reply with a code, is counted, and changes nothing.
The socket is a :class:`~miyaq.runtime.messages.HubSocket`: it waits on the
hub only when nothing can be read, and sends never block.

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
from collections import Counter
from typing import Any, Callable

from miyaq.constants import (
    SERVICE_BURST, SERVICE_BURST_WORK, SERVICE_HEARTBEAT_IVL_MS, SERVICE_HEARTBEAT_TIMEOUT_MS,
)
from miyaq.core import ignored
from miyaq.core.unread import UnreadAnswers, wire_bytes
from miyaq.errors import BadFrame, Forbidden, MiyaqError, ProtocolError, Timeout, TooLarge, TooManyValues
from miyaq.logs import LogLimiter
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import green, wall
from miyaq.runtime.messages import MessageRefused
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.security.guard import Guard
from miyaq.security.keystore import Identity

logger = logging.getLogger(__name__)

EARLY_ACK_WORK = 64
"""Tasks of work a burst has done before it answers the first SUBMIT of
each connection early (:meth:`ServiceEndpoint.send_early`) and leases the
lone tasks handled so far (:attr:`ServiceEndpoint.dispatch_early`); a
burst that stays lighter answers and dispatches at its end."""

Handler = Callable[[bytes, dict[str, Any], float], None]

#: Commands answered to their sender (REPLY, ERROR or SUBMITTED): from the
#: first one on, a connection is followed, and these are refused ``busy``
#: while it was sent its unread budget and has not taken it
#: (:mod:`miyaq.core.unread`). A TOUCH with ``req`` (a pull consumer's) is
#: answered too, and followed the same way.
ANSWERED = c.REQUESTS | {c.SUBMIT}

#: What :meth:`ServiceEndpoint.reachable` sends: a REPLY without ``req``
#: (docs/protocol.md: clients ignore it).
PROBE = codec.pack({"probe": True})


class ServiceEndpoint:
    def __init__(self, sockets: SocketFactory, bind: str, guard: Guard | None = None) -> None:
        # A frame over the limit is dropped by libzmq (and the peer
        # disconnected) before it is read; a message over it gets TOO_LARGE.
        self.sock = sockets.hub_router(bind, users=guard is not None,
                                       heartbeat_ms=(SERVICE_HEARTBEAT_IVL_MS, SERVICE_HEARTBEAT_TIMEOUT_MS),
                                       max_frames=c.FRAMES + 1, sources=True)
        self.max_message = sockets.max_message
        self.message_limit = sockets.frame_limit
        self.handlers: dict[bytes, Handler] = {}
        self.guard = guard
        self.caller: Identity | None = None   # the key behind the message being handled (None: no keys)
        self.after_burst: list[Callable[[float], None]] = []
        # Run with the early answers, before the burst reads on (the
        # dispatcher's dispatch_lone: the lone tasks handled so far).
        self.dispatch_early: Callable[[float], object] = _nothing_early
        self.errors: Counter[str] = Counter()
        self._refusals = LogLimiter(logger)   # requests refused for their key's role: a few lines a minute
        self.ignored = ignored.IgnoredConnections()     # sent a body no client sends: dropped unread
        self.messages = 0
        self.work = 0        # tasks handled in the current burst (handlers add to it)
        self._acks: dict[bytes, list[list[Any]]] = {}
        self._acked_early: set[bytes] = set()   # connections whose first SUBMIT of this burst was answered
        self._early: list[bytes] = []           # of those, the ones whose answer is still to send
        self.unread = UnreadAnswers()    # answers a connection has not read: bounded
        self._curve = sockets.security is not None     # what a message takes on the wire (unread counts it)
        # With a durable log, acknowledgements wait until the log has the
        # tasks: the gate calls its argument once they are written. So do the
        # answers to requests that change stored state (reply_stored,
        # wait_stored); log_admit refuses such a request while the log cannot
        # be written (Persistence.admit: Busy "storage").
        self.ack_gate: Callable[[Callable[[], None]], None] | None = None
        self.log_admit: Callable[[], None] | None = None
        self._closed = False

    def caller_name(self) -> str | None:
        """The name of the key behind the message being handled (None without keys)."""
        caller = self.caller
        return caller.name if caller is not None else None

    def bind(self, endpoint: str) -> None:
        """Also serve on ``endpoint`` (a unix socket): same socket, same handlers, same keys."""
        self.sock.bind(endpoint)

    # -- sending -------------------------------------------------------------
    def send(self, identity: bytes, command: bytes, body: dict[str, Any]) -> bool:
        """Send without blocking; False if the peer is gone or full. Counted
        against the connection's unread budget if it is followed
        (:mod:`miyaq.core.unread`: a DISPATCH to a pull consumer too), never held back."""
        packed = codec.pack(body)
        if self._send(identity, command, packed):
            self.unread.sent(identity, wire_bytes(command, len(packed), self._curve))
            return True
        return False

    def _send(self, identity: bytes, command: bytes, packed: bytes) -> bool:
        try:
            self.sock.send([identity, c.TAG, command, packed])
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.ENOTSOCK):
                return False
            raise

    def reachable(self, identity: bytes) -> bool:
        """Is this connection still there? Sends it a probe (ROUTER_MANDATORY:
        a connection that went away fails the send). A full one is there."""
        try:
            self.sock.send([identity, c.TAG, c.REPLY, PROBE])
        except zmq.Again:
            return True
        except zmq.ZMQError as exc:
            return exc.errno != zmq.EHOSTUNREACH
        return True

    def reply(self, identity: bytes, req: Any, body: dict[str, Any]) -> bool:
        """Answer a request; False if it could not be sent. The answer counts
        against the connection's unread budget (:mod:`miyaq.core.unread`); a
        large one to a connection over it is not sent: the request is
        answered ``busy`` instead."""
        body["req"] = req
        return self.reply_packed(identity, req, codec.pack(body))

    def reply_packed(self, identity: bytes, req: Any, packed: bytes) -> bool:
        """:meth:`reply` with its body packed already (``req`` in it: a view
        packed a slice at a time, :mod:`miyaq.core.view_rows`)."""
        size = wire_bytes(c.REPLY, len(packed), self._curve)
        if not self.unread.may_send(identity, size):
            self.error(identity, self.unread.refusal(identity), req)
            return False
        if self._send(identity, c.REPLY, packed):
            return True
        self.unread.sent(identity, -size)      # not sent: not counted
        return False

    def error(self, identity: bytes, err: MiyaqError, req: Any = None) -> None:
        """Answer ERROR (counted by code in STATUS ``errors``, sent or not):
        not sent to a connection past its unread budget and the refusals
        it may have on top (:mod:`miyaq.core.unread`)."""
        self.errors[err.code] += 1
        body = err.to_wire()
        if req is not None:
            body["req"] = req
        packed = codec.pack(body)
        size = wire_bytes(c.ERROR, len(packed), self._curve)
        if self.unread.may_send_error(identity, size) and not self._send(identity, c.ERROR, packed):
            self.unread.sent(identity, -size)      # not sent: not counted

    def ack(self, identity: Any, result: list[Any]) -> None:
        """Queue one submit result; sent with the others at the end of the
        burst. ``identity`` is a routing id, or a callable (an in-process
        submitter such as the HTTP gateway) that receives the result list.
        A result ``rejected`` to a ZeroMQ submitter is counted by its code in
        ``errors`` (STATUS ``errors``, ``miyaq_protocol_errors_total``):
        invalid tasks and tasks the node would not take (``busy``,
        ``shutting_down``, ``not_enough_replicas`` ...); an in-process
        submitter's (the HTTP gateway counts its own answers) is not."""
        if result[1] == c.REJECTED and not callable(identity):
            detail = result[2] if len(result) > 2 else None
            code = detail.get("code") if isinstance(detail, dict) else None
            self.errors[code if isinstance(code, str) else "rejected"] += 1
        acks = self._acks.get(identity)
        if acks is None:
            acks = self._acks[identity] = []
        acks.append(result)

    def flush_acks(self) -> None:
        """Send (through the log's gate, with a data dir) every result
        :meth:`ack` queued; the burst is over."""
        self._acked_early.clear()
        self._early.clear()
        if not self._acks:
            return
        acks, self._acks = self._acks, {}
        self._send_acks(acks)

    def first_submit(self, identity: bytes) -> bool:
        """Is the SUBMIT being handled ``identity``'s first of this burst?"""
        return identity not in self._acked_early

    def ack_early(self, identity: bytes) -> None:
        """Mark ``identity``'s SUBMIT just handled to be answered before the
        burst reads on, if it is the connection's first SUBMIT of this
        burst (:meth:`send_early`): the rest of the burst -- other
        connections' batches, up to ``SERVICE_BURST_WORK`` tasks -- is not
        work this one's answer needs to wait for. Its later SUBMITs of the
        burst are answered at the burst's end, so a connection that sends
        many gets at most two SUBMITTED a burst instead of one. (In a
        cluster a task's acknowledgement waits for its replicas and is not
        queued yet: nothing is sent then.)"""
        if identity not in self._acked_early:
            self._acked_early.add(identity)
            self._early.append(identity)

    def send_early(self) -> None:
        """Send the answers :meth:`ack_early` marked: the reader calls it
        before it handles another message of a burst that has done
        ``EARLY_ACK_WORK`` tasks of work already. A burst lighter than that
        (a lone SUBMIT, the next one and a worker's DONE: one task at a
        time) answers at its end, as before: answering the first SUBMIT
        before reading on cost a confirmed submit 9-20% more node CPU
        and about as much of its rate (a node wake-up more every six tasks),
        measured in turns, both orders."""
        for identity in self._early:
            acks = self._acks.pop(identity, None)
            if acks:
                self._send_acks({identity: acks})
        self._early.clear()

    def _send_acks(self, acks: dict[Any, list[list[Any]]]) -> None:
        if self.ack_gate is None:
            self._release(acks)
            return
        # A refusal promises nothing, so it never waits for the log: a node
        # whose disk is full still answers "busy" at once.
        refused = {i: [r for r in rs if r[1] == c.REJECTED] for i, rs in acks.items()}
        self._release({i: rs for i, rs in refused.items() if rs})
        stored = {i: [r for r in rs if r[1] != c.REJECTED] for i, rs in acks.items()}
        stored = {i: rs for i, rs in stored.items() if rs}
        if stored:
            self.ack_gate(lambda: self._release(stored))

    # -- answers that promise a stored change ---------------------------------------------
    def check_writable(self) -> None:
        """Refuse a request that would change stored state (a CANCEL, ACK,
        NACK or DEAD retry or purge of a task held here) while the log
        cannot be written, before it changes anything: :class:`~miyaq.errors.Busy`
        ``reason="storage"`` (retryable), as a submit is refused then
        (:class:`~miyaq.errors.ShuttingDown` once the log closed). Nothing
        to check without a data dir."""
        if self.log_admit is not None:
            self.log_admit()

    def after_stored(self, release: Callable[[], None]) -> None:
        """Run ``release`` once every record buffered so far is in the log
        as the fsync mode promises (the gate of SUBMITTED: the writer runs
        one batch of releases per write, no fsync of their own); at once
        without a data dir. Never blocks."""
        if self.ack_gate is None:
            release()
        else:
            self.ack_gate(release)

    def reply_stored(self, identity: bytes, req: Any, body: dict[str, Any], changed: bool) -> None:
        """Answer a request whose answer promises a change of stored state
        (``cancelled: true``, ``ok: true``, dead tasks retried or purged)
        only once the log has the records it wrote (:meth:`after_stored`),
        so a kill -9 cannot undo what was answered. An answer that promises
        no change (``changed`` False) goes at once. A held answer is dropped,
        as a SUBMITTED is, if the writer holds too many (a long disk fault)."""
        if not changed:
            self.reply(identity, req, body)
            return

        def release() -> None:
            self.reply(identity, req, body)

        self.after_stored(release)

    def wait_stored(self, timeout: float, what: str) -> None:
        """Block the calling greenlet -- an HTTP request's, never the reader's --
        until the log has every record buffered so far (:meth:`after_stored`);
        :class:`~miyaq.errors.Timeout` after ``timeout`` seconds (a slow or
        failing disk), naming ``what`` was done: it is made in memory, and
        on disk once the log is written again."""
        if self.ack_gate is None:
            return
        written = green.Event()
        self.ack_gate(written.set)
        if not written.wait(timeout):
            raise Timeout(f"{what}, but the node's log did not take it within {timeout:g}s (a slow or failing "
                          "disk): a restart before the log is written again may undo it")

    def _release(self, acks: dict[Any, list[list[Any]]]) -> None:
        for identity, results in acks.items():
            if callable(identity):
                try:
                    identity(results)
                except Exception:
                    logger.exception("in-process submit callback failed")
            else:
                self.send(identity, c.SUBMITTED, {"results": results})

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
