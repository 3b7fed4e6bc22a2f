"""What the service socket sends back, and when: the answers of
:class:`~miyaq.core.service.ServiceEndpoint` (which inherits them).

Every answer counts against its connection's unread budget
(:mod:`miyaq.core.unread`): a large reply to a connection over it is not sent
(the request is answered ``busy`` instead), an ERROR only within the
refusals it may have on top. Sends never block: a peer gone or full is told
by a False, never waited for.

The results of SUBMITs are queued (:meth:`ServiceAnswers.ack`) and sent as
one SUBMITTED a connection at the end of the reader's burst
(:meth:`ServiceAnswers.flush_acks`), or, for a connection's first SUBMIT of
a burst that has done enough work, before the reader reads on
(:meth:`ServiceAnswers.ack_early`, :meth:`ServiceAnswers.send_early`): a
connection gets at most two SUBMITTED a burst.

With a durable log (``ack_gate``), an answer that promises a stored change
-- a SUBMITTED of accepted tasks, ``cancelled: true``, ``ok: true``, dead
tasks retried or purged -- goes only once the log has the records
(:meth:`ServiceAnswers.after_stored`), so a kill -9 cannot undo what was
answered; a refusal promises nothing and goes at once. Runs in the node's
event loop; only :meth:`ServiceAnswers.wait_stored` blocks, and only the
greenlet of an HTTP request.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

from miyaq.core.unread import UnreadAnswers, wire_bytes
from miyaq.errors import MiyaqError, Timeout
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import green
from miyaq.runtime.hub_socket import HubSocket
from miyaq.runtime.sockets import zmq

# The service's logger: a failing in-process submitter is logged under the
# same name as the service socket's other records.
logger = logging.getLogger("miyaq.core.service")

#: What :meth:`ServiceAnswers.reachable` sends: a REPLY without ``req``
#: (docs/protocol.md: clients ignore it).
PROBE = codec.pack({"probe": True})


class ServiceAnswers:
    """The answers of the service socket ``sock`` (``curve``: it encrypts,
    which the unread budget counts); the base of
    :class:`~miyaq.core.service.ServiceEndpoint`."""

    def __init__(self, sock: HubSocket, curve: bool) -> None:
        self.sock = sock
        self.errors: Counter[str] = Counter()
        self._acks: dict[Any, list[list[Any]]] = {}    # a routing id or an in-process submitter -> its results
        self._acked_early: set[bytes] = set()   # connections whose first SUBMIT of this burst was answered
        self._early: list[bytes] = []           # of those, the ones whose answer is still to send
        self.unread = UnreadAnswers()    # answers a connection has not read: bounded
        self._curve = curve     # what a message takes on the wire (unread counts it)
        # With a durable log, acknowledgements wait until the log has the
        # tasks: the gate calls its argument once they are written. So do the
        # answers to requests that change stored state (reply_stored,
        # wait_stored); log_admit refuses such a request while the log cannot
        # be written (Persistence.admit: Busy "storage").
        self.ack_gate: Callable[[Callable[[], None]], None] | None = None
        self.log_admit: Callable[[], None] | None = None

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
            self._deliver_acks(acks)
            return
        # A refusal promises nothing, so it never waits for the log: a node
        # whose disk is full still answers "busy" at once.
        refused = {i: [r for r in rs if r[1] == c.REJECTED] for i, rs in acks.items()}
        self._deliver_acks({i: rs for i, rs in refused.items() if rs})
        stored = {i: [r for r in rs if r[1] != c.REJECTED] for i, rs in acks.items()}
        stored = {i: rs for i, rs in stored.items() if rs}
        if stored:
            self.ack_gate(lambda: self._deliver_acks(stored))

    def _deliver_acks(self, acks: dict[Any, list[list[Any]]]) -> None:
        """Hand each submitter its results: a SUBMITTED to a connection, a
        call to an in-process submitter (a failing one is logged)."""
        for identity, results in acks.items():
            if callable(identity):
                try:
                    identity(results)
                except Exception:
                    logger.exception("in-process submit callback failed")
            else:
                self.send(identity, c.SUBMITTED, {"results": results})

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
