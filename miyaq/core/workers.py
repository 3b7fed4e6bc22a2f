"""The registry of connected workers: registration, heartbeats, liveness.

A worker is known by its routing identity and its worker id. A worker not
heard from for ``heartbeat × liveness`` seconds, and through the node's last
``liveness`` heartbeat ticks, is lost: every task leased to it is put back
at once (the attempt is spent), not after the lease. Liveness is measured on
the monotonic clock (a stepped wall clock neither drops nor keeps a worker).
Counting ticks too keeps the node's own stall (a burst of work, a freeze, a
swap-in) from dropping healthy workers: the heartbeats they sent meanwhile
wait unread in the socket, and after a late tick every worker has
``liveness`` more ticks -- about one liveness period -- to be heard.

With keys, a worker id belongs to the key that registered it while it is
registered: another key's READY for it is refused ``forbidden``, and a side
heartbeat for it counts only from that key (others are ignored and counted
in ``foreign_heartbeats``). A dropped worker's connection is remembered
(bounded) so its late DONE is still recognised as its own.

Bounded: at most ``max_workers`` registered at once (a READY from a new
worker past it is refused ``busy``; the worker sends it again when the node
next asks), and a registration keeps only what the node uses -- the handler
names a READY lists only when it declares them the names it runs
(``names_only``), and then once per distinct list, the lists bounded
together (:mod:`miyaq.core.task_names`).
The queue names the registered workers serve are bounded too: at most
:data:`MAX_SERVED_QUEUES` distinct names (a READY that names new ones past
it is refused ``busy``, nothing registered), so the views that list every
queue -- STATUS, ``/status``, ``/queues``, ``/metrics`` -- hold at most that
many rows beyond the queues that hold tasks (``MAX_QUEUES``), whatever
workers claim. Before 2026-12-06 each of ``max_workers`` workers could name
64 made-up queues, and every view listed them all (1,500 workers: 96,000
rows, a 30 MB STATUS). A name is kept once, however many workers serve it.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Any

from miyaq.constants import MAX_DROPPED_WORKERS, MAX_QUEUES
from miyaq.core.consumers import WorkerConsumer
from miyaq.core.directory import Directory
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.service import ServiceEndpoint
from miyaq.core.task_names import TaskNames
from miyaq.core.view_rows import Slicer, at_once
from miyaq.errors import Busy, Forbidden
from miyaq.logs import LogLimiter
from miyaq.protocol import commands as c
from miyaq.runtime import monotonic
from miyaq.store.task import Task, handler_label

logger = logging.getLogger(__name__)
#: Workers coming and going are logged one by one -- up to this many lines a
#: minute of each kind (a fleet starting), past which they are counted and
#: the count told with the next line (a worker crash-looping, or a client
#: registering in a loop, wrote thousands of lines a second before 2026-12-05).
WORKER_LINES_PER_MINUTE = 100
_log = LogLimiter(logger, burst=WORKER_LINES_PER_MINUTE)
#: Distinct queue names the registered workers serve, at most: as many as a
#: node's queues of tasks (``MAX_QUEUES``), and counted apart from them, so
#: that workers' names never keep a producer's new queue out.
MAX_SERVED_QUEUES = MAX_QUEUES
#: READYs refused for naming queues past MAX_SERVED_QUEUES are logged at most
#: this many times a minute (the rest counted): a refused worker asks again
#: at each heartbeat.
REFUSED_LINES_PER_MINUTE = 5
_refused = LogLimiter(logger, burst=REFUSED_LINES_PER_MINUTE)


class WorkerRegistry:
    def __init__(self, engine: Engine, dispatcher: Dispatcher, endpoint: ServiceEndpoint, directory: Directory,
                 node_id: str, heartbeat: float, liveness: int, max_workers: int) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.endpoint = endpoint
        self.directory = directory      # the other nodes of the ring (workers connect to all)
        self.node_id = node_id
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_workers = max_workers
        self.by_identity: dict[bytes, WorkerConsumer] = {}
        self.by_wid: dict[str, WorkerConsumer] = {}
        #: Queue name -> how many registered workers serve it (each name once,
        #: the string every registration naming it shares); at most MAX_SERVED_QUEUES.
        self.served: dict[str, int] = {}
        self._names: dict[str, str] = {}
        # The names each queue's workers run: kept here, read by the dispatcher.
        self.task_names = dispatcher.task_names = TaskNames()
        self.lost_total = 0
        self.foreign_heartbeats = 0
        self.dropped: OrderedDict[bytes, str | None] = OrderedDict()   # connection -> principal, of dropped workers
        self._ticks: deque[float] = deque(maxlen=liveness + 1)   # when the last liveness + 1 ticks ran (monotonic)

    def register(self, identity: bytes, wid: str, queues: list[str], capacity: int, now: float,
                 info: dict[str, Any], key: str | None = None, names: list[str] | None = None) -> WorkerConsumer:
        """Register (or re-register) a worker; ``key``: the name of the key it
        sent READY with; ``names``: the task names it declared it runs (at
        most ``MAX_NAMES_PER_WORKER``; None: any name;
        :mod:`miyaq.core.task_names`). Forbidden if another key's worker holds ``wid``,
        busy if it would be one worker more than ``max_workers`` or bring the
        queue names served past :data:`MAX_SERVED_QUEUES`. A name the READY
        repeats is kept once."""
        self.check_id(wid, key)
        self.check_room(identity, wid, queues)
        # A worker re-registers after it lost us (or we restarted): what it held
        # under its old registration is treated as lost. The worker id and the
        # connection may each be registered already, to two different workers
        # (a connection that says READY under another worker's id): both go,
        # so neither is left in one index only, never dropped.
        for old in self._replaced(identity, wid):
            self.drop(old, "registered again", now)
        queues = self._serve(queues)
        worker = WorkerConsumer(self.endpoint, identity, wid, queues, capacity, monotonic(), info, key)
        if names is not None:
            worker.names = self.task_names.declare(wid, names)
            worker.names_head = self.task_names.head(worker.names)
        self.task_names.serve(queues, worker.names)
        worker.holder_endpoints = self.directory.holder_endpoints
        self.by_identity[identity] = worker
        self.by_wid[wid] = worker
        welcome: dict[str, Any] = {"node": self.node_id, "heartbeat": self.heartbeat, "liveness": self.liveness,
                                   "max_message": self.endpoint.max_message}
        nodes = self.directory.nodes()
        if nodes is not None:
            welcome["nodes"] = nodes
        service = self.directory.own_service(self.node_id)
        if service is not None:      # how the ring names this node: a worker on ipc:// does not dial it again
            welcome["service"] = service
        self.endpoint.send(identity, c.WELCOME, welcome)
        self.dispatcher.grant(worker, 0)
        _log.log(logging.INFO, "worker registered", "worker %s registered: queues=%s capacity=%d",
                 wid, ",".join(queues), capacity)
        return worker

    def check_id(self, wid: str, key: str | None) -> None:
        """Forbidden if a worker registered with another key holds ``wid``."""
        taken = self.by_wid.get(wid)
        if taken is not None and taken.key != key:
            raise Forbidden(f"worker id {wid!r} is registered by another key ({taken.key!r})")

    def check_room(self, identity: bytes, wid: str, queues: list[str]) -> None:
        """Busy if registering ``wid`` on ``identity`` to serve ``queues`` would
        pass ``max_workers``, or :data:`MAX_SERVED_QUEUES` distinct queue
        names served (registering again, under either, replaces a
        registration, and gives back the names only it served). A READY
        naming no new queue is never refused for the names."""
        if (len(self.by_identity) >= self.max_workers and wid not in self.by_wid
                and identity not in self.by_identity):
            raise Busy(f"{len(self.by_identity)} workers are registered (max_workers); try again later")
        served = self.served
        new = sorted({q for q in queues if q not in served})
        if not new or len(served) + len(new) <= MAX_SERVED_QUEUES:
            return
        wanted = set(queues)
        held: dict[str, int] = {}      # names the registrations replaced serve, and how many of them do
        for old in self._replaced(identity, wid):
            for q in old.queues:
                held[q] = held.get(q, 0) + 1
        freed = sum(1 for q, n in held.items() if served.get(q) == n and q not in wanted)
        if len(served) - freed + len(new) <= MAX_SERVED_QUEUES:
            return
        _refused.warning("served queues", "refusing worker %s busy: it names %d queue(s) no registered worker "
                         "serves (such as %r), past the %d queue names workers may serve here at once",
                         wid, len(new), new[0], MAX_SERVED_QUEUES)
        raise Busy(f"the workers registered here serve {len(served)} queue names, at most {MAX_SERVED_QUEUES}: "
                   f"this worker names {len(new)} more (such as {new[0]!r}) and may register once others have "
                   "gone; check the queues it is given", reason="queues")

    def _replaced(self, identity: bytes, wid: str) -> list[WorkerConsumer]:
        """The registrations a READY of ``wid`` on ``identity`` replaces (none,
        one, or two: the id's and the connection's)."""
        found = (self.by_wid.get(wid), self.by_identity.get(identity))
        return list({id(w): w for w in found if w is not None}.values())

    def _serve(self, queues: list[str]) -> list[str]:
        """Count a new registration's queues as served; its list of them,
        each name once, as the strings the registry keeps (one a name)."""
        names, served = self._names, self.served
        kept = []
        for q in dict.fromkeys(queues):
            name = names.setdefault(q, q)
            served[name] = served.get(name, 0) + 1
            kept.append(name)
        return kept

    def _unserve(self, worker: WorkerConsumer) -> None:
        """A registration went: its queues are served by one worker fewer."""
        served = self.served
        for q in worker.queues:
            n = served.get(q, 0) - 1
            if n > 0:
                served[q] = n
            else:
                served.pop(q, None)
                self._names.pop(q, None)

    def seen(self, identity: bytes) -> WorkerConsumer | None:
        worker = self.by_identity.get(identity)
        if worker is not None:
            worker.last_seen = monotonic()
        return worker

    def seen_wid(self, wid: str, key: str | None = None) -> WorkerConsumer | None:
        """A side heartbeat for ``wid``, sent with ``key``: it counts only
        from the key the worker registered with."""
        worker = self.by_wid.get(wid)
        if worker is None:
            return None
        if worker.key != key:
            self.foreign_heartbeats += 1
            return None
        worker.last_seen = monotonic()
        return worker

    def mark_stopping(self, worker: WorkerConsumer) -> None:
        """``worker`` said it is stopping (RETURN ``stopping``, docs/protocol.md
        7.9): it is leased nothing more -- its credit stays 0 -- and it no
        longer counts as a worker of its queues that runs its task names
        (:mod:`miyaq.core.task_names`): a task only it runs goes to a live
        worker of the queue at once, as a name no worker runs does, instead
        of waiting for its BYE; the workers blocked behind such tasks are
        woken. Its running tasks still report; it stays registered (and its
        list kept, shown in its row) until BYE or its loss. Said again, it
        changes nothing."""
        if worker.stopping:
            return
        worker.stopping = True
        if self.by_identity.get(worker.identity) is worker:
            self.task_names.unserve(worker.queues, worker.names)
        self.dispatcher.forget(worker)      # out of the pumps, credit 0; wakes the blocked workers of its queues

    def principal_of(self, identity: bytes) -> str | None:
        """Who the worker on this connection is (or was, if it was dropped
        recently): None for a connection that never registered."""
        worker = self.by_identity.get(identity)
        if worker is not None:
            return worker.principal
        return self.dropped.get(identity)

    def drop(self, worker: WorkerConsumer, reason: str, now: float, started: frozenset[str] | None = None) -> int:
        """Forget a worker; its leased tasks go back at once. Returns how many
        lost an attempt. ``started`` (a BYE's, docs/protocol.md 7.10): the
        tasks it says it started and did not report; those alone spend an
        attempt, the others leased to it never reached it (sent while it
        stopped, crossing its BYE) and go back as a RETURN's do. None (an
        older worker's BYE, a worker lost or registering again): every
        task leased to it spends one."""
        if self.by_identity.get(worker.identity) is worker:
            self._unserve(worker)
            if not worker.stopping:         # a stopping worker's names no longer count (mark_stopping)
                self.task_names.unserve(worker.queues, worker.names)
            self.task_names.release(worker.names)
        self.by_identity.pop(worker.identity, None)
        self.dropped[worker.identity] = worker.principal
        self.dropped.move_to_end(worker.identity)
        if len(self.dropped) > MAX_DROPPED_WORKERS:
            self.dropped.popitem(last=False)
        if self.by_wid.get(worker.wid) is worker:
            del self.by_wid[worker.wid]
        self.dispatcher.forget(worker)
        tasks = list(worker.running.values())
        if started is not None:
            unstarted = [task for task in tasks if task.id not in started]
            if unstarted:
                tasks = [task for task in tasks if task.id in started]
                _log.log(logging.INFO, "unstarted at goodbye", "worker %s %s; %d task(s) sent to it that it never "
                         "received (put back, no attempt spent): %s", worker.wid, reason, len(unstarted),
                         _some_tasks(unstarted))
                for task in unstarted:
                    self.engine.release(task.id, now)
        if tasks:
            # An attempt spent on every task it held: a handler that kills its
            # process (a poison task) shows here first, so the line names them
            # (before lose(), which may dead-letter one and log that too).
            _log.log(logging.WARNING, "busy worker gone", "worker %s %s; %d task(s) it was running lost an attempt "
                     "(put back, or dead-lettered after their last): %s", worker.wid, reason, len(tasks),
                     _some_tasks(tasks))
        elif reason != "said goodbye":
            _log.log(logging.INFO, "idle worker gone", "worker %s %s; it was running no task", worker.wid, reason)
        for task in tasks:
            self.engine.lose(task, f"worker {worker.wid} {reason}", now)
        return len(tasks)

    def drop_key(self, key: str, now: float) -> int:
        """Forget every worker registered with ``key`` (revoked): their leased
        tasks go back at once, and nothing more is dispatched to them.
        Returns how many workers."""
        revoked = [w for w in self.by_identity.values() if w.key == key]
        for worker in revoked:
            self.drop(worker, f"lost its key {key!r} (revoked)", now)
        return len(revoked)

    def tick(self, now: float) -> None:
        """Send heartbeats and drop silent workers (called every heartbeat).

        A worker is dropped when nothing came from it for ``heartbeat ×
        liveness`` seconds *and* since the tick ``liveness`` ticks before
        this one (so never before ``liveness + 1`` ticks have run). Ticks
        run at least a heartbeat apart: on time, a silent worker is dropped
        at most one tick later than by the seconds alone. After a stall of
        the node -- this tick came late, the service socket was not read
        meanwhile -- a worker whose heartbeats wait unread is not lost: it
        has ``liveness`` more ticks (about one liveness period) to be read.
        Before 2026-12-05 the seconds alone decided, and a burst of due
        timers that held the node past ``heartbeat × liveness`` had healthy,
        busy workers declared lost and their tasks put back."""
        mono = monotonic()
        ticks = self._ticks
        ticks.append(mono)
        if len(ticks) <= self.liveness:
            deadline = float("-inf")        # not yet liveness ticks since the node started
        else:
            deadline = min(mono - self.heartbeat * self.liveness, ticks[0])
        beat: dict[str, Any] = {"node": self.node_id, "sent": mono}     # how late it comes: miyaq.worker.transit
        nodes = self.directory.nodes()
        if nodes is not None:
            beat["nodes"] = nodes
        for worker in list(self.by_identity.values()):
            if worker.last_seen < deadline:
                self.lost_total += 1
                self.drop(worker, "went silent", now)
            else:
                self.endpoint.send(worker.identity, c.HEARTBEAT, beat)

    def idle_by_queue(self, slices: Slicer[WorkerConsumer] = at_once, only: str | None = None) -> dict[str, int]:
        """Idle worker capacity per queue (free slots; a stopping worker has
        none): a name for each queue served (at most :data:`MAX_SERVED_QUEUES`),
        or for ``only`` alone when given (a queue no worker serves has none:
        ``{}``). The workers are read ``slices`` at a time (a view's: its
        others run between two; at the bound, 10,000 workers of 64 queues,
        about 90 ms in all; for one queue, the workers that serve none of it
        cost a membership test each), as they were registered when it began."""
        idle: dict[str, int] = {}
        for workers in slices(list(self.by_identity.values())):
            for worker in workers:
                if only is not None and only not in worker.queues:
                    continue
                free = 0 if worker.stopping else max(0, worker.capacity - len(worker.running))
                for q in worker.queues if only is None else (only,):
                    idle[q] = idle.get(q, 0) + free
        return idle

    def describe(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` connected workers, by worker id: queues, the task
        names it runs (``"any"``, or the first :data:`~miyaq.core.task_names.NAMES_SHOWN`
        and how many more), capacity, running tasks, last message heard
        (unix time), host, pid, concurrency."""
        return [w.describe() for w in sorted(self.by_identity.values(), key=lambda w: w.wid)[:limit]]

    def workers_by_queue(self) -> dict[str, int]:
        """How many registered workers serve each queue (a copy of :attr:`served`)."""
        return dict(self.served)


#: Tasks named in the line that says a worker went with tasks (the rest counted).
NAMED_TASKS = 5


def _some_tasks(tasks: list[Task]) -> str:
    """The first :data:`NAMED_TASKS` tasks as ``id (handler or URL, attempt N)``,
    and how many more: what an operator needs to find a task that kills its
    worker (``miyaq status ID``)."""
    shown = ", ".join(f"{t.id} ({handler_label(t)}, attempt {t.attempt})" for t in tasks[:NAMED_TASKS])
    more = len(tasks) - NAMED_TASKS
    return shown + (f" and {more} more" if more > 0 else "")
