"""Cluster submits: store a task on its N holders before acknowledging.

The node that receives SUBMIT coordinates: it computes the task's holders
from the ring (the preference list of ``replicas`` nodes for the routing key:
``key`` if set, else the id), stores the task itself when it is a holder,
sends REPLICATE to the others (batched per holder per burst) and
acknowledges once ``min_acks`` holders stored it (default: all of them —
synchronous replication). A submit that cannot reach ``min_acks`` holders by
``replication_timeout`` seconds (monotonic) is rejected with NOT_ENOUGH_REPLICAS; resending
it with the same id is safe (REPLICATE is idempotent on every holder).
It is rejected the same way at once when holders whose answer does not
list the task (not a holder by their own view of the ring while it changes;
full) leave too few to reach ``min_acks``: no later answer can confirm that
try, so the client resends it (to another node, after its short backoff)
instead of waiting out the timeout -- for a keyed task, once its key's first
holder answered too (that answer may make it a duplicate). Silence is not such an answer: it waits
for the deadline (the holder may only be slow), and so does a REPLICATE that
cannot be sent (no connection to the holder: it is down, or the link to a
node just back in the ring is not up yet), which is sent again every
``CLUSTER_TICK`` until the deadline -- a holder that comes back meanwhile
gets it, and the submit is accepted without a resend. Such a late copy is
marked ``resent``: its holder asks the others before it runs it, since a
standby copy may have run the task meanwhile. A late copy of a task that
is over on this node (its own standby copy ran it meanwhile) is not sent
at all, and the submit is acknowledged. Rejecting at once
there would make the client resend again and again for as long as a dead
holder stays in the ring (until its ZooKeeper session expires), and its
later submits wait behind the resent one (they leave in order). It is the
:class:`~miyaq.core.handles.Intake` of a clustered node; the holders'
answers are read by its base :class:`~miyaq.cluster.replica_answers.ReplicaAnswers`,
the copies that could not be sent tried again by :class:`~miyaq.cluster.late_copies.LateCopies`.

A node that is shutting down coordinates no submit (``shutting_down``: the
client resends it to another node) and, when it stops, refuses the submits
it still coordinates (:meth:`ReplicatedIntake.refuse_all`): without an
answer their client would wait its whole ``ack_timeout``.

Each holder of rank i arms its copy for ``eta + i × offset``; copies of
rank > 0 are standby copies (they ask before they run).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from miyaq.cluster.holder_events import apply_early_event
from miyaq.cluster.late_copies import LateCopies
from miyaq.cluster.peer_requests import REPLICATE
from miyaq.cluster.peer_versions import ROWS
from miyaq.cluster.replica_answers import ReplicaAnswers
from miyaq.cluster.sizes import RECORD_ALLOWANCE, peer_chunks, record_size
from miyaq.constants import MAX_PENDING_SUBMITS
from miyaq.core.handles import Ack, AckTarget
from miyaq.errors import Busy, MiyaqError, NotEnoughReplicas, ShuttingDown, Unavailable
from miyaq.protocol.commands import ACCEPTED, DUPLICATE, REJECTED
from miyaq.protocol.recordrow import copy_row
from miyaq.runtime import monotonic, wall
from miyaq.store.records import task_record
from miyaq.store.task import READY, SCHEDULED, Task

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)



def copy_record(task: Task) -> dict[str, Any]:
    """The record a new submit's copy is sent in (REPLICATE): its
    :func:`~miyaq.store.records.task_record` without its rank (each holder
    places its copy itself), ``task``'s holders set. A named task with no
    key, meta, url or ``at_most_once`` (the common submit) is laid out
    directly, field for field as ``task_record`` lays it -- the layout the
    holders read in one unpacking (``protocol/recordspec.py``,
    ``SUBMIT_LAYOUT``); ``task_record`` reads twenty properties one by one
    (2.3 against about 0.8 us a submit). Any other task takes
    ``task_record``. To a holder that reads peer protocol 2 the common
    layout goes as a row (:func:`~miyaq.protocol.recordrow.copy_row`, in
    :meth:`ReplicatedIntake._send`)."""
    spec = task.spec
    extra = task.extra
    if (spec.name is None or spec.url is not None or spec.at_most_once or extra.key is not None
            or extra.meta is not None or extra.copy_wait or task.attempt or task.state != SCHEDULED
            or not extra.holders):
        record = task_record(task)
        record.pop("rank", None)
        return record
    return {"o": "A", "id": task.id, "queue": spec.queue, "name": spec.name, "method": spec.method,
            "body": task.body, "priority": spec.priority, "eta": task.eta, "created": task.created,
            "expires": extra.expires, "max_retries": spec.max_retries, "backoff": spec.backoff,
            "backoff_max": spec.backoff_max, "timeout": spec.timeout, "replicas": spec.replicas,
            "holders": list(extra.holders)}


def is_resent(task: Task) -> bool:
    """A client resend: an earlier try may have been stored, and run, on
    other holders (every holder's copy asks before it runs)."""
    return bool(task.meta and task.meta.get("resent"))


EMPTY_RING = ("the ring has no member yet (the cluster is starting, or every node left it: `miyaq ring` "
              "shows it); submit again shortly")
"""Why a submit is refused ``unavailable`` while this node's ring has no
member: no leader published one yet, or each node left (``miyaq leave``)."""

MAX_JOINED = 64
"""Most submits of one id answered with the first one while it waits for its
replicas (a client resending it, or several clients); past it, ``busy``."""


class _Pending:
    """A submit being replicated to the other holders ``asked``: ``stored``
    names those that confirmed it (each counts once, however many answers
    say so), ``failed`` those that answered without it; ``mine`` is 1 when
    this node, a holder, stored it. ``joined``: the submitters of the same
    id that came while it waited (at most ``MAX_JOINED``), answered with it.
    ``judge``: for a keyed task, its key's first holder when that is another
    node -- a later holder's refusal waits for its answer (see ``_not_stored``);
    ``key``: the task's key (None: no holder's answer makes it a duplicate)."""

    __slots__ = ("identity", "joined", "need", "mine", "asked", "stored", "failed", "deadline", "detail", "status",
                 "judge", "key")

    def __init__(self, identity: AckTarget, need: int, asked: list[str], deadline: float) -> None:
        self.identity = identity
        self.joined: list[AckTarget] | None = None
        self.need = need
        self.mine = 0
        self.asked = asked
        self.stored: set[str] = set()
        self.failed: list[str] = []
        self.deadline = deadline
        self.detail: Any = None
        self.status = ACCEPTED
        self.judge: str | None = None
        self.key: str | None = None

    @property
    def got(self) -> int:
        return self.mine + len(self.stored)

    def hopeless(self) -> bool:
        """Even if every holder yet to answer stores it, fewer than ``need`` would."""
        unsure = sum(1 for h in self.asked if h not in self.stored and h not in self.failed)
        return self.got + unsure < self.need


Outgoing = tuple[_Pending, dict[str, Any]]
"""A copy to send: the submit it is for, and its record."""


class ReplicatedIntake(LateCopies, ReplicaAnswers):
    """``ack`` queues an answer; ``release`` sends the queued answers (called
    after answers given outside a burst of peer answers, whose end sends them)."""

    def __init__(self, role: ClusterRole, ack: Ack, release: Callable[[], None] = lambda: None) -> None:
        self.role = role
        self.engine = role.engine
        self.ack = ack
        self.release = release
        self.timeout = role.config.replication_timeout
        self.pending: dict[str, _Pending] = {}
        self.outbox: dict[str, list[Outgoing]] = {}
        LateCopies.__init__(self)
        self.rejected = 0

    def submit(self, task: Task, now: float, identity: AckTarget) -> None:
        role = self.role
        if len(self.pending) >= MAX_PENDING_SUBMITS:
            self.ack(identity, [task.id, REJECTED, {"code": "busy", "message": "too many submits in flight"}])
            return
        if not self.engine.accepting:
            # Draining to stop: it may exit before the holders answer. Nothing is stored here.
            self.ack(identity, [task.id, REJECTED,
                                ShuttingDown("node is shutting down; submit to another node").to_wire()])
            return
        waiting = self.pending.get(task.id)
        if waiting is not None:
            # The same id again while its first submit waits for its replicas
            # (a client's resend, or two clients): it ends with that one, with
            # the same answer. Before 2026-12-06 it took the first one's
            # place, and the first submitter was never answered (its client
            # waited out ack_timeout and sent it again).
            self._join(waiting, task.id, identity)
            return
        why = role.not_coordinating() or role.reconcile.refusing()
        if why:
            # The client retries on another node (same id): nothing is stored here.
            self.ack(identity, [task.id, REJECTED, Unavailable(f"{why}; submit to another node").to_wire()])
            return
        holders = role.holders_for(task)
        if not holders:
            # No ring published yet, or one every node left: said so, with where to look.
            self.ack(identity, [task.id, REJECTED, Unavailable(EMPTY_RING).to_wire()])
            return
        task.holders = tuple(holders)
        record = copy_record(task)     # before place(): each holder adds its own offset
        need = min(role.min_acks or len(holders), len(holders))
        me = role.node_id
        others = holders[1:] if holders[0] == me else [h for h in holders if h != me]
        entry = _Pending(identity, need, others, monotonic() + self.timeout)
        key = entry.key = task.key
        if key is not None and holders[0] != me:
            entry.judge = holders[0]
        if me in holders:
            role.place(task)
            if is_resent(task):
                # A client resend: an earlier try may have been stored — and run —
                # elsewhere. Ask the other holders before running (standby).
                task.standby = True
            else:
                role.standby.key_checks.mark(task)    # new to its key here: asks about it first
            try:
                status, detail = self.engine.submit(task, now)
            except MiyaqError as err:
                # Full here, or a failing disk: the endpoint's ack counts the
                # refusal by code (STATUS errors), as every rejected result.
                self.ack(identity, [task.id, REJECTED, err.to_wire()])
                return
            if status == DUPLICATE and detail != task.id:
                self.ack(identity, [task.id, DUPLICATE, detail])   # another task holds the key
                return
            if status == DUPLICATE and task.id not in self.engine.table.live:
                # Finished (or dead-lettered) here: the record is no longer a task to
                # store. Sent now, it would be a live copy on a holder that never heard
                # the end, and that copy runs if this node is silent when it asks.
                self.ack(identity, [task.id, DUPLICATE, task.id])
                return
            entry.status, entry.detail = status, detail
            entry.mine = 1
            if status == ACCEPTED:
                # A holder's STARTED or DEAD event may have come first, while this
                # node's older ring did not make it a holder (a resend after a ring
                # change): the copy starts from what that holder did.
                apply_early_event(role, task)
        self.pending[task.id] = entry
        for holder in others:
            self.outbox.setdefault(holder, []).append((entry, record))
        self._maybe_ack(task.id, entry)

    def flush(self) -> None:
        """Send the burst's REPLICATE batches (one request per holder, split
        to stay under ``max_message`` and ``PEER_MESSAGE_BYTES`` of payloads:
        :func:`~miyaq.cluster.sizes.peer_chunks`), and once a tick the
        copies that could not be sent, for the submits still waiting for them."""
        if self.unsent and monotonic() >= self._unsent_due:
            self._send_unsent()
        if not self.outbox:
            return
        outbox, self.outbox = self.outbox, {}
        for holder, copies in outbox.items():
            self._keep(holder, self._send(holder, copies))

    def _send(self, holder: str, copies: list[Outgoing]) -> list[Outgoing]:
        """REPLICATE ``copies`` to ``holder``; those that could not be sent
        (no connection: the first chunk refused, and every one after it)."""
        done = 0
        peer = self.role.peer
        rows = peer.versions.version_for(holder) >= ROWS     # it reads a submit's copy as a row
        for chunk in peer_chunks(copies, len(copies), self.role.config.max_message, lambda c: record_size(c[1]),
                                 RECORD_ALLOWANCE):
            records = [record for _, record in chunk]
            sent = {r["id"]: r["holders"] for r in records}
            wire = [copy_row(r) for r in records] if rows else records
            # Not sent: its callback gets None, as silence does (the deadline decides).
            if not peer.request(holder, REPLICATE, {"tasks": wire}, self.timeout,
                                self._callback(holder, sent), self._on_lost(holder, sent)):
                return copies[done:]
            done += len(chunk)
        return []

    def _maybe_ack(self, task_id: str, entry: _Pending) -> None:
        if entry.got >= entry.need:
            del self.pending[task_id]
            self._answer(entry, [task_id, entry.status, entry.detail])

    def _join(self, entry: _Pending, task_id: str, identity: AckTarget) -> None:
        """Answer ``identity``'s submit of ``task_id`` with ``entry``'s; past
        ``MAX_JOINED`` submitters of one id, ``busy`` at once (the client
        tries again later)."""
        joined = entry.joined
        if joined is None:
            joined = entry.joined = []
        if len(joined) >= MAX_JOINED:
            self.ack(identity, [task_id, REJECTED, Busy(f"task {task_id} is being replicated for as many "
                                                        "submits of it as the node takes").to_wire()])
            return
        joined.append(identity)

    def _answer(self, entry: _Pending, result: list[Any]) -> None:
        """Queue ``result`` for the submitter of ``entry`` and for those of the same id that joined it."""
        self.ack(entry.identity, result)
        if entry.joined:
            for identity in entry.joined:
                self.ack(identity, list(result))

    def sweep(self) -> int:
        """Reject the submits whose replication_timeout passed; how many (their
        answers are queued with the node's other acks: the caller flushes).

        ``pending`` is in the order the submits came, each given the same
        ``timeout`` on the monotonic clock: so in deadline order, and the
        sweep stops at the first submit not yet due. It costs what it
        rejects, not what waits (before 2026-12-06 every tick walked every
        pending submit: 1.9% of a node's CPU in ``miyaq bench --cluster 3``,
        thousands of submits waiting for their replicas in a burst)."""
        pending = self.pending
        if not pending:
            return 0
        now = monotonic()
        due: list[tuple[str, _Pending]] = []
        for task_id, entry in pending.items():
            if entry.deadline > now:
                break
            due.append((task_id, entry))
        for task_id, entry in due:
            self._reject(task_id, entry, f"task {task_id} stored on {entry.got} of the {entry.need} "
                                         f"holders needed within {self.timeout:g}s; resubmit with the same id")
        return len(due)

    def refuse_all(self) -> int:
        """The node stops: refuse every submit it still coordinates
        (``shutting_down``; the client resends it to another node) and send
        the answers now. How many."""
        refused = len(self.pending)
        for task_id, entry in list(self.pending.items()):
            self._reject(task_id, entry, f"task {task_id} stored on {entry.got} of the {entry.need} holders "
                                         "needed when its node stopped; resubmit with the same id", ShuttingDown)
        if refused:
            self.release()
        return refused

    def _reject(self, task_id: str, entry: _Pending, message: str,
                error: type[MiyaqError] = NotEnoughReplicas) -> None:
        del self.pending[task_id]
        self.rejected += 1
        self._answer(entry, [task_id, REJECTED, error(message).to_wire()])
        self._demote(task_id)

    def _demote(self, task_id: str) -> None:
        """The client was told the submit failed and will resend it, maybe
        elsewhere: this node's copy (if it stored one) must not run on its
        own any more. It becomes a standby that asks the other holders first,
        an offset after the task's eta (or after now, if that is later).
        Before 2026-12-06 it asked an offset after now whatever the eta: a
        delayed task rejected during a ring change ran as soon as the other
        holders answered they did not know it (a rolling restart under load:
        a task due 131 s later ran 126 s early)."""
        task = self.engine.table.live.get(task_id)
        if task is not None and not task.standby and task.state in (SCHEDULED, READY):
            task.standby = True
            self.engine.defer(task, max(task.eta, wall()) + self.role.offset_for(task, minimum=1))
