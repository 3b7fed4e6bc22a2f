"""One worker process: ``concurrency`` runner greenlets taking tasks leased by
one or more nodes and running them in the worker's pool.

Runners are long-lived and take deliveries from a local backlog
(:class:`~miyaq.worker.jobs.Backlog`), so a batch of
quick handlers runs without a greenlet spawn per task. A runner hands each
task to the pool (:mod:`miyaq.worker.pools`: greenlets, threads or child
processes; ``async def`` handlers to the worker's asyncio loop) and waits
for its outcome. The worker grants each node credit
(``concurrency + prefetch``, and by default more while tasks are short:
:mod:`miyaq.worker.prefetch`); it never holds more than its capacity per node. A
watchdog stops a handler that runs past its task's timeout without a touch;
an ABORT stops a cancelled one. SIGTERM, SIGINT or SIGHUP: stop taking
work, give back tasks not yet started, let running ones finish up to
``grace`` seconds, say BYE; a second such signal ends that wait at once
(:func:`miyaq.worker.signals.stop_on_signals`).

Every greenlet is spawned through the worker's
:class:`~miyaq.runtime.Supervisor`: a link reader that dies is ``CRITICAL``
(the worker stops and its process exits non-zero), a runner, the watchdog
(which also marks that the hub runs), a link's connection watcher or a result flusher that dies is
logged, counted and restarted, so the worker never runs with fewer slots
than the credit it grants.

This module holds the worker's parts and its runners; what it takes from
its nodes is its base :class:`~miyaq.worker.intake.Intake`'s, its stop its
base :class:`~miyaq.worker.stopping.Stopping`'s.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import deque
from dataclasses import replace
from typing import Any

from ..app import App
from ..errors import ConfigError
from ..logs import LogLimiter
from ..protocol import commands as c
from ..runtime import CRITICAL, RESTART, Supervisor, green, monotonic
from ..runtime.sockets import SocketFactory
from ..security.curve import client_curve
from .aio import AsyncLoop
from .config import POOL_READY_WAIT, WorkerConfig, checked_queues
from .execute import Interrupted, TaskTimeout
from .failures import log_unknown
from .intake import Intake
from .jobs import Backlog, Job, current
from .link import NodeLink
from .loop_watch import LoopWatch
from .pools import PoolParts, make_pool
from .pools.base import NotStarted, PoolShortage
from .prefetch import RunTimes
from .pulse import Pulse
from .reports import Reports
from .ring import RingFollower
from .routing import Routes
from .stopping import Stopping
from .watchdog import Watchdog

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # what a node sends may repeat (a buggy or hostile one): a few lines a minute
_shortage_log = LogLimiter(logger, burst=1)     # a pool short of threads: one line a minute, the rest counted


class Worker(Intake, Stopping):
    """``Worker(app, config)``; keyword settings override the config's
    (``Worker(app, endpoints=[...], concurrency=4)``, as the tests do).
    ``app_spec`` (``module:attribute``) is needed by the processes pool,
    whose children import the app themselves."""

    def __init__(self, app: App, config: WorkerConfig | None = None, *, endpoints: list[str] | None = None,
                 queues: list[str] | None = None, app_spec: str | None = None, **settings: Any) -> None:
        if endpoints is not None:
            settings["connect"] = ",".join(endpoints)
        if queues is not None:
            settings["queues"] = ",".join(queues)
        self.config = cfg = replace(config, **settings) if config is not None else WorkerConfig(**settings)
        if cfg.pool == "processes" and not app_spec:
            raise ConfigError("the processes pool needs the app as module:attribute (app_spec) to start its "
                              "children")
        self.app = app
        app.green = cfg.pool == "gevent"     # handlers that submit: a client of their own kind
        self.queues = checked_queues(cfg.queue_list, app.queues())
        self.concurrency = cfg.slots
        # Runners retired because the pool could not run one more handler
        # (PoolShortage): each gave its task back without its slot.
        self.slots_lost = 0
        self.capacity = cfg.capacity
        self.base_credit = cfg.base_credit
        self.run_times = RunTimes()
        self.adaptive = cfg.prefetch is None    # the default prefetch follows run times
        self.endpoints = cfg.endpoint_list or app.endpoints
        self.grace = cfg.grace
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.wid = f"{self.host}-{self.pid}-{uuid.uuid4().hex[:6]}"
        self.supervisor = Supervisor(f"worker {self.wid}", on_fatal=self._fatal)
        # CURVE (docs/security.md): --key/--server-key, else the App's, else MIYAQ_KEY/MIYAQ_SERVER_KEY.
        security = client_curve(cfg.key or app.key, cfg.server_key or app.server_key)
        self.factory = SocketFactory(green=True, security=security)
        self.inbox = green.HubInbox(f"worker {self.wid}")
        self.pool = make_pool(cfg.pool, PoolParts(
            concurrency=cfg.slots, supervisor=self.supervisor, touch=self.touch,
            inbox=self.inbox, app_spec=app_spec, max_tasks_per_child=cfg.max_tasks_per_child,
            log_level=cfg.log_level))
        has_async = any(t.is_async for t in app.tasks.values())
        self.aio = (AsyncLoop(self.inbox, self.touch, app.close, app.aclose)
                    if has_async and cfg.pool != "processes" else None)
        self.links = [NodeLink(self, self.factory, ep) for ep in self.endpoints]
        self.ring = RingFollower(self)     # links to the nodes the ring names, retired once they left it
        self.routes = Routes(self.links, cfg.recent_report_seconds)
        self.backlog = Backlog()
        # Idle runners wait on their own event; new work wakes only as many
        # runners as it has tasks (no thundering herd of `concurrency` greenlets).
        self.idle: deque[Any] = deque()
        self.running: dict[str, Job] = {}
        # Earlier attempts still running when their task was leased here again
        # (the node's lease on them ran out): stopped, and watched until they
        # end. At most one per runner.
        self.superseded: list[Job] = []
        # Jobs the pool took back unstarted as the worker stopped, given back to their nodes by stop().
        self.given_back: set[Job] = set()
        self.reports = Reports(self)
        self.started = False
        self.stopping = False
        self.stopping_hard = False
        self.crashed = False
        self.executed = 0
        self._stopped = green.Event()
        self._hurry = green.Event()     # asked again to stop: wait no longer for running handlers
        self.pulse = Pulse(self.wid, self.endpoints, cfg.heartbeat, security, running=self._running_names,
                           node_timeout=cfg.node_timeout)
        self.watchdog = Watchdog(self.wid, lambda: [*self.running.values(), *self.superseded], self._interrupt,
                                 looks=self.pulse.hub_runs)
        if self.aio is not None:
            self.pulse.loop_watch = LoopWatch(self.wid, self.aio, lambda: self.running.values())

    def _running_names(self) -> list[str]:
        """``task-id (name)`` of each task running: read by the heartbeat
        thread while a handler holds the hub (it only reads)."""
        return [f"{job.task_id} ({job.name})" for job in list(self.running.values())]

    def busy_count(self, link: NodeLink | None = None) -> int:
        """Slots in use (for ``link``: by tasks that node gave us)."""
        if link is None:
            return len(self.running) + len(self.superseded) + len(self.backlog)
        return self.routes.running_from(link) + sum(1 for other in self.backlog.links() if other is link)

    # -- running it --------------------------------------------------------------------
    def touch(self, task_id: str) -> None:
        """A handler touched its task (in the hub): its timeout starts again,
        and the node extends the lease -- or, its node lost, another holder
        keeps its standby copy waiting."""
        job = self.running.get(task_id)
        if job is not None:
            job.touched()
        link = self.routes.origin.get(task_id)
        if link is not None:
            self.routes.report_link(link, task_id, keep=True).touch(task_id)

    def _runner(self) -> None:
        backlog = self.backlog
        ready = green.Wakeup()      # one waiter, set by the intake and the stop: cheaper than an Event
        while True:
            try:
                while not self.stopping:
                    waiting = backlog.popleft()
                    if waiting is None:
                        break
                    if not self._execute(*waiting):
                        return      # retired: the pool has no room for this runner's handlers
                if self.stopping:
                    return
                ready.clear()
                self.idle.append(ready)
                ready.wait()
            except Interrupted:
                logger.warning("worker %s: an interruption reached a runner between tasks; ignored", self.wid)

    def _execute(self, link: NodeLink, d: list[Any], received: float) -> bool:
        """Run one delivery, received at ``received``. One that waited in the
        backlog over a quarter of its timeout is touched as it starts (the
        node's lease and the watchdog's deadline both run from then);
        otherwise both still run from its receipt (docs/protocol.md, 7.3).
        False if the pool could not run it (:class:`PoolShortage`): it was
        given back unstarted, and the runner retires (unless it is the last)."""
        task_id, name, attempt = d[0], d[2], d[4]
        tdef = self.app.tasks.get(name)
        if tdef is None:
            message = self.app.unknown_task(name, f"worker {self.wid}")
            log_unknown(self.wid, task_id, name, attempt, d[1], message)
            self.reports.failure(link, task_id, attempt, {"type": "UnknownTask", "retry": True, "message": message})
            return True
        job = Job(d, tdef.fn, tdef.is_async, link.endpoint, received)
        job.executor = self.aio if job.is_async and self.aio is not None else self.pool
        earlier = self.running.get(task_id)
        if earlier is not None:
            if earlier.attempt >= attempt:
                _log.warning("repeated delivery", "worker %s: task %s delivered again as attempt %s while attempt "
                             "%s runs here; ignored", self.wid, task_id, attempt, earlier.attempt)
                return True
            # Leased here again while an earlier attempt still runs: the node's
            # lease on that one ran out (it ran past its timeout before the
            # watchdog looked, or the node sent the task again). Stop it, and
            # keep it in sight (cancels, the watchdog, the drain) until it ends.
            logger.warning("worker %s: task %s leased again (attempt %s) while attempt %s still runs here; "
                           "stopping that one", self.wid, task_id, attempt, earlier.attempt)
            self.superseded.append(earlier)
            self._interrupt(earlier, TaskTimeout)
        self.running[task_id] = job
        self.routes.origin[task_id] = link
        started = monotonic()
        if started > job.touch_after:
            # The node's lease ran on while it waited here: counted again from
            # now, at the node (the TOUCH) and here (the deadline).
            self.touch(task_id)
        self.watchdog.started(job)
        shortage: PoolShortage | None = None
        withdrawn = False
        try:
            outcome = job.executor.run(job)
        except PoolShortage as exc:
            shortage = exc      # nothing started: given back below, once out of the books
        except NotStarted:
            withdrawn = True    # the worker stops: taken back before it started (given back below)
        except Exception:
            # The pool failed, not the handler (a bug): the runner dies and is
            # restarted, and the node retries the task now rather than when
            # its lease runs out.
            if current(self.running, job):
                self.routes.origin.pop(task_id, None)
            self.reports.lost_outcome(link, task_id, attempt, "the worker's pool failed to run this attempt "
                                                              "(see the worker's log)")
            raise
        finally:
            running = self.running
            if running.get(task_id) is job:      # release(), inline: on every task's path
                del running[task_id]
            else:
                self.superseded.remove(job)
            if shortage is None and not withdrawn:
                self.executed += 1
        if shortage is not None:
            return self._give_back_unstarted(link, job, shortage)
        if withdrawn:
            self._withdrawn(link, job)
            return True
        if self.adaptive:
            self.run_times.add(monotonic() - started, len(d[3]))     # bytes: well_formed checked it
        try:
            self.reports.outcome(link, job, outcome)
        except Exception:
            # The runner dies (its supervisor logs, counts and restarts it);
            # first try once more to tell the node, so the task is retried
            # now rather than when its lease runs out.
            self.reports.lost_outcome(link, task_id, attempt)
            raise
        finally:
            if task_id not in self.running:     # no later attempt of it runs here
                self.routes.origin.pop(task_id, None)
        return True

    def _give_back_unstarted(self, link: NodeLink, job: Job, shortage: PoolShortage) -> bool:
        """The pool could not run ``job`` (no thread could be started: a
        limit of the process's, not a bug): give it back to its node
        unstarted -- no attempt spent -- without its slot, as the runner
        that took it retires, unless it is the last one (docs/semantics.md,
        "Failure modes"). Said once a minute, however many runners retire
        together. False: the runner retires."""
        task_id = job.task_id
        self._unroute(task_id)
        retires = self.concurrency - self.slots_lost > 1
        if retires:
            self.slots_lost += 1      # before the RETURN: what its node then sees, the count says
        link.send(c.RETURN, {"ids": [task_id], "credit": False})
        _shortage_log.warning("pool shortage", "worker %s: %s. Tasks past them are given back to their node "
                              "unstarted (no attempt spent), each with a handler slot: %d of %d slot(s) left. "
                              "Raise the limit or lower --concurrency, and restart the worker to have them back",
                              self.wid, shortage, self.concurrency - self.slots_lost, self.concurrency)
        return not retires

    def _withdrawn(self, link: NodeLink, job: Job) -> None:
        """``job`` was taken back by the pool as the worker stops, its handler
        not started: out of the books. :meth:`stop` gave it back to its node
        already (with the backlog); one whose run began after that is given
        back here."""
        task_id = job.task_id
        self._unroute(task_id)
        if job not in self.given_back and task_id not in self.running:
            link.send(c.RETURN, {"ids": [task_id], "credit": False})

    def _unroute(self, task_id: str) -> None:
        """An attempt of ``task_id`` given back unstarted: forget its node and
        its other holders, unless another attempt of it runs here."""
        if task_id not in self.running:
            self.routes.origin.pop(task_id, None)
            self.routes.holders.pop(task_id, None)

    def _interrupt(self, job: Job, reason: type[Interrupted]) -> None:
        if job.stop_reason is not None:
            return
        job.stop_reason = reason
        job.executor.interrupt(job)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Worker":
        if self.started:
            return self
        self.started = True
        self.pulse.start()
        self.pool.start()
        if self.aio is not None:
            self.aio.start()
        if self.pool.ready(0):
            self._serve_links()
        else:
            self.supervisor.spawn("register when the pool is ready", self._serve_links_when_ready, policy=CRITICAL)
        for _ in range(self.concurrency):
            self.supervisor.spawn("runner", self._runner, policy=RESTART)
        self.supervisor.spawn("watchdog", self.watchdog.run, policy=RESTART)
        logger.info("worker %s: queues=%s concurrency=%d pool=%s nodes=%s%s", self.wid, ",".join(self.queues),
                    self.concurrency, self.pool.name, ",".join(self.endpoints),
                    " (+asyncio loop)" if self.aio is not None else "")
        return self

    def run(self) -> None:
        self.start()
        self._stopped.wait()

    def _serve_links_when_ready(self) -> None:
        """Register with the nodes once the pool can run ``concurrency``
        handlers (the processes pool's children have started): capacity
        offered earlier would have the nodes lease tasks here to wait while
        other workers idle. A pool not ready within ``POOL_READY_WAIT``
        registers anyway (its tasks wait for it, their leases kept)."""
        if not self.pool.ready(POOL_READY_WAIT):
            logger.warning("worker %s: the %s pool is not ready after %.0fs; registering with the nodes anyway",
                           self.wid, self.pool.name, POOL_READY_WAIT)
        self._serve_links()

    def _serve_links(self) -> None:
        for link in self.links:
            self.serve(link)

    def serve(self, link: NodeLink) -> None:
        """Start ``link``'s reader (critical: the worker cannot run without it)
        and its connection watcher (restarted if it dies)."""
        link.spawn(f"link {link.endpoint}", link.serve, policy=CRITICAL)
        link.spawn(f"watch {link.endpoint}", link.watch.run, policy=RESTART)

    def _fatal(self, name: str, exc: BaseException) -> None:
        """A critical greenlet died: stop, and whatever stopping meets, end
        (a worker that lingers without its reader would hold its process and
        run nothing)."""
        self.crashed = True
        logger.critical("worker %s: %s died (%r); stopping", self.wid, name, exc)
        try:
            self.stop(0)
        finally:
            if not self._stopped.is_set():
                self.stopping_hard = True
                self._stopped.set()
