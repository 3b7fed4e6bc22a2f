"""The submit pipeline: batching, the window of unacknowledged submits,
resends, BUSY backoff and the one clear error at the deadline.

Part of the client's sans-I/O core (:mod:`miyaq.client.core`): it never
touches a socket or a clock. It sends through ``send(node, command, body)``
(False: that node is not connected) and is told the time by its caller.

Rules (docs/semantics.md):

- Submits leave in the order they were made; a submit waiting for a retry is
  never overtaken by a later one (FIFO per producer).
- Due submits go out batched, one SUBMIT per node per pass, within the
  sizes of :mod:`~.sizes` -- ``max_batch`` tasks and ``BATCH_BYTES`` (1 MiB) of
  payload -- and within their node's limits (:mod:`~.limits_gate`: a large
  submit waits until they are known, a task the node could never take fails
  at once).
- A submit not acknowledged within ``ack_timeout`` is resent with the same id
  (and ``resent: true``), on another node than the silent one when there is one; BUSY, ``shutting_down``,
  ``unavailable`` and ``not_enough_replicas`` are retried with exponential
  backoff and jitter, on another node when there is one -- marked
  ``resent`` only if an earlier try may have been stored
  (:data:`NOTHING_STORED`).
- Until any node was reached, a submit waits at most :data:`FIRST_CONTACT`
  for a connection, then fails with the first-contact message.
- At its deadline a submit fails with one error naming why.
- Two submits of one id unacknowledged at once are copies of the id in
  flight, each its own outcome unless the id is stored (:mod:`~.id_copies`).

A sent submit whose deadline comes before its acknowledgement is overdue
is *capped*: it fails at its deadline (:mod:`~.capped_submits`, which
:meth:`SubmitPipeline.next_due` and :meth:`SubmitPipeline.check_acks` ask).
"""
from __future__ import annotations

import logging
import random
from typing import Any, Callable

from ..errors import InvalidField, MiyaqError, Timeout, Unavailable, from_wire
from ..logs import LogLimiter
from ..protocol import commands as c
from ..protocol.batching import chunks
from .capped_submits import CappedSubmits
from .first_contact import unreachable
from .id_copies import IdCopies
from .limits_gate import LimitsGate
from .nodes import Nodes
from .pending import Pending, final_error
from .resolver import Resolver, Send
from .sizes import ASK_LIMITS_ABOVE, BATCH_BYTES, payload_size
from .wire import unsendable

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a node answering with nonsense may do so for every task: a few lines a minute

# What a SUBMITTED result may say of a task (docs/protocol.md, "SUBMIT").
SUBMIT_STATUSES = (c.ACCEPTED, c.DUPLICATE, c.REJECTED)

FIRST_CONTACT = 5.0
"""Seconds a submit waits for a connection while the client has never reached
any node; then it fails at once with the message of
:func:`~.first_contact.unreachable` instead of retrying until
``submit_timeout``. Once any node has been reached, an unreachable node is
retried (elsewhere, with backoff) until the deadline."""
CONNECT_RETRY = 0.01
"""Seconds before a submit that found its node unconnected tries again."""
NOTHING_STORED = frozenset({"busy", "unavailable"})
"""Codes of a node's refusal that promise the try was stored nowhere: the
node refused it before it stored or replicated anything (full, its log not
writable, too many submits being replicated; not coordinating, or no ring).
A refusal with another code (``shutting_down``, ``not_enough_replicas``)
may come after some holders stored a copy."""
TIMEOUT_SCAN = 1000
"""Most overdue acknowledgements handled per pass (oldest first)."""
RETRY_BASE = 0.01
"""Seconds before a refused or unacknowledged submit's first retry; each
later try waits twice as long (up to ``2 ** RETRY_DOUBLINGS`` times), at
most ``RETRY_MAX``, and every wait is jittered to 50-100% of itself."""
RETRY_DOUBLINGS = 8
RETRY_MAX = 2.0

class Unencodable(Exception):
    """A SUBMIT could not be encoded (raised by the core's send): the
    pipeline fails the submits of it that cannot be, and sends the others
    (:meth:`SubmitPipeline._send_chunk`)."""


