"""How a worker tells its nodes what became of a task (:class:`Reports`):
a DONE or FAILED to the task's node -- or another holder, that node lost
(:mod:`miyaq.worker.routing`) --, sent at once by a runner that reports
alone, else together by the link's flusher; a delivery that never ran;
an outcome the worker failed to report."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..runtime import green
from .execute import Outcome, too_large
from .failures import log_outcome
from .jobs import Job
from .link import NodeLink

if TYPE_CHECKING:
    from .runner import Worker

logger = logging.getLogger("miyaq.worker.runner")     # the worker's lines: one logger to follow it


class Reports:
    """One per worker; every method runs in its hub."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        # A runner sent its result itself in this pass of the hub: the runners
        # that report after it in the same pass (tasks that ended together)
        # leave theirs to the flusher, which sends them together.
        self._sent_this_pass = False

    def outcome(self, link: NodeLink, job: Job, outcome: Outcome) -> None:
        """To the task's node, or another holder if that node is lost. With
        nothing left in the backlog this runner sends the results itself (a
        lone task's result without waking the flusher), unless another runner
        did so in this pass of the hub: tasks that ended at the same instant
        report one after another without yielding, and the flusher sends all
        but the first together once they have. Otherwise too the flusher
        sends them together once the runners yield. (Before 2026-12-05 each
        of a thousand tasks ending together sent a DONE of its own.)

        A report gives its node a slot back (credit) unless another node gave
        the task, or this worker is stopping: a slot given back then would
        have the node lease a task the worker only returns, and the BYE that
        follows would count that attempt as spent."""
        worker = self.worker
        routes = worker.routes
        task_id = job.task_id
        holders = routes.holders.pop(task_id, None)     # forgotten once reported (Routes.report_link)
        target = link if not link.lost or not holders else routes.reroute(link, task_id, holders)
        last = not worker.backlog
        alone = last and not self._sent_this_pass
        if alone:
            if worker.running or worker.superseded:
                # Others run, and may end in this same pass: theirs go to the
                # flusher. With none running (a lone task's case) no runner
                # can, and the pass needs no mark (nor a hub callback a task).
                self._sent_this_pass = True
                green.call_soon(self._pass_over)
            target.outbox.hold()
        try:
            kind, value = outcome
            if kind == "done" and isinstance(value, bytes) and len(value) > target.max_result:
                # Over the max_message its node's WELCOME said: sent, it would cost this link.
                kind, value = "failed", too_large(len(value), target.max_result,
                                                  f"one message to node {target.endpoint} can carry (its max_message)")
            # No slot back: see the docstring; or this node's extra credit is being taken back.
            elsewhere = target is not link or worker.stopping or link.extra.take_withhold()
            if kind == "done":
                target.report_done(task_id, job.attempt, value, elsewhere)
                if holders is not None:
                    routes.sent_report(target, task_id, job.attempt, holders, result=value)
            else:
                target.report_failed(task_id, job.attempt, value, elsewhere)
                if holders is not None:
                    routes.sent_report(target, task_id, job.attempt, holders, error=value)
                log_outcome(worker.wid, job, value)
        finally:
            if alone:
                target.outbox.send_now()
        if worker.adaptive and target is link and not worker.stopping:
            link.grant_extra(worker.run_times, last)

    def _pass_over(self) -> None:
        """The hub's pass ended (called from the hub): the next runner that
        reports with an empty backlog sends at once again."""
        self._sent_this_pass = False

    def failure(self, link: NodeLink, task_id: str, attempt: int, error: dict[str, Any]) -> None:
        """A delivery that never ran (aborted in the backlog, no handler for
        it) fails: reported like any outcome, its holders forgotten."""
        target = self.worker.routes.report_link(link, task_id)
        target.report_failed(task_id, attempt, error, target is not link or self.worker.stopping)

    def lost_outcome(self, link: NodeLink, task_id: str, attempt: int,
                             message: str = "the worker failed to report this attempt's outcome") -> None:
        error = {"type": "WorkerError", "message": message, "retry": True}
        try:
            link.report_failed(task_id, attempt, error)
        except Exception:
            logger.exception("worker %s: task %s: its outcome is lost; the node retries it when its lease "
                             "runs out", self.worker.wid, task_id)
