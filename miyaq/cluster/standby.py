"""Standby copies: before a copy that is not the runner's runs, it asks.

When a standby copy's timer fires (``task_due_elsewhere``), this node asks
every other live member of the ring about the task (QUERY, batched per
member) — Disque's WILLQUEUE. Not only its holders: during a ring change a
holder by the older ring that has not heard of the new one yet may still
run the task, and only its answer says so (a member that never held the
task answers ``unknown``, which lets the copy run). Per task:

- this node is fenced (cut off from ZooKeeper, see ``ClusterRole.fenced``),
  its ZooKeeper session ended and it has no new one yet (frozen past the
  session's timeout: its registration is gone and the ring may have gone
  on without it), has no ring yet (just started: no holder can be told from a departed
  node), or is no longer a holder (the copy was handed off and is kept only until its
  new holders confirm it) → wait an offset: the others run it;
- this node is reconciling (restarted from its log, resumed from a freeze,
  fence just lifted: its peer links and its view of the ring may not be up
  yet, and silence from a peer it cannot reach yet is no evidence) → the
  copy is parked, and asks once the reconcile ended (:meth:`StandbyChecker.unpark`);
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
- otherwise (every other holder silent, unaware of it, or a standby with a
  larger node id) → take over: the copy becomes ready here, and its start
  is announced to the others like any start -- unless another holder's
  news re-armed the copy while it asked (a STARTED or TOUCH event, a
  resync): that timer stands, whatever the answers.

A keyed copy of rank 0 on a node new to its key asks about the key too
(:class:`~miyaq.cluster.key_verdicts.KeyChecks`): it ends as a duplicate
of the task another member says holds the key, else runs once the answers
are in, without waiting for later holders' standby copies.

Only silence lets a copy run; that is what keeps duplicates to real failures.
An answer that fails its checks (:mod:`miyaq.protocol.recordspec`) counts as
silence from that holder, and is counted and logged as a refused record.

A node restarted from its log, resumed from a freeze or whose fence
lifted turns every copy that came due meanwhile into a standby copy
(:meth:`StandbyChecker.ask_first`), whatever its rank: another holder may
have run and finished the task meanwhile (it heard silence from this node),
and the finish may be one the reconcile has not brought back (it ends on a
timeout, and a holder may take over just after it answered). Copies not due
yet keep their timers, but ask too when they come due: no other holder can
have run them (a standby copy asks this node first, and it answers by
then), but one may have cancelled them, and a resync brings back only the
source's newest 5,000 ends (before 2026-12-05 such a copy of rank 0 ran at
its eta: a far-eta task cancelled during a restart ran after it, on a busy
cluster).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable

from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.cluster.key_verdicts import KeyChecks
from miyaq.cluster.peer_clock import EXPIRED_AT_ONCE, clock_shift, moved
from miyaq.cluster.peer_requests import QUERY
from miyaq.constants import MAX_QUERY, QUERY_TIMEOUT
from miyaq.core.listener import EngineListener
from miyaq.core.replicas import key_winner
from miyaq.errors import InvalidField
from miyaq.logs import LogLimiter
from miyaq.protocol.eventspec import check_state_answer
from miyaq.runtime import green, monotonic, wall
from miyaq.store.task import DEAD, READY, RETRYING, RUNNING, SCHEDULED, Task

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)
# A frozen or lost holder can make thousands of copies take over at once: a
# few lines a minute name examples, the rest are counted (STATUS ``takeovers``).
_log = LogLimiter(logger)

ASK_FIRST_SLICE = 4096
"""Tasks :meth:`StandbyChecker.ask_first` looks at between two chances to
yield the hub (about 10 ms of work)."""

FINAL = ("done", "cancelled", "expired", "started-elsewhere")
UNKNOWN_WAITS = 3
"""Offsets a standby copy waits for an earlier-ranked holder that does not
know the task yet (handoffs are retried every few seconds)."""
MAX_UNKNOWN_WAITING = 100_000
#: An id a holder left out of its answer (it was full): asked again later.
LATER = "later"
REFUSED_PAUSE = 0.01
"""Seconds a QUERY whose send was refused waits before it is sent again
(the link to that holder is not up yet: a new CURVE connection refuses
sends until its handshake is done, 1-25 ms); doubled at each refusal, at
most ``REFUSED_PAUSE_MAX``. Tries end at the QUERY's deadline."""
REFUSED_PAUSE_MAX = 0.2


Answers = list[tuple[str, list[Any]]]
Checks = dict[str, tuple[Task, Answers, set[str]]]
"""Per task id being asked about: the copy, the (holder, answer) pairs so far, the holders still to answer."""


