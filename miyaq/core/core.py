"""The core of one node: the objects that hold and hand out tasks.

:class:`Core` builds them together, wired the one way they always are: the
engine (task state), the dispatch gate, queue limits, the dispatcher, the
service socket, long-poll waiters, the worker registry, the directory of
the ring's other nodes and the count of records refused from peers and the log. The loops that drive them are
:class:`~miyaq.core.clockwork.Clockwork`; the command table is
:class:`~miyaq.core.handlers.ServiceHandlers`. Parts (persistence, the role,
periodic schedules, the gateway, metrics) are given the pieces they need,
never the whole node.
"""
from __future__ import annotations

import logging
from typing import Any

from miyaq.config import NodeConfig
from miyaq.core.view_lane import ViewLane
from miyaq.core.binding import binding, service_port, unix_socket
from miyaq.core.cancels_ahead import tombstones_apart
from miyaq.core.consumers import Consumer, PullConsumer
from miyaq.core.directory import Directory
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import SHUTTING_DOWN, Gate
from miyaq.core.limits import QueueLimits, parse_limits
from miyaq.core.refusals import Refusals
from miyaq.core.service import ServiceEndpoint
from miyaq.core.waiters import Waiters
from miyaq.core.workers import WorkerRegistry
from miyaq.runtime import Supervisor
from miyaq.runtime.sockets import SocketFactory
from miyaq.security.guard import Guard
from miyaq.security.roles import Role
from miyaq.store.task import DEAD, READY, RETRYING, RUNNING, SCHEDULED

logger = logging.getLogger(__name__)

ROW_STATES = (SCHEDULED, READY, RUNNING, RETRYING, DEAD)
"""The task counts of a queue's row in STATUS and /status (as ``Engine.queue_counts``)."""
EMPTY_ROW = dict.fromkeys(ROW_STATES, 0)
STATUS_WORKERS = 1000    # workers listed in STATUS at most
#: What a long-poll refused while the node stops is told (ZeroMQ ERROR, HTTP 503).
DRAINING = "the node is shutting down: ask another node or again later"


