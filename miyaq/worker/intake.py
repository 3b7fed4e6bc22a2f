"""What a worker takes from its nodes (:class:`Intake`, a base of
:class:`~miyaq.worker.runner.Worker`): a DISPATCH's deliveries, each
checked and put in the backlog -- at most twice the credit the worker
grants, the rest given back -- and the idle runners woken for them; an
ABORT, stopping a running handler or dropping a waiting task; a node's
RECONNECT, its unstarted tasks dropped; a link lost. The link's reader
(:mod:`miyaq.worker.link`) calls these. Nothing here runs a handler.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable

from ..logs import LogLimiter
from ..protocol import commands as c
from ..runtime import monotonic
from .config import OVER_CAPACITY
from .execute import Interrupted, TaskAborted
from .jobs import Backlog, Job, reportable, returnable_ids, well_formed
from .link import NodeLink
from .reports import Reports
from .routing import Routes

logger = logging.getLogger("miyaq.worker.runner")     # the worker's lines: one logger to follow it
_log = LogLimiter(logger)     # what a node sends may repeat (a buggy or hostile one): a few lines a minute

__all__ = ["Intake"]


class Intake:
    """The worker's intake of its nodes' deliveries and requests (its
    base). The worker sets the attributes below, and :meth:`_interrupt`
    is its own (it stops a running job)."""

    wid: str
    stopping: bool
    capacity: int
    links: list[NodeLink]
    running: dict[str, Job]
    backlog: Backlog
    idle: deque[Any]
    reports: Reports
    routes: Routes
    _interrupt: Callable[[Job, type[Interrupted]], None]

    def accept(self, link: NodeLink, deliveries: list[Any], received: float | None = None) -> None:
        """Take a DISPATCH's ``deliveries`` from ``link``'s node, read at
        ``received`` (monotonic; now if not given): checked one by one, each
        well-formed one to the backlog, the rest reported or given back."""
        if self.stopping:
            # Sent before the node read our stop (or by a node that ignores it):
            # given back, saying again that this worker is stopping -- only the
            # ids a node takes (one it refused would refuse the whole RETURN).
            link.say_stopping(returnable_ids(deliveries))
            return
        malformed = 0
        over: list[str] = []
        if received is None:
            received = monotonic()
        # What a worker holds is bounded whatever its nodes send: twice the
        # credit it grants, for the races where a node's count and ours differ
        # for a while (a lease run out on a handler still running here).
        room = OVER_CAPACITY * self.capacity * len(self.links) - len(self.running) - len(self.backlog)
        for d in deliveries:
            if not well_formed(d):
                malformed += 1
                if reportable(d):       # its node waits for an outcome: a slot otherwise lost to it
                    self.reports.failure(link, d[0], d[4], {
                        "type": "BadDelivery", "retry": False,
                        "message": f"worker {self.wid} got this task in a malformed delivery"})
                continue
            if room <= 0:
                over.append(d[0])
                continue
            room -= 1
            if len(d) == 7:
                self.routes.note_holders(link, d[0], d[6])
            self.backlog.append(link, d, received)
        if malformed:
            _log.warning("delivery", "ignoring %d malformed deliver%s from %s", malformed,
                         "y" if malformed == 1 else "ies", link.endpoint)
        if over:
            # More than the credit this worker grants could ever add up to: a
            # buggy or hostile node. Given back unstarted, never held.
            link.send(c.RETURN, {"ids": over, "credit": False})
            _log.warning("over capacity", "node %s sent %d task(s) beyond what this worker holds at most "
                         "(%d x %d a node); returned them", link.endpoint, len(over), OVER_CAPACITY, self.capacity)
        self._wake(len(deliveries))

    def abort(self, ids: list[Any]) -> None:
        for task_id in ids:
            job = self.running.get(task_id)
            if job is not None:
                self._interrupt(job, TaskAborted)
                continue
            dropped = self.backlog.drop(task_id)
            if dropped is not None:
                link, d = dropped
                self.reports.failure(link, task_id, d[4], {"type": "Aborted", "message": "cancelled",
                                                           "retry": False})

    def forget_unstarted(self, link: NodeLink) -> None:
        """``link``'s node does not know this worker any more (RECONNECT): it
        put back the tasks it had leased here, and leases them anew (maybe
        to another worker, which may have run them already). The ones not
        started are dropped unreported; the running ones run on and report
        (a DONE still counts: docs/protocol.md, 7.11). Before 2026-12-06 a
        worker frozen past its liveness started them once it ran again."""
        ids = self.backlog.drop_link(link)
        for task_id in ids:
            self.routes.holders.pop(task_id, None)
        if ids:
            logger.warning("worker %s: node %s no longer leases the %d task(s) it sent here not yet started "
                           "(it took this worker for lost, or restarted): dropped, not run", self.wid,
                           link.endpoint, len(ids))

    def link_lost(self, link: NodeLink) -> None:
        self.routes.link_lost(link)

    def _wake(self, n: int) -> None:
        idle = self.idle
        while n > 0 and idle:
            idle.popleft().set()
            n -= 1