class StandbyChecker(EngineListener):
    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.due: list[Task] = []
        self.asking: set[str] = set()       # ids whose QUERY answers are not all in
        self.parked: dict[str, Task] = {}      # came due while the node reconciled; asked after
        self.takeovers = 0
        self.deferrals = 0
        self.queries_refused = 0     # QUERY sends the link refused (each asked again, within the deadline)
        self._unknown_waits: dict[str, int] = {}     # task id -> waits for an earlier holder that lacks it
        self.key_checks = KeyChecks(role)     # rank-0 keyed copies that ask about their key first

    def asked_about(self, task_id: str) -> None:
        """Another holder asks about ``task_id`` (its copy is due and asks
        before it runs). If this node's copy is a standby copy whose eta
        passed, that no holder started (no attempt, no lessee) and that
        waits out its rank's offsets to a later timer -- not one an answer
        or news pushed out since (a holder runs the task) --, it asks and
        decides now instead: the asker waits for a standby copy of a
        smaller node id -- maybe this one --, and asking is always safe
        (only silence, or standby copies of larger ids, lets a copy run).

        Only for a task that came due an offset or more after this node
        took its view of the ring: one due earlier may have been placed by
        an older ring whose first holder started it without the holders
        of this one knowing yet, and the copies' offsets are that holder's
        time to announce the start (the same rule as a SYNC answer's copy,
        :meth:`~miyaq.cluster.install.CopyInstaller.install`). Not a copy
        waiting for an earlier holder that lacks the task (its waits are
        counted in offsets).

        Before 2026-12-06, after a planned restart of a task's first holder
        every copy of a delayed task could be a standby copy, and at the
        eta the task waited for the copy of the smallest id, armed up to
        two offsets later (the rolling-restart audit: a third of 300
        delayed tasks 10 s late)."""
        task = self.role.engine.table.live.get(task_id)
        if (task is None or not task.standby or task.state != SCHEDULED or task.attempt or task.lessees
                or task.timer_at is None or task_id in self._unknown_waits):
            return
        if task.eta < self.role.view_since + self.role.replica_offset(task):
            return
        now = wall()
        # Its timer still its rank's wait (Task.due), not pushed out since by an
        # answer or news (a holder runs it): that copy stays where it was put.
        if task.eta <= now < task.timer_at <= task.due:
            task.copy_wait = max(0.0, now - task.eta)
            self.role.engine.defer(task, now)

    def task_due_elsewhere(self, task: Task) -> None:
        self.due.append(task)

    def waiting(self) -> set[str]:
        """Copies without a timer for now: due, asking the other holders
        (each QUERY ends, answered or silent, within QUERY_TIMEOUT), or
        parked until the node's reconcile ends."""
        return self.asking | {t.id for t in self.due} | set(self.parked)

    def ask_first(self, tasks: Iterable[Task], now: float) -> int:
        """After a gap in what this node heard (restarted from its log, frozen,
        fenced): each copy that has other holders and is due (ready, or its
        timer passed meanwhile) becomes a standby copy that asks them before
        it runs -- another holder may have run it meanwhile. Returns how many.

        The tasks are looked at in slices of ``ASK_FIRST_SLICE``, yielding
        the hub between two once this pass has had its share
        (:class:`~miyaq.runtime.green.FairShare`): a million ready copies
        take seconds, and the node's heartbeats, readers and timers run
        meanwhile. Dispatching is held (the reconcile) while this runs."""
        engine = self.role.engine
        count = 0
        share = green.FairShare()
        for i, task in enumerate(list(tasks)):
            if i % ASK_FIRST_SLICE == 0:
                share.check()
            if len(task.holders) < 2 or task.state not in (READY, SCHEDULED, RETRYING):
                continue
            if task.state != READY and (task.due if task.state == SCHEDULED else task.eta) > now:
                # Not due: nobody can have run it (a standby asks this node
                # first), but it may have been cancelled meanwhile, and the
                # resync brings back only the newest ends: it asks at its eta.
                task.standby = True
                continue
            task.standby = True
            engine.defer(task, now, SCHEDULED if task.state == READY else task.state)
            count += 1
        return count

    def unpark(self) -> None:
        """The reconcile ended: the copies that came due meanwhile ask now."""
        parked, self.parked = self.parked, {}
        self.due.extend(parked.values())

    def flush(self) -> None:
        """Ask about every copy that came due (one QUERY per holder). Nothing
        once the node stops (:attr:`ClusterRole.stopped`): its log closes next."""
        if not self.due or self.role.stopped:
            return
        due, self.due = self.due, []
        role = self.role
        alive = role.view.members
        departed = role.departed()
        asks: dict[str, list[str]] = {}
        checks: Checks = {}
        now = wall()
        fenced = role.fenced()
        for task in due:
            if task.state not in (SCHEDULED, RETRYING) or not task.standby:
                continue
            if fenced or not alive or role.node_id not in task.holders:
                self._wait(task, now)
                continue
            if role.reconciling:
                self.parked[task.id] = task
                continue
            # Every live member, not only the holders by this node's ring: during
            # a ring change a holder of the older ring may still run the task
            # (it has not heard of the new one), and only its answer says so.
            # And the nodes that left the ring lately: one drained with `miyaq
            # leave` runs its tasks to their end (before 2026-12-05 it was not
            # asked, and its running task was taken over).
            others = [h for h in alive if h != role.node_id]
            if task.id not in self.key_checks.ids or task.replicas < 2:
                # (A key check, a new task, runs nowhere else; what a node gone
                # knew of its key, another old holder knows: not waited for.)
                others += [h for h in departed if h not in alive]
            if not others:
                self._take_over(task, now)
                continue
            checks[task.id] = (task, [], set(others))
            self.asking.add(task.id)
            for h in others:
                asks.setdefault(h, []).append(task.id)
        for holder, ids in asks.items():
            for start in range(0, len(ids), MAX_QUERY):
                chunk = ids[start:start + MAX_QUERY]
                # Waits longer for a holder that lately answered slowly (a narrow link:
                # miyaq.cluster.answer_times): its slowness is not silence.
                mono = monotonic()
                wait = role.peer.answer_times.patience(holder, QUERY_TIMEOUT, mono)
                self._ask(holder, chunk, checks, mono + wait, REFUSED_PAUSE)

    def _ask(self, holder: str, ids: list[str], checks: Checks, deadline: float, pause: float) -> None:
        """Send ``holder`` a QUERY about ``ids`` that it answers by
        ``deadline`` (monotonic). A send the link refuses (not up yet, or
        gone) asked nobody: it is sent again after ``pause`` seconds, twice
        as long each time, until the deadline -- and a holder whose link
        refused every send until then counts as silent, as one cut off must
        (only then: before 2026-12-06 a refused send was silence at once)."""
        if self.role.stopped:
            return
        left = deadline - monotonic()
        if left <= 0:
            self._answered(holder, ids, None, checks)
            return
        body: dict[str, Any] = {"ids": ids}
        keys = {i: checks[i][0].key for i in ids if i in self.key_checks.ids and i in checks}
        if keys:
            body["keys"] = keys      # a member that holds one by another task says so (held_elsewhere)
        self.role.peer.request(holder, QUERY, body, left, self._callback(holder, ids, checks),
                               refused=lambda: self._refused(holder, ids, checks, deadline, pause))

    def _refused(self, holder: str, ids: list[str], checks: Checks, deadline: float, pause: float) -> None:
        self.queries_refused += 1
        _log.log(logging.INFO, "query refused", "a QUERY to %s about %d task(s) (%s...) could not be sent "
                 "(its link is not up); asking again in %.0f ms, until %.2f s from now (%d refused so far)",
                 holder, len(ids), ids[0], pause * 1000, max(0.0, deadline - monotonic()), self.queries_refused)
        if self.role.stopped:
            return
        wait = min(pause, max(0.0, deadline - monotonic()))
        self.role.supervisor.spawn_later(wait, "standby query again", self._ask, holder, ids, checks, deadline,
                                         min(2 * pause, REFUSED_PAUSE_MAX))

    def _callback(self, holder: str, ids: list[str], checks: Checks) -> Callable[[dict[str, Any] | None], None]:
        return lambda answer: self._answered(holder, ids, answer, checks)

    def _answered(self, holder: str, ids: list[str], answer: dict[str, Any] | None, checks: Checks) -> None:
        if self.role.stopped:
            return      # the node stops: its log closes next, and it runs nothing more
        states = answer.get("states") if answer is not None else None
        answered = isinstance(states, dict)
        if not isinstance(states, dict):
            states = {}
        now = wall()
        shift = clock_shift(answer.get("clock"), now) if answer is not None else 0.0
        for task_id in ids:
            check = checks.get(task_id)
            if check is None:
                continue
            task, answers, waiting = check
            waiting.discard(holder)
            state = states.get(task_id)
            if state is not None:
                try:
                    check_state_answer(state, self.role.config)
                    if shift and state[0] == RUNNING and len(state) > 3:
                        state = [*state[:3], moved(state[3], shift, EXPIRED_AT_ONCE), *state[4:]]  # onto our clock
                    answers.append((holder, state))
                except InvalidField as err:    # as if that holder had not answered
                    self.role.refusals.refuse("query", holder, err)
            elif answered:
                answers.append((holder, [LATER]))     # left out of a full answer: ask again later
            if not waiting:
                del checks[task_id]
                self.asking.discard(task_id)
                self._decide(task, answers, now)

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

    def _wait(self, task: Task, base: float) -> None:
        self.deferrals += 1
        self.role.engine.defer(task, base + self.role.offset_for(task, minimum=1))

    def _take_over(self, task: Task, now: float) -> None:
        self.takeovers += 1
        _log.log(logging.INFO, "takeover", "task %s: no other holder runs it; running the copy of rank %d here",
                 task.id, task.rank)
        self.role.engine.take_over(task, now)
