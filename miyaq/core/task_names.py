"""Which task names the registered workers run: so that a task goes to a
worker that has its handler while one of its queue's workers has it.

A worker may declare the names it runs (READY ``names`` with
``"names_only": true``, docs/protocol.md 7.1; the Python worker does): it
is then sent a task of another name only when no registered worker of the
task's queue runs that name -- one that declared it, or one that declared
nothing (an older worker, a worker written without miyaq: it takes any
name, as every worker did before 2026-12-06). A worker that said it is
stopping (RETURN ``stopping``) counts no more from then
(:meth:`~miyaq.core.workers.WorkerRegistry.mark_stopping`): it is leased
nothing more, so a task only it runs is as a name no worker runs, not
held for it until its BYE. So in a rolling deploy the
new version's task goes to the new version's workers, and a name no
worker has (a typo) still goes to a worker as before, fails
``UnknownTask``, and is dead-lettered after its retries with the worker's
explanation.

The dispatcher asks only when a worker that declared names takes a task
of another name (:meth:`TaskNames.elsewhere`); with no worker declaring,
nothing here runs per task. Such a worker *passes over* the task: it goes
back to its place in its lane (:meth:`miyaq.store.ready.ReadyQueues.unpop`:
its priority and order kept) and the worker takes the next one. A pump
lets one worker pass over at most :data:`PASS_OVER` tasks; behind more,
or with only such tasks left in its lanes, it is *blocked*: parked (out
of the pumps) until a task enters one of its lanes, as any parked
consumer, or a task is taken from one, or a worker of one goes or says it
is stopping (the dispatcher's ``wake_blocked``) -- the tasks' own workers
take them meanwhile, and it looks again. Within a pump, a worker with the
same names and queues as one blocked since the pump's last take is
blocked without a look (a fleet of one app finds the same tasks ahead).
So a blocked fleet costs a look of :data:`PASS_OVER` tasks each time the
tasks ahead of it move, not each pump (/tmp/unknowntask/passover_cost.py,
2026-12-06: a take by the other app's worker and the look after it,
71 us with one worker blocked, 210 us with 100; before this parking each
blocked worker cost 260 us every pump, 35 ms a pump with 100).

Bounded: a READY declares at most :data:`MAX_NAMES_PER_WORKER` names (past
that it is refused ``invalid_field``, as a READY's other fields are). The
registered workers' declarations are kept once per distinct list (a fleet
of one app shares one set), at most :data:`MAX_NAME_SETS` distinct lists
of :data:`MAX_DECLARED_NAMES` names together. A worker whose list would
pass either bound is registered as declaring nothing (it takes any name,
as before this index; logged, a few lines a minute): a worker is never
refused for what others declared, and the index never outgrows the bound.
The question :meth:`TaskNames.elsewhere` answers looks at each distinct
list serving the queue once, at most :data:`MAX_NAME_SETS`.

Shown: a worker's row (STATUS ``workers``, ``GET /workers``, the console)
says ``"names": "any"`` when the node sends it any name -- it declared
none, or its list was not kept -- else the first :data:`NAMES_SHOWN` of
its names in sorted order and ``names_more``, how many more it declared
(:func:`names_row`). The first ones are picked once per distinct list,
when it is first kept, not at each view.
"""
from __future__ import annotations

import logging
import heapq
from collections.abc import Iterable
from typing import Any

from miyaq.core.limits import QueueLimits
from miyaq.logs import LogLimiter
from miyaq.store.ready import ReadyQueues
from miyaq.store.task import Task

logger = logging.getLogger(__name__)

#: Names one READY may declare (as many as its ``names`` field ever took).
MAX_NAMES_PER_WORKER = 10_000
#: Distinct name lists the registered workers declare, at most: the apps
#: (and versions of them) serving a node at once.
MAX_NAME_SETS = 64
#: Names in those distinct lists together, at most (ten apps of 10,000 tasks).
MAX_DECLARED_NAMES = 100_000
#: Tasks a worker passes over in one pump, at most (those it has no handler
#: for, while another worker of their queue has).
PASS_OVER = 32
#: Lines a minute saying a worker's list was not kept (the rest counted).
NOT_KEPT_LINES_PER_MINUTE = 5
_not_kept = LogLimiter(logger, burst=NOT_KEPT_LINES_PER_MINUTE)
#: Names a worker's row shows, at most (the first in sorted order; the rest
#: counted in ``names_more``): 1,000 rows of 256-character names stay
#: within 5 MB, as their queues' names do.
NAMES_SHOWN = 20
#: What a row says for a worker the node sends any name.
ANY_NAME = "any"

NameSet = frozenset[str]
Head = tuple[str, ...]


