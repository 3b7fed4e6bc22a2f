"""Standby copies: before a copy that is not the runner's runs, it asks.

When a standby copy's timer fires (``task_due_elsewhere``), this node asks
every other live member of the ring about the task (QUERY, batched per
member) — Disque's WILLQUEUE. Not only its holders: during a ring change a
holder by the older ring that has not heard of the new one yet may still
run the task, and only its answer says so (a member that never held the
task answers ``unknown``, which lets the copy run). What the answers
decide, per task -- wait, finish, or take over --, is
:class:`~miyaq.cluster.standby_verdicts.StandbyVerdicts`'s, a base of
:class:`StandbyChecker`; the copies that cannot ask (this node fenced, no
longer a holder, without a ring) wait an offset, and those that come due
while the node reconciles are parked until it ended.

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

from miyaq.cluster.key_verdicts import KeyChecks
from miyaq.cluster.peer_clock import EXPIRED_AT_ONCE, clock_shift, moved
from miyaq.cluster.peer_requests import QUERY
from miyaq.cluster.standby_verdicts import LATER, Answers, StandbyVerdicts
from miyaq.constants import MAX_QUERY, QUERY_TIMEOUT
from miyaq.core.listener import EngineListener
from miyaq.errors import InvalidField
from miyaq.logs import LogLimiter
from miyaq.protocol.eventspec import check_state_answer
from miyaq.runtime import green, monotonic, wall
from miyaq.store.task import READY, RETRYING, RUNNING, SCHEDULED, Task

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)
# A frozen or lost holder can make thousands of copies take over at once: a
# few lines a minute name examples, the rest are counted (STATUS ``takeovers``).
_log = LogLimiter(logger)

ASK_FIRST_SLICE = 4096
"""Tasks :meth:`StandbyChecker.ask_first` looks at between two chances to
yield the hub (about 10 ms of work)."""

REFUSED_PAUSE = 0.01
"""Seconds a QUERY whose send was refused waits before it is sent again
(the link to that holder is not up yet: a new CURVE connection refuses
sends until its handshake is done, 1-25 ms); doubled at each refusal, at
most ``REFUSED_PAUSE_MAX``. Tries end at the QUERY's deadline."""
REFUSED_PAUSE_MAX = 0.2


Checks = dict[str, tuple[Task, Answers, set[str], float]]
"""Per task id being asked about: the copy, the (holder, answer) pairs so
far, the holders still to answer, and when (monotonic) the asking began."""

MAX_ASKED_BY = 10_000
"""Tasks whose standby copy another member asked about that this node
notes at once (:attr:`StandbyChecker.asked_by`); past it the notes are
dropped and begun again (a note lost costs nothing but its use: the copy
decides on the answers alone, as before 2026-12-07)."""


class StandbyChecker(StandbyVerdicts, EngineListener):
    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.due: list[Task] = []
        self.asking: set[str] = set()       # ids whose QUERY answers are not all in
        # Standby copies here that other members' standby copies asked about:
        # task id -> member -> when it asked (monotonic); read once, when the copy decides.
        self.asked_by: dict[str, dict[str, float]] = {}
        self.parked: dict[str, Task] = {}      # came due while the node reconciled; asked after
        self.takeovers = 0
        self.deferrals = 0
        self.queries_refused = 0     # QUERY sends the link refused (each asked again, within the deadline)
        self._unknown_waits: dict[str, int] = {}     # task id -> waits for an earlier holder that lacks it
        self.key_checks = KeyChecks(role)     # rank-0 keyed copies that ask about their key first

    def asked_about(self, task_id: str, asker: str | None = None) -> None:
        """Another holder, ``asker``, asks about ``task_id`` (its copy is due
        and asks before it runs).

        If this node's copy is a standby copy too, the asker -- a member of
        this node's ring; its id is what the request's ``from`` says -- is
        noted: it is alive and holds a standby copy, and if this copy asks
        soon after (or is asking) and the asker's answer does not come, it
        counts as that standby copy (:meth:`_heard_asking`).

        If this node's copy is a standby copy whose eta
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
        if task is None or not task.standby:
            return
        if (asker is not None and task.state in (SCHEDULED, RETRYING) and asker != self.role.node_id
                and asker in self.role.view.members):      # a member: at most the ring's size a task
            if len(self.asked_by) >= MAX_ASKED_BY and task_id not in self.asked_by:
                self.asked_by.clear()
            self.asked_by.setdefault(task_id, {})[asker] = monotonic()
        if (task.state != SCHEDULED or task.attempt or task.lessees
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
            checks[task.id] = (task, [], set(others), monotonic())
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
            task, answers, waiting, began = check
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
                self._heard_asking(task, answers, began)
                self._decide(task, answers, now)

    def _heard_asking(self, task: Task, answers: Answers, began: float) -> None:
        """Count a member silent to this node's QUERY about ``task`` whose own
        standby copy asked this node about it meanwhile as the standby copy it
        is (the answer it would have given: between two standby copies the
        smaller node id goes first). Its QUERY is proof it is alive and asks;
        its silence is one direction of a pair of links not carrying yet --
        after a network fault heals, a stale TCP connection waits out its
        retransmission timer while the other side's new one already works.
        Before 2026-12-07 both copies then ran: the smaller id heard the
        other's standby answer, the larger id heard silence (a chaos run,
        `isolate` of a node: seven tasks run twice 1-2 s after the heal).

        Only a QUERY that came while this copy asked or at most
        ``QUERY_TIMEOUT`` before (``began``: it may have made this copy ask
        early, :meth:`asked_about`); an older one says nothing of now."""
        askers = self.asked_by.pop(task.id, None)
        if not askers:
            return
        answered = {holder for holder, _ in answers}
        holders = task.holders
        for asker in sorted(a for a, at in askers.items() if at >= began - QUERY_TIMEOUT and a not in answered):
            rank = holders.index(asker) if asker in holders else len(holders)
            answers.append((asker, [SCHEDULED, True, rank, task.eta]))

    def _wait(self, task: Task, base: float) -> None:
        self.deferrals += 1
        self.role.engine.defer(task, base + self.role.offset_for(task, minimum=1))

    def _take_over(self, task: Task, now: float) -> None:
        """No other holder runs ``task``: it runs here -- or, if the attempt
        that started elsewhere may not run again, it is dead-lettered
        ``Lost`` (:meth:`~miyaq.core.replicas.ReplicaCopies.take_over`,
        which logs it); either way a take-over, counted."""
        self.takeovers += 1
        rank = task.rank
        if self.role.engine.take_over(task, now):
            _log.log(logging.INFO, "takeover", "task %s: no other holder runs it; running the copy of rank %d here",
                     task.id, rank)
