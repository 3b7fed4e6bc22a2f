"""Standby copies: before a copy that is not the runner's runs, it asks.

When a standby copy's timer fires (``task_due_elsewhere``), this node asks
every other live holder about the task (QUERY, batched per holder) — Disque's
WILLQUEUE. Per task:

- a holder that finished it (done, cancelled, expired, started under
  at-most-once) → this copy finishes the same way;
- a holder that dead-lettered it → this copy is dead-lettered too;
- a holder that holds it ready or running, or is a standby copy of lower
  rank → push this copy's timer out by one offset and ask again then;
- otherwise (every other holder silent, unaware of it, or a standby of
  higher rank) → take over: the copy becomes ready here, and its start is
  announced to the others like any start.

Only silence lets a copy run; that is what keeps duplicates to real failures.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from miyaq.cluster.peer import QUERY
from miyaq.constants import QUERY_TIMEOUT
from miyaq.core.listener import EngineListener
from miyaq.runtime import wall
from miyaq.store.task import DEAD, READY, RETRYING, RUNNING, SCHEDULED, Task

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)

FINAL = ("done", "cancelled", "expired", "started-elsewhere")


def describe(role: ClusterRole, task_id: str) -> list[Any]:
    """How this node holds ``task_id`` (the QUERY answer for one id)."""
    table = role.engine.table
    task = table.live.get(task_id)
    if task is not None:
        return [task.state, task.standby, task.rank, task.lease_end if task.state == RUNNING else task.eta]
    if task_id in table.dead:
        return [DEAD]
    stone = table.tombstone(task_id)
    if stone is not None:
        return [stone.state, stone.result, stone.error]
    return ["unknown"]


class StandbyChecker(EngineListener):
    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.due: list[Task] = []
        self.takeovers = 0
        self.deferrals = 0

    def task_due_elsewhere(self, task: Task) -> None:
        self.due.append(task)

    def flush(self) -> None:
        """Ask about every copy that came due (one QUERY per holder)."""
        if not self.due:
            return
        due, self.due = self.due, []
        role = self.role
        alive = role.view.members
        asks: dict[str, list[str]] = {}
        checks: dict[str, tuple[Task, list[list[Any]], set[str]]] = {}
        now = wall()
        for task in due:
            if task.state not in (SCHEDULED, RETRYING) or not task.standby:
                continue
            others = [h for h in task.holders if h != role.node_id and h in alive]
            if not others:
                self._take_over(task, now)
                continue
            checks[task.id] = (task, [], set(others))
            for h in others:
                asks.setdefault(h, []).append(task.id)
        for holder, ids in asks.items():
            role.peer.request(holder, QUERY, {"ids": ids}, QUERY_TIMEOUT, self._callback(holder, ids, checks))

    def _callback(self, holder: str, ids: list[str],
                  checks: dict[str, tuple[Task, list[list[Any]], set[str]]]) -> Callable[[dict[str, Any] | None], None]:
        return lambda answer: self._answered(holder, ids, answer, checks)

    def _answered(self, holder: str, ids: list[str], answer: dict[str, Any] | None,
                  checks: dict[str, tuple[Task, list[list[Any]], set[str]]]) -> None:
        states = (answer or {}).get("states") or {}
        now = wall()
        for task_id in ids:
            check = checks.get(task_id)
            if check is None:
                continue
            task, answers, waiting = check
            waiting.discard(holder)
            state = states.get(task_id)
            if isinstance(state, list) and state:
                answers.append(state)
            if not waiting:
                del checks[task_id]
                self._decide(task, answers, now)

    def _decide(self, task: Task, answers: list[list[Any]], now: float) -> None:
        role = self.role
        engine = role.engine
        if task.state not in (SCHEDULED, RETRYING) or not task.standby:
            return   # something else moved it meanwhile
        with role.events.applying_remote():
            for a in answers:
                if a[0] in FINAL:
                    engine.finish_copy(task.id, a[0], a[1] if len(a) > 1 else None,
                                       a[2] if len(a) > 2 else None, now)
                    return
                if a[0] == DEAD:
                    engine.kill_copy(task, task.error)
                    return
        for a in answers:
            state = a[0]
            active = state in (READY, RUNNING) or (state in (SCHEDULED, RETRYING) and not a[1])
            lower_standby = state in (SCHEDULED, RETRYING) and a[1] and len(a) > 2 and a[2] < task.rank
            if active or lower_standby:
                self.deferrals += 1
                later = max(now, a[3] if state == RUNNING and len(a) > 3 else now)
                engine.defer(task, later + role.offset_for(task, minimum=1))
                return
        self._take_over(task, now)

    def _take_over(self, task: Task, now: float) -> None:
        self.takeovers += 1
        logger.info("task %s: no other holder runs it; running the copy of rank %d here",
                    task.id, task.rank)
        self.role.engine.take_over(task, now)
