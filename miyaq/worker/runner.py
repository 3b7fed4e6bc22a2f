"""One worker process: ``concurrency`` runner greenlets executing handlers
for tasks leased by one or more nodes.

Runners are long-lived and take deliveries from a local deque, so a batch of
quick handlers runs without a greenlet spawn per task. The worker's capacity
(``concurrency + prefetch``) is the credit it grants each node; it never
holds more than that per node. SIGTERM: stop taking work, give back tasks
not yet started, let running ones finish up to ``grace`` seconds, say BYE.

Every greenlet is spawned through the worker's
:class:`~miyaq.runtime.Supervisor`: a link reader that dies is ``CRITICAL``
(the worker stops and its process exits non-zero), a runner or a result
flusher that dies is logged, counted and restarted, so the worker never
runs with fewer slots than the credit it grants.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from collections import deque
from dataclasses import replace
from typing import Any

from ..app import App
from ..protocol import commands as c
from ..runtime import CRITICAL, RESTART, Supervisor, green, monotonic
from ..runtime.sockets import SocketFactory
from ..security.curve import client_curve
from .config import BYE_LINGER, DRAIN_POLL, MAX_NODES, WorkerConfig
from .context import TaskContext, bind, unbind
from .execute import Outcome, TaskAborted, run_sync
from .link import NodeLink
from .pulse import Pulse

logger = logging.getLogger(__name__)


class _Reporter:
    """Sends one task's outcome to its node, or to another holder if that node died."""

    __slots__ = ("worker", "link", "task_id")

    def __init__(self, worker: "Worker", link: NodeLink, task_id: str) -> None:
        self.worker, self.link, self.task_id = worker, link, task_id

    def report(self, attempt: int, outcome: Outcome) -> None:
        link = self.worker.report_link(self.link, self.task_id)
        kind, value = outcome
        if kind == "done":
            link.report_done(self.task_id, attempt, value)
        else:
            link.report_failed(self.task_id, attempt, value)


