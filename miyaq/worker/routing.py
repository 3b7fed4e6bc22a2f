"""Where a task's reports go: the node that gave it, or -- when that node
fell silent or its connection closed -- another holder of the task (cluster
mode: DISPATCH names the holders' service endpoints).

A node that dies may take with it the reports (DONE, FAILED) it received
last, before it told the task's other holders; a standby copy there would
then run the task again -- also one whose handler said not to retry it. So
the worker keeps each report on a task with other holders for a while after
sending it (:data:`~miyaq.worker.config.RECENT_REPORT_SECONDS`, longer with
a long ``node_timeout``; bounded in count and bytes) and, when the node it
went to is lost, sends it again to another live holder. A holder that already knows the outcome (a tombstone,
a dead letter, a retry of its own) ignores it; one whose standby copy was
leased to this worker (it heard the STARTED event) applies it: a DONE
finishes the task, a FAILED dead-letters it or waits out the retry's
backoff. Standalone nodes name no holders: nothing is kept for them.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from ..logs import LogLimiter
from ..protocol.commands import MAX_ENDPOINT_CHARS
from ..runtime import monotonic
from .config import MAX_HOLDERS, RECENT_REPORT_BYTES, RECENT_REPORT_MAX, RECENT_REPORT_SECONDS

if TYPE_CHECKING:
    from .link import NodeLink

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # what a node sends may repeat (a buggy or hostile one): a few lines a minute


class SentReport(NamedTuple):
    """A DONE (``result``) or FAILED (``error``) sent to ``link``'s node at
    ``at`` (monotonic seconds); ``size``: the bytes it counts against
    RECENT_REPORT_BYTES."""
    at: float
    link: "NodeLink"
    task_id: str
    attempt: int
    result: bytes | None
    error: dict[str, Any] | None
    holders: list[str]
    size: int

    def send_to(self, link: "NodeLink") -> None:
        if self.error is not None:
            link.report_failed(self.task_id, self.attempt, self.error, elsewhere=True)
        else:
            link.report_done(self.task_id, self.attempt, self.result, elsewhere=True)


def error_size(error: dict[str, Any]) -> int:
    """About the bytes of a failure report (its strings; the worker bounds
    the message and the traceback, ERROR_MESSAGE_BYTES and TRACEBACK_BYTES)."""
    return sum(len(v) if isinstance(v, str) else 8 for v in error.values()) + 16 * len(error)


class Routes:
    """``origin``: running task id -> the link it came from; ``holders``:
    task id -> its holders' endpoints, from the delivery until it is
    reported; ``recent``: the reports sent lately on tasks with holders,
    oldest first."""

    def __init__(self, links: list["NodeLink"], keep_seconds: float = RECENT_REPORT_SECONDS) -> None:
        self.links = links          # the worker's list, shared: links discovered later count
        self.keep_seconds = keep_seconds    # how long a sent report is kept (WorkerConfig.recent_report_seconds)
        self.origin: dict[str, "NodeLink"] = {}
        self.holders: dict[str, list[str]] = {}
        self.recent: deque[SentReport] = deque()
        self.recent_bytes = 0

    def running_from(self, link: "NodeLink") -> int:
        return sum(1 for origin in self.origin.values() if origin is link)

    def note_holders(self, link: "NodeLink", task_id: str, holders: Any) -> None:
        """Keep a delivery's holders (where to report if its node is lost),
        if they are a list of at most MAX_HOLDERS endpoints of at most
        MAX_ENDPOINT_CHARS characters; otherwise they are ignored (logged)."""
        if (isinstance(holders, list) and len(holders) <= MAX_HOLDERS
                and all(isinstance(h, str) and len(h) <= MAX_ENDPOINT_CHARS for h in holders)):
            self.holders[task_id] = holders
        else:
            _log.warning("holders", "task %s from %s: ignoring its holders (not a list of at most %d endpoints)",
                         task_id, link.endpoint, MAX_HOLDERS)

    def report_link(self, link: "NodeLink", task_id: str, keep: bool = False) -> "NodeLink":
        """Where to report ``task_id``: its node, or -- if that node is lost
        -- another live holder of the task. Forgets the holders unless
        ``keep``."""
        holders = self.holders.get(task_id) if keep else self.holders.pop(task_id, None)
        if not link.lost or not holders:
            return link
        return self.reroute(link, task_id, holders)

    def reroute(self, link: "NodeLink", task_id: str, holders: list[str]) -> "NodeLink":
        """Where to report ``task_id`` (whose ``holders`` the caller took),
        ``link``'s node being lost: another live holder, else ``link``."""
        other = self._other_holder(link, holders)
        if other is None:
            return link
        _log.log(logging.INFO, "rerouted", "task %s: node %s is lost; reporting to %s", task_id, link.endpoint,
                 other.endpoint)
        return other

    def _other_holder(self, link: "NodeLink", holders: list[str]) -> "NodeLink | None":
        for other in self.links:
            if other is not link and (other.endpoint in holders or other.advertised in holders) \
                    and not other.silent():
                return other
        return None

    def sent_report(self, link: "NodeLink", task_id: str, attempt: int, holders: list[str] | None, *,
                    result: bytes | None = None, error: dict[str, Any] | None = None) -> None:
        """A DONE (``result``) or a FAILED (``error``) for ``task_id`` went to
        ``link``'s node: keep it for :meth:`link_lost` if the task has other
        holders."""
        if not holders or len(holders) < 2:
            return
        now = monotonic()
        size = error_size(error) if error is not None else len(result or b"")
        self.recent.append(SentReport(now, link, task_id, attempt, result, error, holders, size))
        self.recent_bytes += size
        self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        """Keep at most RECENT_REPORT_MAX reports and RECENT_REPORT_BYTES of
        results and errors, none older than ``keep_seconds``."""
        recent = self.recent
        oldest = now - self.keep_seconds
        while recent and (len(recent) > RECENT_REPORT_MAX or self.recent_bytes > RECENT_REPORT_BYTES
                          or recent[0].at < oldest):
            self.recent_bytes -= recent.popleft().size

    def link_lost(self, link: "NodeLink") -> None:
        """``link``'s node went silent or its connection closed:
        - tell another holder of each task it gave us that still runs here
          that it runs (a TOUCH), so a standby copy there does not start it a
          second time;
        - send the reports it was sent lately again to another holder of each
          task, so a node that died before telling them costs no second run."""
        for task_id, origin in list(self.origin.items()):
            if origin is link:
                alternative = self.report_link(link, task_id, keep=True)
                if alternative is not link:
                    alternative.touch(task_id)
        self._forget_old(monotonic())
        resent = 0
        kept: deque[SentReport] = deque()
        for sent in self.recent:
            if sent.link is link:
                other = self._other_holder(link, sent.holders)
                if other is not None:
                    sent.send_to(other)
                    sent = sent._replace(link=other)     # kept, in case that node goes too
                    resent += 1
            kept.append(sent)
        self.recent = kept
        if resent:
            logger.info("node %s is lost: %d recent report(s) sent again to other holders", link.endpoint, resent)
