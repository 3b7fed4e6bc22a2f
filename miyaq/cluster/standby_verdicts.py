"""What the answers to a standby copy's QUERY decide for it, once every
member asked answered or stayed silent: :class:`StandbyVerdicts`, a base of
:class:`~miyaq.cluster.standby.StandbyChecker`, which asks them, gathers
their answers (moved onto this node's clock, checked: one that fails its
checks counts as silence) and keeps the counts (``_wait``, ``_take_over``).
Per task:

- this node is fenced (cut off from ZooKeeper, see ``ClusterRole.fenced``),
  its ZooKeeper session ended and it has no new one yet (frozen past the
  session's timeout: its registration is gone and the ring may have gone
  on without it), has no ring yet (just started: no holder can be told from a departed
  node), or is no longer a holder (the copy was handed off and is kept only until its
  new holders confirm it) → wait an offset: the others run it;
- this node is reconciling (restarted from its log, resumed from a freeze,
  fence just lifted: its peer links and its view of the ring may not be up
  yet, and silence from a peer it cannot reach yet is no evidence) → the
  copy is parked, and asks once the reconcile ended (:meth:`~miyaq.cluster.standby.StandbyChecker.unpark`);
- a holder that finished it (done, cancelled, expired, started under
  at-most-once) → this copy finishes the same way; so does the copy of an
  at-most-once task that a holder runs (``started-elsewhere``);
- a holder that dead-lettered it → this copy is dead-lettered too;
- a holder ranked before this copy that does not know the task yet (it
  just joined the ring or came back, and the handoff that brings it its
  copy is on its way) → wait one offset, at most ``UNKNOWN_WAITS`` times;
- a holder that holds it ready or running, or holds a standby copy and has
  a smaller node id (ranks are not compared: they come from views of the
  ring that may disagree during a change, and two standby copies asking
  each other at once must not both run) → push this copy's timer out by
  one offset and ask again then;
- a holder that answered but left the id out (its answer was full) → ask
  again after one offset;
- a holder silent to this node's QUERY whose own standby copy asked this
  node about the task meanwhile counts as that standby copy
  (:meth:`~miyaq.cluster.standby.StandbyChecker._heard_asking`): it is
  alive, only one direction of the link is not carrying yet;
- otherwise (every other holder silent, unaware of it, or a standby with a
  larger node id) → take over: the copy becomes ready here, and its start
  is announced to the others like any start -- unless another holder's
  news re-armed the copy while it asked (a STARTED or TOUCH event, a
  resync): that timer stands, whatever the answers.

A key check -- a keyed copy of rank 0 on a node new to its key
(:class:`~miyaq.cluster.key_verdicts.KeyChecks`) -- ends as a duplicate of
the task another member says holds the key (and its other holders' copies
end with it), else runs once the answers are in, without waiting for later
holders' standby copies.

Only silence, ``unknown`` or a standby copy of a larger node id lets a copy
run; a copy that something else moved while it asked is left as it is.
The waits for an earlier holder unaware of the task are bounded:
``UNKNOWN_WAITS`` a copy, ``MAX_UNKNOWN_WAITING`` copies counted at once.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from miyaq.core.replicas import key_winner
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.store.task import DEAD, READY, RETRYING, RUNNING, SCHEDULED, Task

if TYPE_CHECKING:
    from miyaq.cluster.key_verdicts import KeyChecks
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger("miyaq.cluster.standby")     # the standby copies' lines: one logger to follow them

FINAL = ("done", "cancelled", "expired", "started-elsewhere")
UNKNOWN_WAITS = 3
"""Offsets a standby copy waits for an earlier-ranked holder that does not
know the task yet (handoffs are retried every few seconds)."""
MAX_UNKNOWN_WAITING = 100_000
#: An id a holder left out of its answer (it was full): asked again later.
LATER = "later"

Answers = list[tuple[str, list[Any]]]


class StandbyVerdicts:
    """A standby copy's answers, and what they decide: the part of the
    standby checker that decides."""

    if TYPE_CHECKING:   # what the checker provides
        role: ClusterRole
        parked: dict[str, Task]
        key_checks: KeyChecks
        _unknown_waits: dict[str, int]

        def _wait(self, task: Task, base: float) -> None: ...

        def _take_over(self, task: Task, now: float) -> None: ...

    def _decide(self, task: Task, answers: Answers, now: float) -> None:
        role = self.role
        engine = role.engine
        if task.state not in (SCHEDULED, RETRYING) or not task.standby:
            self.key_checks.ids.discard(task.id)
            return   # something else moved it meanwhile
        if task.timer_at is not None:
            # Re-armed while it asked: another holder's news (its STARTED or
            # TOUCH event, a retry, a resync) says it runs the task. That timer
            # stands, whatever the answers; silence from a holder that is
            # busy is not evidence against news it already sent.
            return
        if role.fenced() or role.node_id not in task.holders or role.coordinator.session_lost():
            # Fenced meanwhile, handed off by a ring change, or its session ended
            # (frozen past its timeout: the ring may have gone on without it, and
            # its view be too old to say who else holds the copy).
            self._wait(task, now)
            return
        if role.reconciling:
            self.parked[task.id] = task     # frozen or fenced meanwhile: ask again after the resync
            return
        key_check = task.id in self.key_checks.ids
        self.key_checks.ids.discard(task.id)
        with role.events.applying_remote():
            for _, a in answers:
                if a[0] in FINAL:
                    error = a[2] if len(a) > 2 else None
                    if key_check and self.key_checks.lost_here(key_winner(task.id, error), task.id):
                        continue
                    engine.finish_copy(task.id, a[0], a[1] if len(a) > 1 else None, error, now)
                    if key_check and key_winner(task.id, error) is not None:
                        # Its key is held by another task: the copies of the task's
                        # other holders end too, now rather than when they ask.
                        role.events.forward_finished(task.id, (a[0], a[1], error),
                                                     [h for h in task.holders if h != role.node_id])
                    return
                if a[0] == DEAD:
                    engine.kill_copy(task, task.error)
                    return
            if task.at_most_once and any(a[0] == RUNNING for _, a in answers):
                # The news a lost STARTED event carried: an at-most-once task
                # that started elsewhere ends every other copy.
                engine.finish_copy(task.id, STARTED_ELSEWHERE, None, None, now)
                return
        earlier_unaware = [h for h, a in answers if a[0] == "unknown" and h in task.holders
                           and task.holders.index(h) < task.rank]
        waits = self._unknown_waits.pop(task.id, 0)
        if earlier_unaware and waits < UNKNOWN_WAITS:
            if len(self._unknown_waits) >= MAX_UNKNOWN_WAITING:
                self._unknown_waits.clear()
            self._unknown_waits[task.id] = waits + 1
            self._wait(task, now)
            return
        # Wait for the latest of the reasons to wait, whichever order the
        # answers came in (a runner's lease end outlasts a standby's turn).
        until: float | None = None
        for holder, a in answers:
            state = a[0]
            active = state in (READY, RUNNING, LATER) or (state in (SCHEDULED, RETRYING) and not a[1])
            # Between two standby copies the smaller node id goes first, whatever
            # their ranks: ranks come from views of the ring that may disagree.
            # A key check (rank 0 here) does not wait for a later holder's: that
            # one waits for it (and does not ask early when asked by it: Copies.on_query).
            first_standby = (state in (SCHEDULED, RETRYING) and a[1] and holder < role.node_id
                             and not (key_check and a[2] > 0))
            if active or first_standby:
                later = max(now, a[3] if state == RUNNING and len(a) > 3 else now)
                until = later if until is None else max(until, later)
        if until is not None:
            self._wait(task, until)
            return
        if key_check:
            logger.debug("task %s: no other member holds its key %r; running it here", task.id, task.key)
            engine.take_over(task, now)
            return
        self._take_over(task, now)
