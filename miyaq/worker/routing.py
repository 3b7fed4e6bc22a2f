"""Where a task's reports go: the node that gave it, or -- when that node
fell silent -- another holder of the task (cluster mode: DISPATCH names
the holders' service endpoints)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .link import NodeLink

logger = logging.getLogger(__name__)


class Routes:
    """``origin``: running task id -> the link it came from; ``holders``:
    task id -> its holders' endpoints, from the delivery until it is reported."""

    def __init__(self, links: list["NodeLink"]) -> None:
        self.links = links          # the worker's list, shared: links discovered later count
        self.origin: dict[str, "NodeLink"] = {}
        self.holders: dict[str, list[str]] = {}

    def running_from(self, link: "NodeLink") -> int:
        return sum(1 for origin in self.origin.values() if origin is link)

    def report_link(self, link: "NodeLink", task_id: str, keep: bool = False) -> "NodeLink":
        """Where to report ``task_id``: its node, or -- if that node went
        silent -- another live holder of the task. Forgets the holders unless
        ``keep``."""
        holders = self.holders.get(task_id) if keep else self.holders.pop(task_id, None)
        if not link.lost or not holders:
            return link
        for other in self.links:
            if other is not link and (other.endpoint in holders or other.advertised in holders) \
                    and not other.silent():
                logger.info("task %s: node %s is silent; reporting to %s", task_id, link.endpoint, other.endpoint)
                return other
        return link

    def link_silent(self, link: "NodeLink") -> None:
        """``link``'s node went silent: tell another holder of each task it
        gave us that the task is still running here (a TOUCH), so a standby
        copy there does not start it a second time."""
        for task_id, origin in list(self.origin.items()):
            if origin is link:
                alternative = self.report_link(link, task_id, keep=True)
                if alternative is not link:
                    alternative.touch(task_id)