class TaskNames:
    """The name lists the registered workers declared, by queue (see the
    module's docstring). A worker's list is ``None`` when it declared none."""

    def __init__(self) -> None:
        #: Distinct declared lists -> the one set kept for it (shared by every
        #: registration declaring it), how many registrations hold it, and
        #: its first :data:`NAMES_SHOWN` names, sorted (what its rows show).
        self.sets: dict[NameSet, tuple[NameSet, int, Head]] = {}
        #: Names in :attr:`sets` together.
        self.total = 0
        #: Queue -> the lists its registered workers declared (None: any
        #: name) -> how many of its workers declared each.
        self.by_queue: dict[str, dict[NameSet | None, int]] = {}
        #: Lists registered as "any name" because they would pass a bound.
        self.not_kept = 0

    def declare(self, wid: str, names: Iterable[str]) -> NameSet | None:
        """The set a worker registering with the list ``names`` holds: the
        one kept for an equal list if there is one; None (any name) if a new
        list would pass :data:`MAX_NAME_SETS` or :data:`MAX_DECLARED_NAMES`.
        Counts the registration: :meth:`release` gives it back."""
        wanted = frozenset(names)
        sets = self.sets
        held = sets.get(wanted)
        if held is not None:
            sets[wanted] = (held[0], held[1] + 1, held[2])
            return held[0]
        if len(sets) >= MAX_NAME_SETS or self.total + len(wanted) > MAX_DECLARED_NAMES:
            self.not_kept += 1
            _not_kept.warning("names not kept", "worker %s declares %d task names; the workers registered here "
                              "declare %d distinct lists of %d names (at most %d lists, %d names): it is "
                              "registered as taking any name", wid, len(wanted), len(sets), self.total,
                              MAX_NAME_SETS, MAX_DECLARED_NAMES)
            return None
        sets[wanted] = (wanted, 1, tuple(heapq.nsmallest(NAMES_SHOWN, wanted)))
        self.total += len(wanted)
        return wanted

    def head(self, names: NameSet | None) -> Head:
        """The names a row shows of a kept list (:data:`NAMES_SHOWN` at most,
        sorted); none for ``None`` or a list not kept here."""
        held = self.sets.get(names) if names is not None else None
        return held[2] if held is not None else ()

    def release(self, names: NameSet | None) -> None:
        """A registration that declared ``names`` went."""
        if names is None:
            return
        held = self.sets.get(names)
        if held is None:
            return
        if held[1] > 1:
            self.sets[names] = (held[0], held[1] - 1, held[2])
        else:
            del self.sets[names]
            self.total -= len(names)

    def serve(self, queues: Iterable[str], names: NameSet | None) -> None:
        """A registered worker with the list ``names`` serves ``queues``."""
        by_queue = self.by_queue
        for q in queues:
            lists = by_queue.get(q)
            if lists is None:
                lists = by_queue[q] = {}
            lists[names] = lists.get(names, 0) + 1

    def unserve(self, queues: Iterable[str], names: NameSet | None) -> None:
        """A worker :meth:`serve` counted went, or said it is stopping (once
        for each :meth:`serve`)."""
        by_queue = self.by_queue
        for q in queues:
            lists = by_queue.get(q)
            if lists is None:
                continue
            n = lists.get(names, 0) - 1
            if n > 0:
                lists[names] = n
            else:
                lists.pop(names, None)
                if not lists:
                    del by_queue[q]

    def elsewhere(self, task: Task) -> bool:
        """Whether a registered worker of ``task``'s queue runs its name: one
        that declared it, or one that declared nothing (a stopping one is no
        longer counted: :meth:`unserve` took it out)."""
        lists = self.by_queue.get(task.lane)
        if not lists:
            return False
        if None in lists:
            return True
        name = task.name
        return any(name in names for names in lists if names is not None)

    def runs_nowhere(self, queue: str, name: str) -> bool:
        """Whether ``queue`` has registered workers and none of them runs
        ``name``: every one declared its names, none this one. A task of
        that name sent now would fail ``UnknownTask`` at each attempt and be
        dead-lettered; the periodic scheduler holds such a tick back. False
        with no worker on the queue (a task waits there for one)."""
        lists = self.by_queue.get(queue)
        if not lists or None in lists:
            return False
        return not any(name in names for names in lists if names is not None)


def names_row(names: NameSet | None, head: Head) -> dict[str, Any]:
    """A worker row's ``names`` (and ``names_more``): ``"any"`` when the
    node sends it any name (``names`` None: it declared none, or its list
    was not kept); else ``head``, its first names, and how many more."""
    if names is None:
        return {"names": ANY_NAME}
    return {"names": list(head), "names_more": len(names) - len(head)}


def only_passed_over_left(ready: ReadyQueues, limits: QueueLimits, lanes: list[str], now: float) -> bool:
    """With queue limits on the node: whether a worker that passed over
    tasks and found nothing more to take found so because every one of its
    ``lanes`` holding ready tasks is open -- what is left is for other
    workers, and it is blocked -- not because a limit (or a pause) holds
    one back: then it stays hungry, and the limit's refill pumps again."""
    held = sum(1 for q in lanes if (lane := ready.lanes.get(q)) is not None and lane.count > 0)
    return len(limits.open(lanes, now)) == held
