"""A CANCEL asked of a holder that is not the task's first: answered with
the first holder's answer (:class:`FirstHolderCancel`).

The first holder runs the task; the others hold standby copies, which know
of a start only from its ``S`` event, and never of a run that ended a
moment ago. Before 2026-12-06 a CANCEL at a standby holder cancelled its
copy and answered from it -- ``cancelled: true, state: scheduled`` -- while
the first holder ran the task (its worker then got ABORT from the ``F``
event), or had just finished it ``done``: the caller was told the task
would not run, and its holders ended split, ``done`` on the first and
``cancelled`` on the one asked (33 to 135 of 500 tasks of 0 s, SUBMIT then
CANCEL at once, three nodes: docs/cluster.md, "Cancelling at any holder").

Now a node whose copy is not the running one asks the task's first holder
(by its own view of the ring) to cancel it, over the peer link's control
channel (``CANCEL {"id"}``), and answers with its answer; the first holder
tells every holder (its ``F`` event), and the asking node finishes its own
copy at once, so a ``status`` there right after the answer agrees. A
first holder that has no copy yet (the asker's REPLICATE, or a handoff,
is still on its way) keeps the cancel as a tombstone, so that copy is not
stored when it comes, and says so (``held: false``) once its log has the
tombstone (:mod:`miyaq.core.cancels_ahead`: a restart keeps it); the asker then
cancels its own copy, and its ``F`` event tells the others. That is the
first holder's word only for a task made since the asker took its view
of the ring; for an older one (a ring change: the node asked may be a new
first holder whose handoff is on its way) the asker answers
``unconfirmed``, and so it does when the node asked cancelled a standby
copy (``standby: true``), which did not run the task.

When the first holder does not answer within its patience (at least
``FORWARD_TIMEOUT``; longer for a peer whose answers lately took longer,
:mod:`miyaq.cluster.answer_times`), its connection closes, it refuses
(a stopping node answers ``shutting_down``; a node of an older build
refuses the command with an answer that carries no ``req``, so it is
silence), or its answer fails the checks, the node cancels its
own copy and answers from it, marked ``unconfirmed: true``: the task may
be running, or have finished, on its first holder, which cancels it when
the ``F`` event reaches it. At most ``MAX_FORWARDED`` cancels wait for an
answer at once; more are answered so at once. A first holder that cannot
write its log answers ``busy`` (``storage``), and so does the asker:
nothing changed.

A node cancels on its own, as before, when it is the first holder by its
view, when the task runs here (a standby copy that took over), and when
the task is over here (a tombstone: it ended the same way on every
holder), but for an at-most-once task's ``started-elsewhere`` placeholder,
which is asked about too.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

from miyaq.cluster.peer_requests import CANCEL
from miyaq.constants import QUERY_TIMEOUT
from miyaq.errors import Busy, Forbidden, InvalidField, MiyaqError, NotFound, ShuttingDown
from miyaq.logs import LogLimiter
from miyaq.protocol import fields as f
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.protocol.taskspec import MAX_KEY, check_id
from miyaq.runtime import monotonic, wall
from miyaq.store.task import ALL_STATES, CANCELLED, READY, RETRYING, RUNNING, SCHEDULED

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)

FORWARD_TIMEOUT = QUERY_TIMEOUT
"""Seconds a forwarded CANCEL waits for the first holder at least (its
patience, as a QUERY's: :meth:`AnswerTimes.patience
<miyaq.cluster.answer_times.AnswerTimes.patience>`)."""
MAX_FORWARDED = 1024
"""Forwarded CANCELs awaiting their answer at once, at most; one more is
answered from this node's copy (``unconfirmed``)."""
ANSWER_STATES = frozenset((*ALL_STATES, STARTED_ELSEWHERE))
"""The states a first holder's answer may name."""


class FirstHolderCancel:
    """Cancels asked of this node (:meth:`cancel`) and of it by its peers (:meth:`serve`)."""

    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.engine = role.engine
        self.waiting = 0          # forwarded cancels awaiting an answer
        self.forwarded = 0        # forwarded, ever
        self.unconfirmed = 0      # answered from this node's copy because the first holder did not

    @property
    def keyless_ahead(self) -> OrderedDict[str, None]:
        """Ids of cancels kept ahead of their copy without a key, oldest first
        (at most ``MAX_KEYLESS_AHEAD``, :mod:`miyaq.core.cancels_ahead`): the
        only tombstones a key may be given later."""
        return self.engine.cancels_ahead.keyless

    # -- asked here ----------------------------------------------------------------------------
    def cancel(self, task_id: str, now: float, answer: Callable[[dict[str, Any] | MiyaqError], None]) -> None:
        """Cancel ``task_id`` and call ``answer`` once with the REPLY's
        fields (``cancelled``, ``state``, ``unconfirmed`` when only this
        node's copy answered) or the error to answer -- at once, or when
        the task's first holder answered (module doc). Raises ``NotFound``
        at once, nothing changed, for a task this node does not know."""
        target = self.target(task_id)
        if target is None:
            answer(self._here(task_id, now))
            return
        first, key = target
        if self.waiting >= MAX_FORWARDED:
            answer(self._unconfirmed(task_id, now))
            return
        self.waiting += 1
        self.forwarded += 1
        settled = False

        def answered(body: dict[str, Any] | None) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            self.waiting -= 1
            answer(self._answered(first, task_id, body))

        peer = self.role.peer
        wait = peer.answer_times.patience(first, FORWARD_TIMEOUT, monotonic())
        request: dict[str, Any] = {"id": task_id} if key is None else {"id": task_id, "key": key}
        peer.request(first, CANCEL, request, wait, answered, on_lost=lambda: answered(None))

    def target(self, task_id: str) -> tuple[str, str | None] | None:
        """The node to ask, by this node's view of the ring, and the task's
        key (None: it has none): the first holder of the task, or None when
        this node answers on its own (it is the first holder, the task runs
        here, or it is over here and not a ``started-elsewhere``
        placeholder). ``NotFound`` for a task unknown here."""
        table = self.engine.table
        task = table.live.get(task_id) or table.dead.get(task_id)
        if task is not None:
            if task.state == RUNNING:
                return None
            key, replicas = task.key, task.replicas
        else:
            stone = table.tombstone(task_id)
            if stone is None:
                raise NotFound(f"no task {task_id}")
            if stone.state != STARTED_ELSEWHERE:
                return None
            key, replicas = stone.key, 1
        holders = self.role.holders(key if key is not None else task_id, max(replicas, 1))
        if not holders or holders[0] == self.role.node_id:
            return None
        return holders[0], key

    def _here(self, task_id: str, now: float) -> dict[str, Any]:
        cancelled, state = self.engine.cancel(task_id, now)
        return {"cancelled": cancelled, "state": state}

    def _unconfirmed(self, task_id: str, now: float) -> dict[str, Any] | MiyaqError:
        """This node's own cancel, marked as not the first holder's answer."""
        self.unconfirmed += 1
        try:
            body = self._here(task_id, now)
        except MiyaqError as err:      # handed off meanwhile: not here any more
            return err
        body["unconfirmed"] = True
        return body

    def _answered(self, first: str, task_id: str, body: dict[str, Any] | None) -> dict[str, Any] | MiyaqError:
        """What to answer once the first holder answered ``body`` (None: silence).
        A node that began to stop meanwhile changes nothing more here (its
        log closes next): the first holder's answer is passed on, and what
        this node would have to change itself is answered ``shutting_down``
        (a client asks another node)."""
        now = wall()
        if body is None:
            return self._own(task_id, now)
        try:
            cancelled, state, held, busy, standby = check_answer(body)
        except InvalidField as err:
            self.role.refusals.refuse("answer", first, err)
            return self._own(task_id, now)
        if busy:
            return Busy(f"task {task_id}'s first holder, node {first}, cannot write its log now: nothing changed",
                        reason="storage")
        if not held:
            return self._stopping() or self._kept_ahead(task_id, now)
        if standby:      # its copy did not run: the task may run where it was placed
            return self._stopping() or self._after_a_standby(task_id, state, now)
        if cancelled and not self.role.stopped:
            self._finish_here(task_id, now)
        return {"cancelled": cancelled, "state": state}

    def _own(self, task_id: str, now: float) -> dict[str, Any] | MiyaqError:
        """The first holder did not answer: this node's own cancel, unconfirmed."""
        return self._stopping() or self._unconfirmed(task_id, now)

    def _after_a_standby(self, task_id: str, state: str, now: float) -> dict[str, Any] | MiyaqError:
        """The node asked cancelled a standby copy of its own (``state``, its
        copy's): this node cancels its copy, unconfirmed. That node's F event
        may have ended this copy already (it travels the stream, the answer
        the peer link): this call's cancel all the same, not ``cancelled:
        false`` (a full suite run once answered so)."""
        table = self.engine.table
        if task_id not in table.live and task_id not in table.dead:
            stone = table.tombstone(task_id)
            if stone is not None and stone.state == CANCELLED:
                self.unconfirmed += 1
                return {"cancelled": True, "state": state, "unconfirmed": True}
        return self._unconfirmed(task_id, now)

    def _stopping(self) -> ShuttingDown | None:
        if self.role.stopped:
            return ShuttingDown(f"node {self.role.node_id} is stopping")
        return None

    def _kept_ahead(self, task_id: str, now: float) -> dict[str, Any] | MiyaqError:
        """The first holder had no copy yet and keeps this cancel (a
        tombstone): this node's copy is cancelled and answers, and its F
        event tells the other holders. That answer is the first holder's
        only for a task made since this node took its view of the ring (so
        placed by it, the REPLICATE on its way): for an older one the ring
        changed since, the node asked may be a new first holder whose
        handoff is on its way while the old one runs the task, and the
        answer is ``unconfirmed``. The copy may be over already, ended
        by that very tombstone (this node coordinated the submit, and the
        first holder's answer to its REPLICATE said ``cancelled`` first):
        this call's cancel all the same, never ``cancelled: false``."""
        table = self.engine.table
        task = table.live.get(task_id) or table.dead.get(task_id)
        if task is not None:
            if task.created < self.role.view_since + self.role.config.replica_offset:
                # Made before this node took its view of the ring, or within an
                # offset of it (as CopyInstaller asks: another node may have
                # taken the new view later and placed the task by the old
                # one): the node asked may be a new first holder whose handoff
                # is on its way, while the one the task was placed with runs it.
                return self._unconfirmed(task_id, now)
            return self._here(task_id, now)
        stone = table.tombstone(task_id)
        if stone is None:
            return NotFound(f"no task {task_id} here any more (moved to other holders)")
        if stone.state == CANCELLED:
            return {"cancelled": True, "state": SCHEDULED}
        if stone.state == STARTED_ELSEWHERE:      # on a node that is not its first holder: a ring change
            return self._unconfirmed(task_id, now)
        return {"cancelled": False, "state": stone.state}

    def _finish_here(self, task_id: str, now: float) -> None:
        """The first holder cancelled the task (and tells every holder): this
        node's copy ends so now, not when its F event comes."""
        table = self.engine.table
        stone = table.tombstone(task_id)
        held = task_id in table.live or task_id in table.dead
        if held or (stone is not None and stone.state == STARTED_ELSEWHERE):
            with self.role.events.applying_remote():
                self.engine.finish_copy(task_id, CANCELLED, None, None, now)

    # -- asked by a peer -------------------------------------------------------------------------
    def serve(self, sender: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A peer's ``CANCEL {"id", "key"?}``: this node, the task's first
        holder by the peer's view, cancels it as a CANCEL of its own would,
        and answers ``{"cancelled", "state"}`` once its log has the
        cancellation; ``{"busy": "storage"}`` while the log cannot be
        written (nothing changed); ``standby: true`` too when its copy was
        a standby one (a ring change: the first holder the task was placed
        with may run it). A task it does not know yet is kept as
        cancelled (a tombstone holding ``key``, the task's, for the dedup
        window, as a cancelled task does: the copy on its way is not stored)
        and answered ``held: false`` once its log has the tombstone
        (``busy`` while it cannot be written, nothing kept) -- but only when this node is among
        the task's holders (``config.replicas`` of them) by its own view of
        the ring. A bad id or key is refused (``invalid_field``), as a
        SUBMIT's is; a sender that is not a ring member by this node's view,
        and a cancel ahead of a task this node would not hold, are refused
        ``forbidden`` (nothing changed; the asker answers from its copy,
        ``unconfirmed``)."""
        task_id = check_id(body.get("id"))
        key = f.string(body, "key", None, max_len=MAX_KEY)
        role = self.role
        if role.stopped:
            raise ShuttingDown(f"node {role.node_id} is stopping")
        if sender not in role.view.members:
            raise Forbidden(f"node {sender[:64]!r} is not a member of the ring as node {role.node_id} sees it: "
                            "it may not cancel here")
        table = self.engine.table
        now = wall()
        task = table.live.get(task_id) or table.dead.get(task_id)
        if task is not None:
            try:
                role.endpoint.check_writable()
            except Busy:
                return {"busy": "storage"}
            # (A copy asking about its key, key_verdicts.KeyChecks, is this first holder's own.)
            standby = (task.standby and task.state in (SCHEDULED, READY, RETRYING)
                       and task_id not in role.standby.key_checks.ids)
            cancelled, state = self.engine.cancel(task_id, now)
            answer: dict[str, Any] = {"cancelled": cancelled, "state": state}
            if standby:
                answer["standby"] = True
        elif (stone := table.tombstone(task_id)) is not None:
            if key is not None:
                self.take_key(task_id, key)
            return {"cancelled": False, "state": stone.state}
        else:
            if role.node_id not in role.holders(key if key is not None else task_id, max(role.config.replicas, 1)):
                raise Forbidden(f"node {role.node_id} is not a holder of task {task_id} by its view of the ring: "
                                "it keeps no cancel of a task it does not know")
            try:
                role.endpoint.check_writable()
            except Busy:
                return {"busy": "storage"}
            with role.events.applying_remote():      # the asker tells the others
                self.engine.cancels_ahead.keep(task_id, key, now)     # logged as any cancel
            _log.log(logging.DEBUG, "cancel ahead", "task %s: cancelled by %.64s before its copy came here",
                     task_id, sender)
            return self._when_stored({"cancelled": True, "state": SCHEDULED, "held": False})
        if cancelled:
            return self._when_stored(answer)
        return answer

    def _when_stored(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        """``answer`` to the peer's request once this node's log has every
        record buffered so far (as the fsync mode promises): returned, when
        it has them already (no log), else sent later (None returned)."""
        reply: Callable[[dict[str, Any]], None] | None = None
        stored = False

        def release() -> None:
            nonlocal stored
            stored = True
            if reply is not None:
                reply(answer)

        self.role.endpoint.after_stored(release)
        if stored:
            return answer
        reply = self.role.peer.later()
        return None

    def take_key(self, task_id: str, key: str) -> None:
        """The tombstone of a cancel kept here ahead of its copy without a
        key (:attr:`keyless_ahead`) takes ``key`` -- the copy's, or a later
        CANCEL's -- unless another task holds it here, and the log has it
        (:meth:`CancelsAhead.take_key <miyaq.core.cancels_ahead.CancelsAhead.take_key>`).
        Any other tombstone is left as it is: before 2026-12-06 any keyless
        one took any key a CANCEL named, so a peer could make a finished
        task's tombstone hold an unrelated key, and a new task of that key
        was answered ``duplicate`` of it and never ran (an audit)."""
        self.engine.cancels_ahead.take_key(task_id, key)


def check_answer(body: dict[str, Any]) -> tuple[bool, str, bool, bool, bool]:
    """A first holder's answer to CANCEL, checked: ``(cancelled, state,
    held, busy, standby)``. ``InvalidField`` for one that is not
    ``{"cancelled": bool, "state": a task state, "held"?: bool,
    "standby"?: bool}`` or ``{"busy": "storage"}``."""
    if body.get("busy") == "storage":
        return False, "", True, True, False
    cancelled, state = body.get("cancelled"), body.get("state")
    held, standby = body.get("held", True), body.get("standby", False)
    if type(cancelled) is not bool or type(held) is not bool or type(standby) is not bool:
        raise InvalidField("a CANCEL answer's 'cancelled', 'held' and 'standby' must be booleans", field="answer")
    if not isinstance(state, str) or state not in ANSWER_STATES:
        raise InvalidField("a CANCEL answer's 'state' must be a task state", field="answer")
    return cancelled, state, held, False, standby