class Core:
    def __init__(self, config: NodeConfig, sockets: SocketFactory, supervisor: Supervisor,
                 guard: Guard | None = None) -> None:
        self.config = config
        self.engine = Engine(config)
        self.gate = Gate()
        self.limits = QueueLimits(self.engine, supervisor, parse_limits(config.queue_limits))
        self.dispatcher = Dispatcher(self.engine, config.max_batch, self.gate, self.limits)
        with binding(service_port(config.host, config.port)):
            self.endpoint = ServiceEndpoint(sockets, config.bind_endpoint(config.port), guard,
                                            config.service_heartbeat_timeout)
        for ipc in config.ipc_endpoints:
            with unix_socket(ipc, config.ipc_mode):
                self.endpoint.bind(ipc)
        self.endpoint.dispatch_early = self.dispatcher.dispatch_lone     # a lone task before its burst's end
        self.waiters = Waiters(self.dispatcher, config.max_waiters, config.max_waiters_per_connection,
                               config.max_waiters_per_key, self.endpoint.reachable, self.engine.live_state)
        self.directory = Directory(own=config.endpoint(config.port))
        self.refusals = Refusals()
        self.workers = WorkerRegistry(self.engine, self.dispatcher, self.endpoint, self.directory,
                                      config.id, config.heartbeat, config.liveness, config.max_workers)
        self.engine.listeners += [self.dispatcher, self.waiters, self.limits]
        self.views = ViewLane()      # STATUS and the gateway's views of every queue: a bounded share of the loop
        self._pull_lessees: list[Consumer] = []    # noted at the drain

    # -- draining ----------------------------------------------------------------
    def drain(self) -> int:
        """Shutting down: accept no new task, lease none, register no worker;
        answer ``shutting_down`` at once to every parked RECEIVE and to every
        RESULT wait whose task is not running (nothing is leased now: its
        outcome cannot come here), and refuse such long-polls from now on
        (:meth:`Waiters.stop`). A RESULT wait for a running task is kept:
        the task may end within the grace. The tasks leased to pull
        consumers are noted, so that :meth:`running` counts them through
        the grace (one look at every live task). How many long-polls were
        answered."""
        engine = self.engine
        engine.accepting = False
        self.gate.close(SHUTTING_DOWN)
        self._pull_lessees = [task.consumer for task in engine.table.live.values()
                              if task.state == RUNNING and isinstance(task.consumer, PullConsumer)]
        return self.waiters.stop(DRAINING, keep=lambda task_id: engine.live_state(task_id) == RUNNING)

    def drained(self) -> int:
        """The grace is over (or the node stops without one): answer
        ``shutting_down`` to every long-poll left -- the RESULT waits of the
        tasks still running -- before the sockets close. How many."""
        return self.waiters.stop(DRAINING)

    @property
    def draining(self) -> bool:
        return self.gate.holds(SHUTTING_DOWN)

    def revoke(self, keys: set[str], now: float) -> None:
        """The keys named ``keys`` were revoked (or changed role): their
        connections were already refused every new message; now nothing more
        is sent to them either. Their workers are forgotten (their tasks go
        back at once) and their long-polls -- RECEIVE, RESULT -- freed, so a
        RECEIVE parked before the revoke is not answered with a task an hour
        later. Leases a pull consumer of such a key holds run out as usual."""
        for key in keys:
            workers = self.workers.drop_key(key, now)
            waits = self.waiters.release_key(key)
            if workers or waits:
                logger.warning("key %r revoked: %d worker(s) forgotten, %d long-poll(s) freed", key, workers, waits)

    def check_writable(self, task_id: str) -> None:
        """Before a CANCEL, ACK or NACK (either door) changes task
        ``task_id``: refused ``busy`` (``storage``), nothing changed, while
        the log cannot be written, if this node holds the task (live or
        dead; :meth:`ServiceEndpoint.check_writable`). A task not held here
        changes nothing, and is answered as ever (``not_found``, ``ok:
        false``: a cluster client asks the other members)."""
        table = self.engine.table
        if task_id in table.live or task_id in table.dead:
            self.endpoint.check_writable()

    def running(self) -> int:
        """Tasks leased to connected workers and, once the node drains, to
        pull consumers (RECEIVE, over ZeroMQ or HTTP): both may still
        report them (DONE, FAILED; ACK, NACK)."""
        return self.running_on_workers() + self.leased_to_pulls()

    def running_on_workers(self) -> int:
        """Tasks leased to connected workers."""
        return sum(len(w.running) for w in self.workers.by_identity.values())

    def leased_to_pulls(self) -> int:
        """Tasks leased to pull consumers and not yet reported, counted from
        the drain on (0 before :meth:`drain`): the drain leases none, so
        only those noted then can be."""
        return sum(len(consumer.running) for consumer in self._pull_lessees)

    # -- views -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Queues, totals, bytes held against their limits, outcomes, protocol
        errors, records refused from peers and the log, and the gate, for
        STATUS and /status (a queue's row with its ``limits`` and whether
        it is ``paused``, through either door since 2026-12-05); and
        ``workers``, the registered workers (their ids, hosts, pids,
        queues), when :meth:`lists_workers`.

        Built in its view's slices (:meth:`ViewLane.slices`): each queue's
        row is read at once, two rows maybe a few slices apart; the
        workers per queue as the view began, the totals as it ended. A
        row for each queue that holds tasks or that a registered worker
        serves: at most ``MAX_QUEUES`` + ``MAX_SERVED_QUEUES``."""
        engine, workers, limits = self.engine, self.workers, self.limits
        per_queue = workers.workers_by_queue()
        idle = workers.idle_by_queue(self.views.slices)
        counts = engine.counts
        queues = {}
        # A row for each queue with tasks (at most MAX_QUEUES) or served by a
        # worker (at most MAX_SERVED_QUEUES, workers.py), whatever workers claim.
        for names in self.views.slices(sorted(set(counts) | set(per_queue))):    # the others run between slices
            for q in names:
                states = counts.get(q)
                row: dict[str, Any] = dict(EMPTY_ROW) if states is None else {s: states[s] for s in ROW_STATES}
                row["workers"] = per_queue.get(q, 0)
                row["idle"] = idle.get(q, 0)
                row["limits"] = limits.describe(q)
                row["paused"] = q in limits.paused
                queues[q] = row
        table = engine.table
        totals = {"live": len(table.live), "dead": len(table.dead),
                  "tombstones": len(table.tombstones), "workers": len(workers.by_identity)}
        memory = {"payload_bytes": table.payload_bytes, "max_bytes": self.config.max_bytes,
                  "result_bytes": table.result_bytes, "max_result_bytes": self.config.max_result_bytes,
                  "results_dropped": table.results_dropped}
        apart = tombstones_apart(engine)      # counted apart from max_tombstones, and their refusals
        return {"accepting": engine.accepting, "queues": queues, "totals": totals,
                "outcomes": engine.outcome_totals(),
                "errors": dict(self.endpoint.errors), "records_refused": self.refusals.by_source(),
                "max_tasks": self.config.max_tasks, "memory": memory, "tombstones_apart": apart,
                "ignored": {"not_leased": engine.not_leased, "foreign_heartbeats": workers.foreign_heartbeats},
                "waiters": {"pending": self.waiters.count, "released": self.waiters.released,
                            "withdrawn": self.waiters.withdrawn, "probes": self.waiters.probes},
                "dispatch": {"open": self.gate.is_open, "held": self.gate.held()},
                "views": self.views.stats(),
                **({"workers": self.workers_list()} if self.lists_workers() else {})}

    def lists_workers(self) -> bool:
        """Whether STATUS lists the workers: for an ``admin`` key, and on a
        node without keys (no roles: everyone sees everything). A producer's
        or worker's key gets their number only (``totals.workers``), as a
        producer or worker token is refused ``GET /workers`` (before
        2026-12-05 STATUS listed them to every key). Decided by the key of
        the service message being handled (:attr:`ServiceEndpoint.caller`);
        the gateway decides by its token's role instead and sets the list
        itself (:meth:`workers_list`), as must any other reader outside a
        service message: on a node with keys, the caller is the last
        message's key until the next one."""
        caller = self.endpoint.caller
        return caller is None or caller.role is Role.ADMIN

    def workers_list(self) -> list[dict[str, Any]]:
        """STATUS's ``workers``: the registered workers, at most STATUS_WORKERS."""
        return self.workers.describe(STATUS_WORKERS)
