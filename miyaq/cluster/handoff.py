"""Handoff: after a ring change every task returns to N copies on its new
holders.

For each task whose preference list changed, the first of its old holders
that is still alive sends the task to its new holders (REPLICATE,
idempotent), and so does every old holder that is not a new holder. Every
old holder updates its copy's holder list and rank; a copy this node no
longer holds is dropped only once every new holder confirmed it — unless it
is running here, in which case it stays until it finishes (its outcome is
announced to the new holders), or unless a confirmation came from a ring
newer than this node's view: it stays until a pass on that ring decides
(:mod:`miyaq.cluster.handoff_held`). Copies whose confirmation does not come are
sent again, to the holder that did not confirm them, every
``HANDOFF_RETRY`` seconds while it answers -- or after ``HANDOFF_LAG_RETRY``
when it refused them because the new ring had not reached it yet (its
REPLICATE answer names an older epoch than ours), or when they could not be
sent at all (no connection to it yet: a node that just joined, linked by
the ring change that starts the pass; :meth:`Handoff._soon`). Until it takes them,
the task's outcome may live on fewer holders than it should: a copy it took
later from elsewhere (a coordinator's retried REPLICATE) would not know the
task was already finished or dead-lettered here.

A holder that lets its chunks time out (``HANDOFF_CONFIRM_TIMEOUT``), or
stays unreachable past those quick tries, is sent nothing while a chunk to
it still awaits its answer, and its resends wait longer each time, up to
``HANDOFF_RETRY_MAX``; an answer past the deadline still counts
(:mod:`miyaq.cluster.holder_retry`, which says why).

The resends are :mod:`miyaq.cluster.handoff_resends`'s (the base of
:class:`Handoff`). The pass and the resends work in slices, yielding to the
hub between them (:mod:`miyaq.cluster.handoff_slices`).

Outcomes move too, after the pass that follows a ring change:
:mod:`miyaq.cluster.outcome_handoff`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from miyaq.cluster.handoff_held import HeldCopies, HoldingCopies
from miyaq.cluster.handoff_resends import HandoffResends
from miyaq.cluster.handoff_slices import _slices
from miyaq.cluster.holder_retry import HolderRetry
from miyaq.cluster.outcome_handoff import OutcomeHandoff
from miyaq.cluster.peer_requests import REPLICATE
from miyaq.cluster.ring_view import RingView
from miyaq.cluster.sizes import RECORD_ALLOWANCE, peer_chunks, record_size
from miyaq.constants import (
    HANDOFF_CHUNK, HANDOFF_CONFIRM_TIMEOUT, HANDOFF_LAG_RETRIES, HANDOFF_LAG_RETRY, HANDOFF_RETRY, HANDOFF_SWEEP,
)
from miyaq.runtime import green, monotonic, wall
from miyaq.protocol.eventspec import confirmed_ids
from miyaq.store.records import transfer_record
from miyaq.store.table import TaskTable
from miyaq.store.task import SCHEDULED, Task

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)

class Handoff(HandoffResends, HoldingCopies):
    """Runs in its own greenlet (:meth:`serve`): a ring change asks for a
    pass (:meth:`request`), the cluster ticker for sweeps and retries
    (:meth:`tick`). A pass or a retry works through its tasks in slices of
    about ``green.HUB_SLICE`` of real time each (at most ``HANDOFF_SLICE``
    tasks: :func:`_slices`), sending each slice's copies before it yields,
    so the node answers its peers, clients and workers throughout. Between slices
    the table may change: a task finished, dropped or replaced meanwhile is
    skipped, and a ring that changed meanwhile asks for another pass, which
    starts once this one ended (one pass at a time)."""

    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.leaving: dict[str, set[str]] = {}    # task id -> new holders yet to confirm
        self.last_run = 0.0
        self.next_retry = 0.0        # monotonic: when unconfirmed copies are sent again
        # Holder -> the quick retries it was given since the last ring change's pass started.
        self.lag_retries: dict[str, int] = {}
        self._ring_changed = False   # a pass was asked for a ring change, and has not started yet
        self.handed = 0
        self.busy = False            # a pass or a retry is under way
        self._pass_wanted = False
        self._wake = green.Event()
        # The ring before the change the next pass is for: its tombstones go
        # to the holders that ring did not have (None: a sweep, or the first ring).
        self._outcomes_before: RingView | None = None
        self.outcomes = OutcomeHandoff(role, lambda items: _slices(items), self._outcomes_unanswered)
        # New holders sent copies: when they may be sent what they did not confirm.
        self.retries: dict[str, HolderRetry] = {}
        self._pass_sent_to: set[str] = set()     # the holders the pass under way sent copies to
        self.late_confirmed = 0      # tasks whose handoff an answer past its deadline completed
        # Copies confirmed by holders on a newer ring than this node's view:
        # kept until a pass on that ring decides (handoff_held).
        self.held = HeldCopies(role.config.max_tasks)

    # -- when ------------------------------------------------------------------------
    def request(self, before: RingView | None = None) -> None:
        """Ask for a pass over every task (the ring changed from ``before``);
        it starts at once, or once the pass under way ended. With ``before``
        the pass hands off outcomes too; of several changes before a pass
        starts, the oldest ring counts."""
        self._pass_wanted = True
        if before is not None and before.members and self._outcomes_before is None:
            self._outcomes_before = before
        if before is not None:
            self._ring_changed = True   # its pass (not a sweep's) starts the quick retries afresh
            for retry in self.retries.values():      # a new ring: holders back or new get copies at the usual pace
                retry.wait, retry.not_before = HANDOFF_RETRY, 0.0
        self._wake.set()

    def tick(self, now: float, sweeping: bool) -> None:
        """From the cluster ticker (``now``: monotonic): a sweep pass every
        ``HANDOFF_SWEEP`` while ``sweeping`` (the minute after a ring
        change), and the unconfirmed copies again once ``next_retry`` came.
        Nothing while a pass or a retry is under way."""
        if self.busy:
            return
        if self.held:
            self._drop_held(self.held.expired(now), "its view of the ring did not reach the confirming holder's")
        if sweeping and now - self.last_run >= HANDOFF_SWEEP:
            self._pass_wanted = True
        if self._pass_wanted or ((self.leaving or self.outcomes.unanswered) and now >= self.next_retry):
            self._wake.set()

    def serve(self) -> None:
        """The handoff greenlet: a pass when one was asked for, else the
        retry that is due."""
        while True:
            self._wake.wait()
            self._wake.clear()
            self.busy = True
            try:
                if self._pass_wanted:
                    self._pass_wanted = False
                    before, self._outcomes_before = self._outcomes_before, None
                    self.run()
                    if before is not None:
                        self.outcomes.hand(before)
                else:
                    self.retry(monotonic())
            finally:
                self.busy = False

    # -- passes ----------------------------------------------------------------------
    def run(self) -> int:
        """Hand off every task whose holders changed, a slice at a time
        (yielding between slices); returns how many were sent."""
        table = self.role.engine.table
        tasks = list(table.live.values()) + list(table.dead.values())
        sent = 0
        # Answers to the first slices may come back while later ones are sent:
        # a refusal on an older ring asks for a quick retry (``_confirmed``),
        # which the end of the pass must keep; so must a retry planned before
        # the pass (a sweep pass falling on a due retry does not push it back).
        planned = self.next_retry if (self.leaving or self.outcomes.unanswered) else float("inf")
        if self._ring_changed:      # the quick retries are per ring change, not per pass
            self._ring_changed = False
            self.lag_retries.clear()
        self.next_retry = float("inf")
        self._pass_sent_to.clear()
        epoch = self.role.view.epoch
        for chunk in _slices(tasks):
            sent += self._pass_slice(chunk)
        if self.held:
            self._drop_held(self.held.reached(epoch), None)
        self.last_run = monotonic()
        if not self.leaving:
            self._forget_holders(set())
        self.next_retry = min(self.next_retry, planned, self.last_run + HANDOFF_RETRY)
        if sent:
            logger.info("handoff: sent %d task(s) to their new holders", sent)
        self.handed += sent
        return sent

    def _pass_slice(self, tasks: list[Task]) -> int:
        role = self.role
        me = role.node_id
        alive = role.view.members
        outbox: dict[str, list[dict[str, Any]]] = {}
        sent = 0
        for task in tasks:
            if not _still_held(role.engine.table, task):
                continue        # finished, dropped or replaced while the pass yielded
            new = role.holders_for(task)
            if not new:
                continue
            if tuple(new) == task.holders:
                waiting = self.leaving.get(task.id)
                if waiting and me in new and not waiting.issubset(new):
                    # A peer's handoff reached this holder before this pass and
                    # stored the new holders (CopyInstaller.install): the entry
                    # the ring before made stops waiting for non-holders. Before
                    # 2026-12-06 a joiner taken out again got copies for ever.
                    waiting.intersection_update(new)
                    if not waiting:
                        del self.leaving[task.id]
                continue
            old = task.holders or (me,)
            survivors = [h for h in old if h in alive or h == me]
            sender = survivors[0] if survivors else me
            task.holders = tuple(new)
            if me in new:
                task.rank = new.index(me)
                if task.rank == 0:
                    _ask_at_eta(role, task)
            # The first surviving holder sends; a holder that is no longer one
            # sends too, because it drops its copy only once every new holder
            # confirmed having the task (views lag during ring changes, and a
            # copy dropped on a stale view would be lost).
            if sender == me or me not in new:
                record = transfer_record(task)
                targets = [h for h in new if h != me]
                for h in targets:
                    outbox.setdefault(h, []).append(record)
                sent += 1
                # Until every new holder confirmed (it may refuse while its view
                # of the ring lags), the copy is sent again every HANDOFF_RETRY seconds.
                self.leaving[task.id] = set(targets)
            else:
                # A holder again while another holder sends: an earlier handoff
                # of this copy (to holders of a ring since replaced) is void.
                self.leaving.pop(task.id, None)
        now = monotonic()
        for holder in outbox:
            if holder not in self._pass_sent_to:
                # At its first send of the pass, not at the pass's end: a quick
                # retry an answer (or a send that failed) asks for meanwhile stands.
                self._pass_sent_to.add(holder)
                self._retry_of(holder).sent(now)
        self._send(outbox)
        return sent

    def _send(self, outbox: dict[str, list[dict[str, Any]]]) -> None:
        budget = self.role.config.max_message
        for holder, records in outbox.items():
            retry = self._retry_of(holder)
            for chunk in peer_chunks(records, HANDOFF_CHUNK, budget, record_size, RECORD_ALLOWANCE):
                ids = [r["id"] for r in chunk]
                retry.awaiting += 1
                unsent: list[bool] = []     # the link spawns the callback of a request it could not send
                if not self.role.peer.request(holder, REPLICATE, {"tasks": chunk}, HANDOFF_CONFIRM_TIMEOUT,
                                              self._callback(holder, ids, retry, unsent),
                                              late=self._late_callback(holder, ids)):
                    unsent.append(True)

    def _outcomes_unanswered(self) -> None:
        """A chunk of outcomes went unanswered: it is sent again at the next retry."""
        self.next_retry = min(self.next_retry, monotonic() + HANDOFF_RETRY)

    def _callback(self, holder: str, ids: list[str], retry: HolderRetry,
                  unsent: list[bool]) -> Callable[[dict[str, Any] | None], None]:
        """The callback of a chunk of ``ids`` sent to ``holder``; ``unsent``
        is non-empty if the chunk could not be sent (set before the link
        calls the callback)."""
        def answered(answer: dict[str, Any] | None) -> None:
            if answer is None:
                if unsent and self._soon(holder):
                    retry.unsent()
                else:
                    retry.silent(monotonic())
                return
            retry.awaiting = max(0, retry.awaiting - 1)
            retry.heard()
            self._confirmed(holder, ids, answer)
            if (not retry.awaiting and 0.0 < retry.not_before < self.next_retry
                    and self.retries.get(holder) is retry):
                # A retry round that found this chunk on its way skipped the
                # holder and planned the next a whole HANDOFF_RETRY later; what
                # it still owes is due at the holder's own time (a quick retry
                # asked for while other chunks to it could not be sent). Not a
                # holder with no time of its own (0.0: a retry made mid-pass, or
                # reset by a ring change): that made a round due at once, which
                # sent refused copies again at once, not HANDOFF_RETRY later, and
                # planned the next round a whole HANDOFF_RETRY on, past another
                # holder's quick retry (audit review27, 2026-12-07).
                self.next_retry = max(retry.not_before, monotonic())
        return answered

    def _late_callback(self, holder: str, ids: list[str]) -> Callable[[dict[str, Any] | None], None]:
        def answered_late(answer: dict[str, Any] | None) -> None:
            if answer is None:
                return
            retry = self.retries.get(holder)
            if retry is not None:
                retry.heard()
            before = len(self.leaving)
            self._confirmed(holder, ids, answer)
            self.late_confirmed += before - len(self.leaving)
        return answered_late

    def _confirmed(self, holder: str, ids: list[str], answer: dict[str, Any]) -> None:
        """``holder``'s answer to a chunk of ``ids``, in time or late."""
        finished = answer.get("finished")
        if isinstance(finished, dict) and finished:
            # This node missed the end (it was down, or its stream was).
            for task_id in self.role.copies.finish_known(holder, finished, self._holders_of(ids),
                                                         answer.get("results_left_out")):
                self.leaving.pop(task_id, None)     # over: nothing more to hand off
        dead = answer.get("dead")
        if isinstance(dead, dict) and dead:
            self.role.copies.dead_known(holder, dead, self._holders_of(ids))
        table = self.role.engine.table
        for task_id in confirmed_ids(answer):
            waiting = self.leaving.get(task_id)
            if waiting is None:
                continue
            waiting.discard(holder)
            if not waiting:
                del self.leaving[task_id]
                task = table.live.get(task_id) or table.dead.get(task_id)
                if task is not None and self._not_a_holder(task, answer):
                    self.role.engine.forget(task)
        if not self.leaving and self.retries:
            self._forget_holders(set())
        epoch = answer.get("epoch")
        if (type(epoch) is int and epoch < self.role.view.epoch
                and any(holder in self.leaving.get(task_id, ()) for task_id in ids)):
            self._soon(holder)      # refused on an older ring: it will have ours in a moment

    def _soon(self, holder: str) -> bool:
        """Send ``holder`` what it has not confirmed again after
        ``HANDOFF_LAG_RETRY``, not ``HANDOFF_RETRY``: it refused copies on an
        older ring, or they could not be sent (no connection to it yet) --
        both last a moment after a ring change. At most
        ``HANDOFF_LAG_RETRIES`` such retries a holder per ring change (the
        chunks of one retry count once; a sweep pass starts no new ones);
        False, and nothing changed, once the holder's are used up (a holder still
        unreachable then is taken for one that is down;
        :mod:`~miyaq.cluster.holder_retry` says what this was before). A
        chunk of a round whose quick retry is planned already is True even
        when that one was the last: before 2026-12-07 the round's other
        chunks that could not go found the quick retries used up and made
        the holder wait ``HANDOFF_RETRY`` from their failure, so the last
        quick retry came and sent it nothing. Each holder keeps its own
        time: a round planned sooner for another holder plans the next at
        this one's (:meth:`~miyaq.cluster.handoff_resends.HandoffResends.retry`)."""
        now = monotonic()
        soon = now + HANDOFF_LAG_RETRY
        retry = self.retries.get(holder)
        planned = self.next_retry if retry is None else retry.not_before
        if not now < planned <= soon:       # no quick retry of its own planned yet
            used = self.lag_retries.get(holder, 0)
            if used >= HANDOFF_LAG_RETRIES:
                return False
            self.lag_retries[holder] = used + 1
            planned = soon
            if retry is not None:
                retry.not_before = min(retry.not_before, soon)
        self.next_retry = min(self.next_retry, planned)
        return True

    def _holders_of(self, ids: list[str]) -> dict[str, tuple[str, ...]]:
        """The new holders of each task of ``ids`` this node still holds."""
        table = self.role.engine.table
        holders = {}
        for task_id in ids:
            task = table.live.get(task_id) or table.dead.get(task_id)
            if task is not None:
                holders[task_id] = task.holders
        return holders

    def pending(self) -> int:
        """Tasks whose new holders have not all confirmed their copy yet."""
        return len(self.leaving)


def _ask_at_eta(role: ClusterRole, task: Task) -> None:
    """A ring change made this node ``task``'s first holder, and its copy is
    a standby still waiting out its rank's offset for the task's first run,
    which no holder started as far as this node heard (no attempt, no
    lessee): it asks the others at the task's eta instead (only silence
    lets it run), as the first holder of a handed-off copy does
    (:meth:`~miyaq.cluster.install.CopyInstaller.install`) -- the offset was the
    earlier holder's time to announce a start. Before 2026-12-05 it kept
    its offset: a first holder drained before a delayed task's eta left
    every copy a standby, and the task ran an offset late, or expired
    unrun when its ttl ended within that offset. A timer something else
    pushed past the copy's wait (a holder's answer, its news) stands."""
    if (task.standby and task.state == SCHEDULED and not task.attempt and not task.lessees
            and task.timer_at is not None and task.eta < task.timer_at <= task.due):
        due = max(task.eta, wall())
        task.copy_wait = due - task.eta
        role.engine.defer(task, due)


def _still_held(table: TaskTable, task: Task) -> bool:
    """``task`` is still this node's copy (live or dead), not finished,
    dropped or replaced by another copy of the same id."""
    return table.live.get(task.id) is task or table.dead.get(task.id) is task
