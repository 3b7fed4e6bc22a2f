"""One worker process: ``concurrency`` runner greenlets executing handlers
for tasks leased by one or more nodes.

Runners are long-lived and take deliveries from a local deque, so a batch of
quick handlers runs without a greenlet spawn per task. The worker's capacity
(``concurrency + prefetch``) is the credit it grants each node; it never
holds more than that per node. SIGTERM: stop taking work, give back tasks
not yet started, let running ones finish up to ``grace`` seconds, say BYE.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
import uuid
from collections import deque
from typing import Any

import gevent
import gevent.event
import msgpack
import zmq.green as zmq

from ..errors import Reject, Retry
from ..protocol import commands as c
from .app import App
from .context import TaskContext, bind
from .link import NodeLink
from .pulse import Pulse

logger = logging.getLogger(__name__)


class TaskAborted(BaseException):
    """Raised inside a handler whose task was cancelled on the node."""


class _Reporter:
    """Sends one task's outcome to its node, or to another holder if that node died."""

    __slots__ = ("worker", "link", "task_id")

    def __init__(self, worker: "Worker", link: NodeLink, task_id: str) -> None:
        self.worker, self.link, self.task_id = worker, link, task_id

    def report_done(self, task_id: str, attempt: int, result: bytes | None) -> None:
        self.worker.report_link(self.link, task_id).report_done(task_id, attempt, result)

    def report_failed(self, task_id: str, attempt: int, error: dict[str, Any]) -> None:
        self.worker.report_link(self.link, task_id).report_failed(task_id, attempt, error)


class Worker:
    def __init__(self, app: App, *, queues: list[str] | None = None, concurrency: int = 8,
                 prefetch: int | None = None, endpoints: list[str] | None = None,
                 heartbeat: float = 1.0, liveness: int = 3, grace: float = 30.0) -> None:
        self.app = app
        app.green = True
        self.queues = queues or app.queues()
        self.concurrency = concurrency
        self.capacity = concurrency + (concurrency if prefetch is None else prefetch)
        self.endpoints = endpoints or app.endpoints
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.grace = grace
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.wid = f"{self.host}-{self.pid}-{uuid.uuid4().hex[:6]}"
        self.ctx = zmq.Context()
        self.links = [NodeLink(self, self.ctx, ep) for ep in self.endpoints]
        self.backlog: deque[tuple[NodeLink, list[Any]]] = deque()
        # Idle runners wait on their own event; new work wakes only as many
        # runners as it has tasks (no thundering herd of `concurrency` greenlets).
        self.idle: deque[gevent.event.Event] = deque()
        self.running: dict[str, gevent.Greenlet] = {}
        self.holders: dict[str, list[str]] = {}      # task id -> its holders' endpoints (cluster)
        self.origin: dict[str, NodeLink] = {}        # running task id -> the link it came from
        self.stopping = False
        self.stopping_hard = False
        self.executed = 0
        self._greenlets: list[gevent.Greenlet] = []
        self._stopped = gevent.event.Event()
        self.pulse = Pulse(self.wid, self.endpoints, heartbeat)

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
                g.kill(TaskAborted, block=False)
            else:
                for i, (link, d) in enumerate(self.backlog):
                    if d[0] == task_id:
                        del self.backlog[i]
                        link.report_failed(task_id, d[4], {"type": "Aborted", "message": "cancelled",
                                                           "retry": False})
                        break

    def discover(self, endpoints: list[Any]) -> None:
        """Connect to every node of the ring (from WELCOME/HEARTBEAT)."""
        if self.stopping:
            return
        known = {link.endpoint for link in self.links}
        for ep in endpoints:
            if isinstance(ep, str) and ep.startswith("tcp://") and ep not in known and len(self.links) < 256:
                link = NodeLink(self, self.ctx, ep)
                self.links.append(link)
                self.pulse.add(ep)
                g = gevent.spawn(link.serve)
                g.link_exception(self._crash)
                self._greenlets.append(g)
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
        ready = gevent.event.Event()
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
                continue   # the abort arrived after the handler returned

    def _execute(self, link: NodeLink, d: list[Any]) -> None:
        task_id, queue, name, body, attempt, timeout = d[:6]
        tdef = self.app.tasks.get(name)
        if tdef is None:
            link.report_failed(task_id, attempt, {
                "type": "UnknownTask", "retry": True,
                "message": f"no handler named {name!r} in worker {self.wid}"})
            return
        current = gevent.getcurrent()
        self.running[task_id] = current
        self.origin[task_id] = link
        report = _Reporter(self, link, task_id)    # to its node, or another holder if it died
        bind(TaskContext(task_id, name, queue, attempt, timeout, link.touch))
        try:
            args, kwargs = msgpack.unpackb(body, raw=False, strict_map_key=False) if body else ([], {})
            value = tdef.fn(*args, **kwargs)
            result = msgpack.packb(value, use_bin_type=True)
        except TaskAborted:
            report.report_failed(task_id, attempt, {"type": "Aborted", "message": "cancelled", "retry": False})
        except Retry as exc:
            report.report_failed(task_id, attempt, {"type": "Retry", "message": exc.message,
                                                  "retry": True, "delay": exc.delay})
        except Reject as exc:
            report.report_failed(task_id, attempt, {"type": "Reject", "message": exc.message, "retry": False})
        except Exception as exc:
            report.report_failed(task_id, attempt, {
                "type": type(exc).__name__, "message": str(exc)[:4096], "retry": True,
                "traceback": traceback.format_exc()[-16384:]})
        else:
            report.report_done(task_id, attempt, result)
        finally:
            bind(None)
            self.running.pop(task_id, None)
            self.origin.pop(task_id, None)
            self.executed += 1

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Worker":
        if self._greenlets:
            return self
        self.pulse.start()
        for link in self.links:
            g = gevent.spawn(link.serve)
            g.link_exception(self._crash)
            self._greenlets.append(g)
        for _ in range(self.concurrency):
            g = gevent.spawn(self._runner)
            self._greenlets.append(g)
        logger.info("worker %s: queues=%s concurrency=%d nodes=%s", self.wid, ",".join(self.queues),
                    self.concurrency, ",".join(self.endpoints))
        return self

    def _crash(self, g: gevent.Greenlet) -> None:
        logger.critical("worker %s: link greenlet died: %r; stopping", self.wid, g.exception)
        gevent.spawn(self.stop, 0)

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, lambda: gevent.spawn(self.stop))

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
        deadline = time.time() + grace
        while self.running and time.time() < deadline:
            gevent.sleep(0.05)
        if self.running:
            logger.warning("worker %s: %d task(s) still running after %.1fs; the node will put them back",
                           self.wid, len(self.running), grace)
        for link in self.links:
            link.flush()
            link.send(c.BYE, {"worker": self.wid})
        gevent.sleep(0.05)   # let the BYE leave before the sockets close
        self.stopping_hard = True
        for g in self._greenlets:
            if g is not gevent.getcurrent():
                g.kill(block=False)
        for link in self.links:
            link.close()
        self.pulse.stop()
        self.app.close()
        self.ctx.destroy(linger=0)
        logger.info("worker %s stopped after %d task(s)", self.wid, self.executed)
        self._stopped.set()
