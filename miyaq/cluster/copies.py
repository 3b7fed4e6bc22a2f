"""This node's copies of replicated tasks: the peer requests about them.

* REPLICATE (a submit's copy, or a handed-off task): install
  (:meth:`miyaq.cluster.install.CopyInstaller.install`) each record that passes the checks a SUBMIT passes
  (:mod:`miyaq.protocol.recordspec`; a refused one is counted and logged with
  its sender, never stored), answer with the ids stored -- once they are in this node's
  log, as on the node that took the submit -- and with the outcome of those
  this node already saw finish (the sender must not run them again);
* QUERY (a standby copy asking before it runs): how this node holds each id
  (and, for a copy that names its key, whether another task holds it here).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable

from miyaq.cluster.ends_ahead import finish_unknown
from miyaq.cluster.install import CopyInstaller
from miyaq.cluster.key_verdicts import held_elsewhere
from miyaq.cluster.peer_clock import clock_shift
from miyaq.cluster.peer_versions import ROWS
from miyaq.cluster.sizes import EVENT_ALLOWANCE, PEER_MESSAGE_BYTES, outcome_size
from miyaq.constants import MAX_QUERY
from miyaq.core.replicas import lost_key_error
from miyaq.errors import InvalidField
from miyaq.logs import LogLimiter
from miyaq.protocol.recordspec import (
    Outcome, check_attempt, check_error, check_outcome, check_stone,
)
from miyaq.runtime import wall
from miyaq.store.task import CANCELLED, DEAD, READY, RETRYING, RUNNING, SCHEDULED

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)      # a full node refuses whole batches: a few lines a minute


class Copies:
    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.engine = role.engine
        self.installer = CopyInstaller(role)
        self.refused_for_storage = 0     # copies refused at once: this node's log could not be written

    # -- peer requests --------------------------------------------------------------
    def on_replicate(self, sender: str, body: dict[str, Any]) -> dict[str, Any] | None:
        records = body.get("tasks")
        stones = body.get("stones")
        if not isinstance(records, list) and not isinstance(stones, list):
            return {"ids": []}
        now = wall()
        if isinstance(stones, list):
            # Outcomes a handoff carries (tasks that ended before a ring change
            # made this node one of their holders): kept whatever this node's
            # view of the ring -- a finished task has no copy to misplace.
            self.keep_outcomes(sender, stones, "handoff", now)
        if not isinstance(records, list):
            records = []
        why = self.role.barrier.why_not_writable()
        if why:
            return self.refuse_for_storage(sender, records, why)
        stored: list[str] = []
        sent_dead: set[str] = set()     # stored records sent dead need no "dead" back
        lost_keys = self.installer.lost_keys = {}     # filled by install(): id -> the task that holds its key
        shift = clock_shift(body.get("clock"), now)
        rows = body.get("proto", 1) >= ROWS      # checked: a version this node speaks (peer_versions)
        for r in records:
            if type(r) is dict:
                source = "handoff" if "state" in r else "replicate"
                if self.installer.install(r, now, source, sender, shift):
                    stored.append(r["id"])      # installed: checked, so a valid id
                    if r.get("state") == DEAD:
                        sent_dead.add(r["id"])
            elif self.installer.install(r, now, "replicate", sender, shift, rows):
                stored.append(r[0])     # a row (recordrow), checked
        table = self.engine.table
        finished = {}
        dead = {}
        left_out: list[str] = []
        # Past half the answer's room a result is left out (the state alone
        # stops a second run) and its id listed in "results_left_out": the
        # asker's standby copy asks the holders for it (QUERY) rather than
        # finish without it. Not bounded by PEER_MESSAGE_BYTES: an asker of
        # an older build cannot tell a result left out from none, and stores
        # and forwards the outcome without it.
        room = self.role.config.max_message // 2
        live = table.live
        ends_ahead = table.ends_ahead
        for task_id in stored:
            if task_id in live:
                continue        # the common case: a copy stored, waiting (no tombstone to look up)
            if ends_ahead and task_id in ends_ahead:
                table.release_end_ahead(task_id)    # its copy came: a finished task's tombstone now
            stone = table.tombstone(task_id)
            if stone is not None:
                room -= outcome_size(stone.result, stone.error)
                if room < 0 and stone.result is not None:
                    left_out.append(task_id)
                finished[task_id] = [stone.state, stone.result if room >= 0 else None, stone.error]
            elif task_id in table.dead and task_id not in sent_dead:
                task = table.dead[task_id]
                room -= outcome_size(None, task.error)
                dead[task_id] = [task.attempt, task.error if room >= 0 else None]
        answer: dict[str, Any] = {"ids": stored, "epoch": self.role.view.epoch}   # a refusal on an older ring
        if finished:
            answer["finished"] = finished     # the sender must not run these again
        if left_out:
            answer["results_left_out"] = left_out     # finished with a result this answer had no room for
        if dead:
            answer["dead"] = dead             # nor these: dead-lettered here
        if lost_keys:
            answer["duplicates"] = lost_keys     # not stored: another task holds the key (first holder)
            self.installer.lost_keys = {}
        # A copy counts as stored once it is in this node's log, as on the
        # node that took the submit: answer only after the write.
        # A write that fails first refuses them at once, as a REPLICATE that
        # comes while the log cannot be written is refused (refuse_for_storage).
        reply = self.role.peer.later()
        self.role.barrier.after_written(lambda: reply(answer),
                                        lambda why: reply({**answer, **self.refuse_for_storage(sender, records, why)}))
        return None

    def refuse_for_storage(self, sender: str, records: list[Any], why: str) -> dict[str, Any]:
        """The answer, at once, to a REPLICATE of ``records`` while this
        node's log cannot be written (``why``, in a few words): nothing
        stored -- a copy counts as stored once it is in the log, and no
        write can put it there now -- and ``busy: "storage"`` with ``why``
        as its ``message``, so the coordinator ends the copy's part of the
        submit now, saying why, instead of at its deadline. Before
        2026-12-07 this answer (with no id stored) waited for the log like
        any other and never went while the fault lasted: the coordinator
        heard silence for ``replication_timeout``. An older coordinator
        reads a copy not stored, as from a full node. Counted in
        :attr:`refused_for_storage` (STATUS ``cluster.copies_refused_storage``)
        and logged a few lines a minute."""
        self.refused_for_storage += len(records)
        if records:
            _log.warning("storage", "refused %d cop%s from %s: this node cannot write its log (%s); nothing stored, "
                         "%d copies refused so far -- it takes copies again once a write succeeds (free the "
                         "disk: docs/operations.md, \"The node's disk is full\")", len(records),
                         "y" if len(records) == 1 else "ies", sender, why, self.refused_for_storage)
        return {"ids": [], "epoch": self.role.view.epoch, "busy": "storage", "message": why}

    def keep_outcomes(self, sender: str, stones: list[Any], source: str, now: float,
                      held: Callable[[str, str | None], bool] | None = None) -> int:
        """Tombstones ``sender`` sent (``[id, state, result, error, key]``, each
        checked like a SUBMIT first; a bad one is refused, counted and
        skipped): a copy this node holds (live or dead) finishes as the task
        did; an id this node has no trace of is kept as a tombstone -- when
        ``held`` (task id, key) says this node holds it, or always when there
        is no ``held`` -- so status, result and dedup by id and key answer
        here too and a late copy or a resubmit cannot run it again: counted
        apart from ``max_tombstones``, none kept past that bound
        (:mod:`miyaq.cluster.ends_ahead`). Returns how many were kept or
        applied."""
        table = self.engine.table
        kept = 0
        with self.role.events.applying_remote():
            for stone in stones:
                try:
                    task_id, state, result, error, key = check_stone(stone, self.role.config)
                except InvalidField as err:
                    self.role.refusals.refuse(source, sender, err)
                    continue
                if task_id in table.live or task_id in table.dead:
                    self.engine.finish_copy(task_id, state, result, error, now)
                elif task_id in table.tombstones or not (held is None or held(task_id, key)):
                    continue
                elif not finish_unknown(self.engine, task_id, state, result, error, now, key):
                    continue        # past the bound of ends heard ahead (cluster.ends_ahead)
                kept += 1
        return kept

    def on_query(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        ids = body.get("ids")
        if not isinstance(ids, list):
            return {"states": {}}
        # Ids past MAX_QUERY, past max_message of answer or past
        # PEER_MESSAGE_BYTES of results are left out: the asker asks about
        # those again later.
        states: dict[str, list[Any]] = {}
        room, results = self.role.config.max_message, PEER_MESSAGE_BYTES
        # A copy new to its key asks about the key too (key_verdicts.KeyChecks).
        keys = body.get("keys")
        keys = keys if isinstance(keys, dict) else {}
        now = wall()
        for i in ids[:MAX_QUERY]:
            if isinstance(i, str) and i not in states:
                state = describe(self.role, i)
                if state[0] == "unknown" and i in keys:
                    state = held_elsewhere(self.engine.table, i, keys[i], now, self.role.config.dedup_window,
                                           self.role.standby.key_checks.ids) or state
                if i not in keys:       # a key check is no standby copy waiting for this one's turn
                    self.role.standby.asked_about(i, sender)
                size = outcome_size(state[1], state[2]) if len(state) == 3 else EVENT_ALLOWANCE
                room, results = room - size, results - (size - EVENT_ALLOWANCE)
                if room < 0 or (results < 0 and states):
                    break
                states[i] = state
        return {"states": states}

    # -- copies -----------------------------------------------------------------------
    def dead_known(self, sender: str, dead: dict[Any, Any], holders: Mapping[str, Sequence[str]]) -> list[str]:
        """``sender`` answered our REPLICATE of the ids in ``holders`` saying it
        holds these tasks dead-lettered (``{id: [attempt, error]}``): our copy
        that still waits is dead-lettered the same way, and each task's other
        holders are told (a ``D`` event) -- the DEAD event may never have
        reached us, and the node that dead-lettered the task may be gone by
        the time our copy would ask. A copy running here reports for itself.
        Returns the ids that passed the checks (a bad item is refused and
        counted; an id we did not ask about is ignored)."""
        table = self.engine.table
        checked: dict[str, tuple[int, dict[str, Any] | None]] = {}
        with self.role.events.applying_remote():
            for task_id, item in dead.items():
                if not (isinstance(task_id, str) and task_id in holders):
                    continue
                try:
                    if not isinstance(item, list) or len(item) != 2:
                        raise InvalidField("a dead task must be [attempt, error]", field="answer")
                    checked[task_id] = (check_attempt(item[0]), check_error(item[1]))
                except InvalidField as err:
                    self.role.refusals.refuse("answer", sender, err)
                    continue
                task = table.live.get(task_id)
                if task is not None and task.state in (SCHEDULED, READY, RETRYING):
                    attempt, error = checked[task_id]
                    task.attempt = max(task.attempt, attempt)
                    self.engine.kill_copy(task, error)
        me = self.role.node_id
        for task_id, (attempt, error) in checked.items():
            others = [h for h in holders[task_id] if h != sender and h != me]
            if others:
                self.role.events.forward_dead(task_id, attempt, error, others)
        return list(checked)

    def finish_known(self, sender: str, finished: dict[Any, Any], holders: Mapping[str, Sequence[str]],
                     left_out: Any = None) -> list[str]:
        """``sender`` answered our REPLICATE (a submit's copies, or a handoff)
        of the ids in ``holders`` (id -> the task's holders) saying it already
        finished these tasks: finish our copies the same way -- a tombstone,
        not a dropped copy -- and tell each task's other holders. One of them
        may have just stored a live copy from this same REPLICATE, and nobody
        else would tell it the task is over: the finisher announced the end
        before that node had a copy, and the copy runs if the finisher is
        silent when it asks. Returns the ids whose outcome passed the checks
        (a bad one is refused and counted; an id we did not ask about is
        ignored).

        ``left_out`` (the answer's ``results_left_out``) names the ids whose
        result the answer had no room for: a standby copy of one of those
        (a client's resend is one) is neither finished nor announced -- it
        asks the holders before it runs, and a QUERY answer carries the
        result; any other copy finishes without the result, as the answer
        said (it must not run again), and a debug line says so."""
        now = wall()
        config = self.role.config
        missing = {i for i in left_out if isinstance(i, str)} if isinstance(left_out, list) else set()  # untrusted
        table = self.engine.table
        checked: dict[str, Outcome] = {}
        with self.role.events.applying_remote():
            for task_id, outcome in finished.items():
                if not (isinstance(task_id, str) and task_id in holders):
                    continue
                try:
                    if not isinstance(outcome, list) or len(outcome) != 3:
                        raise InvalidField("a finished task must be [state, result, error]", field="answer")
                    checked[task_id] = check_outcome(outcome[0], outcome[1], outcome[2], config)
                except InvalidField as err:
                    self.role.refusals.refuse("answer", sender, err)
                    continue
                if task_id in missing and checked[task_id][1] is None:
                    task = table.live.get(task_id)
                    if task is not None and task.standby:
                        del checked[task_id]        # it asks, and the answer brings the result
                        continue
                    logger.debug("task %s finished on %s with a result its answer left out: our copy "
                                 "ends without it", task_id, sender)
                if task_id in table.live:
                    self.engine.finish_copy(task_id, *checked[task_id], now)
        me = self.role.node_id
        for task_id, outcome in checked.items():
            others = [h for h in holders[task_id] if h != sender and h != me]
            if others:
                self.role.events.forward_finished(task_id, outcome, others)
        return list(checked)

    def end_as_duplicates(self, sender: str, winners: Mapping[str, tuple[str | None, str]],
                          holders: Mapping[str, Sequence[str]]) -> None:
        """``sender`` answered our REPLICATE that these copies (id -> (their
        key, the task holding it)) are duplicates by key, and their submits
        are answered ``duplicate`` of that task: end our copies so, and tell
        each task's other holders (:meth:`finish_known`). The answer and the
        task's fate then agree whoever said it: an honest first holder ended
        its copy so and told the others already (what it sends again is
        ignored where the copy ended), and a buggy or hostile holder's word
        cannot make a submit answered ``duplicate`` while the task runs."""
        self.finish_known(sender, {task_id: [CANCELLED, None, lost_key_error(key, winner)]
                                   for task_id, (key, winner) in winners.items()}, holders)


def describe(role: ClusterRole, task_id: str) -> list[Any]:
    """How this node holds ``task_id`` (the QUERY answer for one id)."""
    table = role.engine.table
    task = table.live.get(task_id)
    if task is not None:
        # A copy asking about its key runs next unless the key is held: to the
        # others it is the first holder's copy, not a standby one (they wait for it).
        standby = task.standby and task_id not in role.standby.key_checks.ids
        return [task.state, standby, task.rank, task.lease_end if task.state == RUNNING else task.eta]
    if task_id in table.dead:
        return [DEAD]
    stone = table.tombstone(task_id)
    if stone is not None:
        return [stone.state, stone.result, stone.error]
    return ["unknown"]