class Worker:
    """``Worker(app, config)``; keyword settings override the config's
    (``Worker(app, endpoints=[...], concurrency=4)``, as the tests do)."""

    def __init__(self, app: App, config: WorkerConfig | None = None, *, endpoints: list[str] | None = None,
                 queues: list[str] | None = None, **settings: Any) -> None:
        if endpoints is not None:
            settings["connect"] = ",".join(endpoints)
        if queues is not None:
            settings["queues"] = ",".join(queues)
        self.config = cfg = replace(config or WorkerConfig(), **settings)
        self.app = app
        app.green = True
        self.queues = cfg.queue_list or app.queues()
        self.concurrency = cfg.concurrency
        self.capacity = cfg.capacity
        self.endpoints = cfg.endpoint_list or app.endpoints
        self.grace = cfg.grace
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.wid = f"{self.host}-{self.pid}-{uuid.uuid4().hex[:6]}"
        self.supervisor = Supervisor(f"worker {self.wid}", on_fatal=self._fatal)
        # CURVE (docs/security.md): --key/--server-key, else the App's, else MIYAQ_KEY/MIYAQ_SERVER_KEY.
        security = client_curve(cfg.key or app.key, cfg.server_key or app.server_key)
        self.factory = SocketFactory(green=True, security=security)
        self.links = [NodeLink(self, self.factory, ep) for ep in self.endpoints]
        self.backlog: deque[tuple[NodeLink, list[Any]]] = deque()
        # Idle runners wait on their own event; new work wakes only as many
        # runners as it has tasks (no thundering herd of `concurrency` greenlets).
        self.idle: deque[Any] = deque()
        self.running: dict[str, Any] = {}            # task id -> the runner greenlet running it
        self.holders: dict[str, list[str]] = {}      # task id -> its holders' endpoints (cluster)
        self.origin: dict[str, NodeLink] = {}        # running task id -> the link it came from
        self.started = False
        self.stopping = False
        self.stopping_hard = False
        self.crashed = False
        self.executed = 0
        self._stopped = green.Event()
        self.pulse = Pulse(self.wid, self.endpoints, cfg.heartbeat, security)

    def busy_count(self, link: NodeLink | None = None) -> int:
        """Slots in use (for ``link``: by tasks that node gave us)."""
        if link is None:
            return len(self.running) + len(self.backlog)
        return (sum(1 for origin in self.origin.values() if origin is link)
                + sum(1 for other, _ in self.backlog if other is link))

    # -- receiving work --------------------------------------------------------------
    def accept(self, link: NodeLink, deliveries: list[Any]) -> None:
        if self.stopping:
            link.send(c.RETURN, {"ids": [d[0] for d in deliveries if isinstance(d, list) and d],
                                 "credit": False})
            return
        for d in deliveries:
            if isinstance(d, list) and len(d) in (6, 7) and isinstance(d[0], str):
                if len(d) == 7 and isinstance(d[6], list):
                    self.holders[d[0]] = d[6]
                self.backlog.append((link, d))
            else:
                logger.warning("ignoring a malformed delivery from %s", link.endpoint)
        self._wake(len(deliveries))

    def abort(self, ids: list[Any]) -> None:
        for task_id in ids:
            g = self.running.get(task_id)
            if g is not None:
                # Thrown from the hub, and only if that runner still runs this
                # task then: an abort never lands in the runner's next task.
                green.call_soon(self._throw_abort, task_id, g)
            else:
                for i, (link, d) in enumerate(self.backlog):
                    if d[0] == task_id:
                        del self.backlog[i]
                        link.report_failed(task_id, d[4], {"type": "Aborted", "message": "cancelled",
                                                           "retry": False})
                        break

    def _throw_abort(self, task_id: str, g: Any) -> None:
        current = self.running.get(task_id)
        if current is not None and current is g:
            current.throw(TaskAborted())

    def discover(self, endpoints: list[Any]) -> None:
        """Connect to every node of the ring (from WELCOME/HEARTBEAT)."""
        if self.stopping:
            return
        known = {link.endpoint for link in self.links}
        for ep in endpoints:
            if (isinstance(ep, str) and ep.startswith("tcp://") and ep not in known
                    and len(self.links) < MAX_NODES):
                link = NodeLink(self, self.factory, ep)
                self.links.append(link)
                self.pulse.add(ep)
                self.supervisor.spawn(f"link {ep}", link.serve, policy=CRITICAL)
                logger.info("worker %s: discovered node %s", self.wid, ep)

    def link_silent(self, link: NodeLink) -> None:
        """``link``'s node went silent: tell another holder of each task it
        gave us that the task is still running here (a TOUCH), so a standby
        copy there does not start it a second time."""
        for task_id, origin in list(self.origin.items()):
            if origin is link:
                alternative = self.report_link(link, task_id, keep=True)
                if alternative is not link:
                    alternative.touch(task_id)

    def report_link(self, link: NodeLink, task_id: str, keep: bool = False) -> NodeLink:
        """Where to report ``task_id``: its node, or — if that node went silent
        — another live holder of the task."""
        holders = self.holders.get(task_id) if keep else self.holders.pop(task_id, None)
        if not link.lost or not holders:
            return link
        for other in self.links:
            if other is not link and other.endpoint in holders and not other.silent():
                logger.info("task %s: node %s is silent; reporting to %s", task_id, link.endpoint, other.endpoint)
                return other
        return link

    # -- running it --------------------------------------------------------------------
    def _wake(self, n: int) -> None:
        idle = self.idle
        while n > 0 and idle:
            idle.popleft().set()
            n -= 1

    def _runner(self) -> None:
        backlog = self.backlog
        ready = green.Event()
        while True:
            try:
                while backlog and not self.stopping:
                    link, d = backlog.popleft()
                    self._execute(link, d)
                if self.stopping:
                    return
                ready.clear()
                self.idle.append(ready)
                ready.wait()
            except TaskAborted:
                logger.warning("worker %s: an abort reached a runner between tasks; ignored", self.wid)

    def _execute(self, link: NodeLink, d: list[Any]) -> None:
        task_id, queue, name, body, attempt, timeout = d[:6]
        tdef = self.app.tasks.get(name)
        if tdef is None:
            link.report_failed(task_id, attempt, {
                "type": "UnknownTask", "retry": True,
                "message": f"no handler named {name!r} in worker {self.wid}"})
            return
        self.running[task_id] = green.current()
        self.origin[task_id] = link
        report = _Reporter(self, link, task_id)    # to its node, or another holder if it died
        token = bind(TaskContext(task_id, name, queue, attempt, timeout, link.touch))
        try:
            outcome = run_sync(tdef.fn, body)
        finally:
            unbind(token)
            self.running.pop(task_id, None)
            self.executed += 1
        try:
            report.report(attempt, outcome)
        except Exception:
            # The runner dies (its supervisor logs, counts and restarts it);
            # first try once more to tell the node, so the task is retried
            # now rather than when its lease runs out.
            self._report_lost_outcome(report, attempt, task_id)
            raise
        finally:
            self.origin.pop(task_id, None)

    def _report_lost_outcome(self, report: _Reporter, attempt: int, task_id: str) -> None:
        error = {"type": "WorkerError", "message": "the worker failed to report this attempt's outcome",
                 "retry": True}
        try:
            report.link.report_failed(task_id, attempt, error)
        except Exception:
            logger.exception("worker %s: task %s: its outcome is lost; the node retries it when its lease "
                             "runs out", self.wid, task_id)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Worker":
        if self.started:
            return self
        self.started = True
        self.pulse.start()
        for link in self.links:
            self.supervisor.spawn(f"link {link.endpoint}", link.serve, policy=CRITICAL)
        for _ in range(self.concurrency):
            self.supervisor.spawn("runner", self._runner, policy=RESTART)
        logger.info("worker %s: queues=%s concurrency=%d nodes=%s", self.wid, ",".join(self.queues),
                    self.concurrency, ",".join(self.endpoints))
        return self

    def _fatal(self, name: str, exc: BaseException) -> None:
        self.crashed = True
        logger.critical("worker %s: %s died (%r); stopping", self.wid, name, exc)
        self.stop(0)

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            green.on_signal(sig, lambda: self.supervisor.spawn("stop", self.stop))

    def run(self) -> None:
        self.start()
        self._stopped.wait()

    def stop(self, grace: float | None = None) -> None:
        """Return unstarted tasks, let running ones finish, say BYE. Idempotent."""
        if self.stopping:
            self._stopped.wait()
            return
        self.stopping = True
        grace = self.grace if grace is None else grace
        returned: dict[NodeLink, list[str]] = {}
        while self.backlog:
            link, d = self.backlog.popleft()
            returned.setdefault(link, []).append(d[0])
        for link, ids in returned.items():
            link.send(c.RETURN, {"ids": ids, "credit": False})
        self._wake(len(self.idle))
        deadline = monotonic() + grace
        while self.running and monotonic() < deadline:
            green.sleep(DRAIN_POLL)
        if self.running:
            logger.warning("worker %s: %d task(s) still running after %.1fs; the node will put them back",
                           self.wid, len(self.running), grace)
        for link in self.links:
            link.flush()
            link.send(c.BYE, {"worker": self.wid})
        green.sleep(BYE_LINGER)   # let the BYE leave before the sockets close
        self.stopping_hard = True
        self.supervisor.kill()
        for link in self.links:
            link.close()
        self.pulse.stop()
        self.app.close()
        self.factory.close()
        logger.info("worker %s stopped after %d task(s)", self.wid, self.executed)
        self._stopped.set()