class SubmitPipeline(LimitsGate):
    """The submits of one :class:`~miyaq.client.core.ClientCore`, from
    queued to resolved (the module's docstring); a node's limits are
    applied by its base, :class:`~.limits_gate.LimitsGate`. Called only by
    whoever holds the core (its I/O context, or a caller on the short path).
    A submit is resolved through ``resolver``, and ``on_resolved`` is called
    for each one (a slot of the window is free, and its bytes: ``resolved``
    and ``resolved_bytes`` count them)."""

    def __init__(self, nodes: Nodes, send: Send, resolver: Resolver, *, max_batch: int, ack_timeout: float,
                 on_resolved: Callable[[], None], ask_limits: Callable[[int], None] = lambda node: None) -> None:
        self.nodes = nodes
        self._send = send
        self._ask_limits = ask_limits     # ask node N for its limits (a RING); an answer calls limits_heard
        self._resolver = resolver
        self.max_batch = max_batch
        self.ack_timeout = ack_timeout
        self._on_resolved = on_resolved
        self.pending: dict[str, Pending] = {}     # sent, awaiting ack, oldest first
        # Sent, failing at their deadline before an ack is overdue (few: tries near
        # the end; all, with a submit_timeout at most ack_timeout).
        self.capped = CappedSubmits(self.pending)
        self.copies = IdCopies(self.pending, self.capped, ack_timeout)    # copies of one id in flight
        self.waiting: list[Pending] = []          # to (re)send when next_try passes, in order (never replaced)
        self.resolved = 0
        self.resolved_bytes = 0       # the sizes of those resolved (the window's bytes: .window)
        self.resends = 0
        self.busy_replies = 0

    def add(self, p: Pending) -> None:
        self.waiting.append(p)

    @property
    def idle(self) -> bool:
        """Nothing waits to be sent and nothing is unacknowledged: a new
        submit may leave at once without breaking up a batch."""
        return not self.waiting and not self.pending

    def next_due(self) -> float | None:
        """When the next waiting submit may leave, or a sent one reaches its
        deadline before its acknowledgement is overdue (None: neither). Only
        the due prefix of ``waiting`` leaves, so its first one decides; of
        the capped, the soonest deadline (:meth:`CappedSubmits.soonest`)."""
        due = self.waiting[0].next_try if self.waiting else None
        if self.capped.heap:
            soonest = self.capped.soonest()
            if soonest is not None:
                due = soonest if due is None or soonest < due else due
        return due

    # -- sending ---------------------------------------------------------------------
    def send_due(self, now: float) -> None:
        """Send every submit whose time has come, batched per node."""
        waiting = self.waiting
        if not waiting:
            return
        # Only the due prefix leaves: a submit waiting to be retried is never
        # overtaken by a later one.
        i = 0
        while i < len(waiting) and waiting[i].next_try <= now:
            i += 1
        if not i:
            return
        due = waiting[:i]
        del waiting[:i]       # in place: the pipeline's list for its life (an aio driver's finalizer holds it)
        by_node: dict[int, list[Pending]] = {}
        nodes = self.nodes
        for j, p in enumerate(due):
            if p.last_error is not None:
                node = nodes.pick(p.node)       # a retry: another node when there is one
            else:
                node = p.node if p.node >= 0 else nodes.home(p.wire)
            if (len(p.wire.get("body") or b"") > ASK_LIMITS_ABOVE and not nodes.limits_known(node)
                    and self._hold_for_limits(p, node, now)):
                waiting[:0] = due[j:]       # it and every later one: the order stays
                break
            by_node.setdefault(node, []).append(p)
        for node, batch in by_node.items():
            max_items, max_bytes = self.max_batch, BATCH_BYTES
            limits = self.nodes.limits_for(node)
            if limits is not None:
                batch = self._within(node, batch, limits)
                max_items = min(max_items, limits.max_batch)
                max_bytes = min(max_bytes, limits.max_message // 2)
            for chunk in chunks(batch, max_items, max_bytes, payload_size):
                self._send_chunk(node, chunk, now)

    def _send_chunk(self, node: int, chunk: list[Pending], now: float) -> None:
        try:
            sent = self._send(node, c.SUBMIT, {"tasks": [p.wire for p in chunk]})
        except Unencodable as exc:
            sendable = self._drop_unencodable(chunk, str(exc))
            if sendable:
                self._send_chunk(node, sendable, now)
            return
        if sent:
            late = now + self.ack_timeout
            # One dict operation a submit, as the plain store was: a submit of
            # an id already unacknowledged joins that one instead of replacing it.
            setdefault = self.pending.setdefault
            capped = self.capped
            for p in chunk:
                p.sent = now
                p.tries += 1
                p.node = node
                first = setdefault(p.wire["id"], p)
                if first is not p:
                    first.join(p)
                elif p.deadline < late:
                    capped.add(p)
            capped.bound()
            return
        # Not connected: try again soon, keeping the order of the batch (no
        # jitter) -- unless no node was ever reached for FIRST_CONTACT seconds.
        # The retry picks another node than this one (send_due's pick(p.node)).
        error = Unavailable(f"no connection to {self.nodes.endpoints[node]}")
        for p in chunk:
            if not self.nodes.reached and (now - p.created >= FIRST_CONTACT or now >= p.deadline):
                self.resolve(p, error=unreachable(self.nodes))
                continue
            p.node = node
            self._retry_later(p, now, error, delay=CONNECT_RETRY)

    def _drop_unencodable(self, chunk: list[Pending], why: str) -> list[Pending]:
        """The submits of ``chunk`` msgpack can encode; each other one fails
        now with ``InvalidField`` naming its field (the caller's checks let
        it through: :meth:`~miyaq.client.core.ClientCore._send`). None of
        them when none is found at fault (``why``: the encoder's error): every
        one fails, and the chunk is not tried again."""
        sendable: list[Pending] = []
        for p in chunk:
            found = unsendable(p.wire)
            if found is None:
                sendable.append(p)
                continue
            name, reason = found
            error = InvalidField(f"task {p.wire.get('id')!r} was not sent: field {name!r} is a value msgpack "
                                 f"cannot encode ({reason})", field=name)
            _log.warning("unencodable", "miyaq client: %s", error.message)
            self.resolve(p, error=error)
        if len(sendable) == len(chunk):
            error = InvalidField(f"a batch of {len(chunk)} submit(s) was not sent: msgpack cannot encode it "
                                 f"({why})", field="tasks")
            _log.warning("unencodable", "miyaq client: %s", error.message)
            for p in chunk:
                self.resolve(p, error=error)
            return []
        return sendable

    def _retry_later(self, p: Pending, now: float, error: MiyaqError, delay: float | None = None) -> None:
        p.last_error = error
        if now >= p.deadline:
            self.resolve(p, error=final_error(error, p))
            return
        if delay is None:
            delay = min(RETRY_MAX, RETRY_BASE * (2 ** min(p.tries, RETRY_DOUBLINGS))) * (0.5 + random.random() / 2)
        p.next_try = min(now + delay, p.deadline)
        self.waiting.append(p)

    # -- acknowledgements --------------------------------------------------------------
    def check_acks(self, now: float) -> None:
        """Resend submits whose acknowledgement is overdue (oldest first), and
        fail those whose deadline passed while their last try waits."""
        pending = self.pending
        if not pending:
            self.capped.clear()
            return
        cutoff = now - self.ack_timeout
        # pending is in the order of sending: the overdue are a prefix (at most
        # TIMEOUT_SCAN of them a pass), and the first one not overdue ends the look.
        late: list[str] = []
        for task_id, p in pending.items():
            if p.sent > cutoff or len(late) >= TIMEOUT_SCAN:
                break
            late.append(task_id)
        if late:
            overdue = self._no_ack_error()
            for task_id in late:
                p = self.copies.pop_head(task_id)
                self.resends += 1
                p.may_be_stored()         # p.node stays the silent node: the resend avoids it
                self._retry_later(p, now, overdue)
        if self.capped.heap:
            for p in self.capped.pop_due(now):
                self.copies.pop_head(p.wire["id"])
                self.resolve(p, error=final_error(p.last_error or self._no_ack_error(), p))

    def _no_ack_error(self) -> Timeout:
        """The error of a try whose acknowledgement did not come within ``ack_timeout``."""
        return Timeout(f"no acknowledgement within {self.ack_timeout:g}s")

    def node_lost(self, node: int, now: float) -> int:
        """The connection to ``node`` closed (the node exited or restarted):
        the submits it has not acknowledged may have been read and dropped
        with it, so each is sent again now, to another node when there is
        one -- not ``ack_timeout`` later. The same id, marked resent: a node
        that did store it answers DUPLICATE, and a cluster's copies of it ask
        before they run. How many."""
        copies = self.copies.on_node(node)
        lost = [task_id for task_id, p in self.pending.items() if p.node == node]
        if not lost and not copies:
            return 0
        error = Unavailable(f"the connection to {self.nodes.endpoints[node]} closed before it acknowledged "
                            "the submit")
        for p in copies + [self.copies.pop_head(task_id) for task_id in lost]:
            self.resends += 1
            p.may_be_stored()
            self._retry_later(p, now, error)
        return len(lost) + len(copies)

    def refused(self, node: int, error: MiyaqError) -> int:
        """Node ``node`` refuses the client's key (ERROR ``forbidden`` to a
        SUBMIT, :meth:`~miyaq.client.requests.RequestTable.refused`): each
        submit sent to it and not acknowledged fails now with ``error``,
        not resent (no node can take what this key sends). How many."""
        copies = self.copies.on_node(node)
        refused = [task_id for task_id, p in self.pending.items() if p.node == node]
        for p in copies + [self.copies.pop_head(task_id) for task_id in refused]:
            self.resolve(p, error=error)
        return len(refused) + len(copies)

    def on_submitted(self, node: int, body: dict[str, Any], now: float) -> None:
        """A SUBMITTED from ``node``: resolve, retry or fail each result.

        One that is not ``[id, status, detail]`` with a status the protocol
        names (accepted, duplicate, rejected) is skipped, as if its
        acknowledgement never came: that submit is sent again when it is late
        (marked ``resent``: it may be stored), and a node that never answers
        it properly makes it fail at its deadline. An unknown status is never
        taken for "accepted": nothing says the task was stored."""
        results = body.get("results")
        if not isinstance(results, list):
            return
        for item in results:
            if not isinstance(item, list) or len(item) != 3:
                continue
            task_id, status, detail = item
            if status not in SUBMIT_STATUSES:
                _log.warning("unknown-status", "ignoring an acknowledgement of task %.80r from %s: unknown status "
                             "%.80r (the submit is sent again when its acknowledgement is late)", task_id,
                             self.nodes.endpoints[node], status)
                continue
            head = self.pending.get(task_id) if isinstance(task_id, str) else None
            if head is None:
                continue   # a late ack for a resend that was already acknowledged
            value = (self.nodes.endpoints[node], status, detail)
            by_key = status == c.DUPLICATE and isinstance(detail, str) and detail != task_id   # as accepted_as
            if status != c.REJECTED and not by_key:
                del self.pending[task_id]
                self.resolve(head, value=value)      # the id is stored: every copy of it is accepted
                continue
            p = head.copy_from(node)                 # the answer of one copy only
            self.copies.take(p, head)
            if by_key:
                self.resolve(p, value=value)         # held by the task that has its key; the id is not stored
                continue
            err = from_wire(detail if isinstance(detail, dict) else {})
            if err.retryable:
                self.busy_replies += 1
                if err.code not in NOTHING_STORED:
                    p.may_be_stored()
                self._retry_later(p, now, err)
            else:
                self.resolve(p, error=err)

    def resolve(self, p: Pending, value: Any = None, error: MiyaqError | None = None) -> None:
        """Resolve ``p`` and every copy joined to it (each holds a window slot)."""
        if p.joined is not None:
            self._resolve_joined(p, value, error)
        if error is not None:
            self._resolver.fail(p.waiter, error)
        else:
            self._resolver.set(p.waiter, value)
        self.resolved_bytes += p.size     # before the count: a caller woken by it reads both
        self.resolved += 1
        self._on_resolved()

    def _resolve_joined(self, p: Pending, value: Any, error: MiyaqError | None) -> None:
        joined, p.joined = p.joined or [], None
        for other in joined:
            if error is not None:
                self._resolver.fail(other.waiter, error)
            else:
                self._resolver.set(other.waiter, value)
            self.resolved_bytes += other.size
            self.resolved += 1
            self._on_resolved()

    def fail_all(self, error: MiyaqError) -> None:
        for p in list(self.pending.values()) + self.waiting:
            self.resolve(p, error=error)
        self.pending.clear()
        self.capped.clear()
        self.waiting.clear()
