"""How a worker stops (:class:`Stopping`, a base of
:class:`~miyaq.worker.runner.Worker`; :mod:`miyaq.worker.signals` maps the
signals to these): the tasks not started -- the backlog's, and those the
pool holds unstarted -- given back to their nodes, every node told in that
RETURN that this worker is stopping (it leases it nothing more), the running ones let
finish up to ``grace`` seconds, BYE said (naming, to each node, the tasks
it gave that started and are not reported: :meth:`Stopping._bye`), then
the pool, the links, the heartbeats and the sockets closed. Asked again, it waits no longer for the
running handlers (:meth:`Stopping.hurry`).
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable

from ..app import App
from ..protocol import commands as c
from ..runtime import Supervisor, green, monotonic
from ..runtime.sockets import SocketFactory
from .aio import AsyncLoop
from .config import BYE_LINGER, DRAIN_POLL
from .jobs import Backlog, Job, current
from .link import NodeLink
from .pools.base import Pool
from .pulse import Pulse
from .routing import Routes

logger = logging.getLogger("miyaq.worker.runner")     # the worker's lines: one logger to follow it
STOP_AGAIN = " (a second Ctrl-C or SIGTERM stops at once: the running tasks go back to the node, attempt spent)"
"""Said when a stop waits for running handlers (docs/configuration.md, ``--grace``)."""

__all__ = ["STOP_AGAIN", "Stopping"]


class Stopping:
    """The worker's stop (its base). The worker sets the attributes below,
    and :meth:`_wake` is its intake's (it wakes idle runners)."""

    wid: str
    app: App
    grace: float
    stopping: bool
    stopping_hard: bool
    executed: int
    supervisor: Supervisor
    factory: SocketFactory
    inbox: green.HubInbox
    pool: Pool
    aio: AsyncLoop | None
    links: list[NodeLink]
    routes: Routes
    backlog: Backlog
    idle: deque[Any]
    running: dict[str, Job]
    superseded: list[Job]
    given_back: set[Job]
    pulse: Pulse
    _stopped: green.Event
    _hurry: green.Event
    _wake: Callable[[int], None]

    def ask_stop(self) -> None:
        """A stop signal: stop -- or, if stopping already, wait no longer (:meth:`hurry`)."""
        if self.stopping:
            self.hurry()
            return
        self.stop()

    def _bye(self, link: NodeLink) -> dict[str, Any]:
        """The BYE for ``link``'s node, with ``started``: the tasks it gave
        this worker that were started and are not reported -- still running
        after the grace, or their result not sent. Only those spend an
        attempt there; the rest it leased here never reached this worker:
        sent while it stopped, they cross this BYE (before 2026-12-06 each
        lost an attempt; docs/protocol.md, 7.10). A list past what a node
        takes is left out, and every task it leased here spends one."""
        running, given_back = self.running, self.given_back
        started = {task_id for task_id, origin in self.routes.origin.items()
                   if origin is link and running.get(task_id) not in given_back}
        started.update(link.outbox.unsent())
        body: dict[str, Any] = {"worker": self.wid}
        if len(started) <= c.MAX_WORKER_CAPACITY:
            body["started"] = sorted(started)
        return body

    def hurry(self) -> None:
        """Asked again to stop: end the wait for running handlers at once
        -- BYE (their nodes put their tasks back, attempt spent), the pool
        stopped as at the end of the grace -- and exit. Stops first if the
        worker was not stopping."""
        if not self._hurry.is_set():
            self._hurry.set()
            if self.stopping:
                logger.warning("worker %s: asked again to stop: not waiting for the %d running task(s) any longer",
                               self.wid, len(self.running) + len(self.superseded))
        self.stop()

    def stop(self, grace: float | None = None) -> None:
        """Return unstarted tasks, let running ones finish, say BYE. Idempotent."""
        if self.stopping:
            self._stopped.wait()
            return
        self.stopping = True
        grace = self.grace if grace is None else grace
        returned: dict[NodeLink, list[str]] = {}
        while (waiting := self.backlog.popleft()) is not None:
            link, d, _ = waiting
            returned.setdefault(link, []).append(d[0])
            self.routes.holders.pop(d[0], None)
        # Jobs the pool holds unstarted (the processes pool's, waiting for a
        # child) go back like the backlog: no attempt spent, and not waited
        # for (before 2026-12-06 they counted as running: see ProcessPool.withdraw).
        for job in self.pool.withdraw():
            origin = self.routes.origin.get(job.task_id)
            self.given_back.add(job)
            if origin is not None and current(self.running, job):
                returned.setdefault(origin, []).append(job.task_id)
        # Every node hears at once that this worker takes no more (before
        # 2026-12-06 each kept leasing it the credit it had, every task of
        # which came back by RETURN: a round trip each).
        for link in dict.fromkeys([*self.links, *returned]):
            link.say_stopping(returned.get(link, []))
        self._wake(len(self.idle))
        running = len(self.running) + len(self.superseded) - len(self.given_back)
        logger.info("worker %s stopping: %d running task(s), %d given back unstarted, grace %.1fs%s", self.wid,
                    running, sum(len(ids) for ids in returned.values()), grace, STOP_AGAIN if running > 0 else "")
        deadline = monotonic() + grace
        while (self.running or self.superseded) and not self._hurry.is_set():
            left = deadline - monotonic()
            if left <= 0:
                break
            self._hurry.wait(min(DRAIN_POLL, left))
        if (self.running or self.superseded) and not self._hurry.is_set():
            logger.warning("worker %s: %d task(s) still running after %.1fs; the node will put them back",
                           self.wid, len(self.running) + len(self.superseded), grace)
        for link in self.links:
            link.flush()
            link.send(c.BYE, self._bye(link))
        green.sleep(BYE_LINGER)   # let the BYE leave before the sockets close
        self.stopping_hard = True
        self.supervisor.kill()
        self.pool.stop()
        if self.aio is not None:
            self.aio.stop()
        for link in self.links:
            link.close()
        self.pulse.stop()
        self.inbox.close()
        try:
            self.app.close()       # flushes what handlers submitted (bounded): may raise Timeout, Busy...
        except Exception as exc:
            # Said, and the stop goes on: before 2026-12-05 it ended here, and
            # the worker never stopped (a full node made the flush time out).
            logger.error("worker %s: submits made by handlers may be lost: flushing them at stop failed (%s: %s)",
                         self.wid, type(exc).__name__, exc)
        self.factory.close()
        logger.info("worker %s stopped after %d task(s)", self.wid, self.executed)
        self._stopped.set()
