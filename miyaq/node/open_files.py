"""A node's open files against its limit: said in the log and in STATUS.

A node at its limit on open files accepts no new connection (clients,
workers and peers that connect time out) while libzmq retries the accept in
a tight loop, a core busy (:mod:`miyaq.runtime.open_files`). Nothing else
says so, so this part counts the node's open files every
``OPEN_FILES_CHECK`` seconds: at ``NEAR`` of the limit or more it logs an
error naming the limit and how to raise it (again at most once a
``REPEAT``), and once the count is back under ``CLEAR`` of it, that it
recovered. STATUS reports the count and the limit (``open_files``).
"""
from __future__ import annotations

import logging
from typing import Any

from miyaq.runtime import RESTART, Supervisor, green, monotonic
from miyaq.runtime.open_files import LOW_LIMIT, open_count, soft_limit

logger = logging.getLogger(__name__)

OPEN_FILES_CHECK = 5.0
"""Seconds between two counts of the node's open files (a directory listing
of ``/proc/self/fd``: about a microsecond per open file)."""
NEAR = 0.9
"""At this share of the limit or more, the node is near it: an error is logged."""
CLEAR = 0.8
"""Back under this share of the limit, the node says it recovered."""
REPEAT = 60.0
"""While the node stays near its limit, the error is logged again this often."""


class OpenFilesWatch:
    """A node part: counts the node's open files (see the module doc)."""

    name = "open files"

    def __init__(self, node_id: str, supervisor: Supervisor) -> None:
        self.node_id = node_id
        self.supervisor = supervisor
        self.open: int | None = open_count()
        self.limit: int | None = soft_limit()
        self.near = False
        self.times_near = 0          # how many times it came near the limit
        self._said_at: float | None = None     # when the error was last logged

    # -- lifecycle ----------------------------------------------------------------
    def setup(self) -> None:
        """Say at start when the limit is low for a server."""
        if self.limit is not None and self.limit < LOW_LIMIT:
            logger.warning("node %s may open at most %d files (its soft limit): it holds about that many "
                           "connections -- clients, workers, peers -- and refuses the next ones; raise it "
                           "(ulimit -n, systemd's LimitNOFILE, docker's --ulimit nofile)", self.node_id, self.limit)

    def start(self) -> None:
        self.supervisor.spawn("open files watch", self._run, policy=RESTART)

    def stop(self) -> None:
        """The supervisor ends the watch."""

    def kill(self) -> None:
        """Nothing to release."""

    # -- the watch ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            green.sleep(OPEN_FILES_CHECK)
            self.check(monotonic())

    def check(self, now: float) -> None:
        """Count the open files; log when the node comes near its limit,
        stays there, or is back under it."""
        self.open, self.limit = open_count(), soft_limit()
        if self.open is None or self.limit is None:
            return
        if self.open >= NEAR * self.limit:
            if not self.near:
                self.near = True
                self.times_near += 1
                self._said_at = None
            if self._said_at is None or now - self._said_at >= REPEAT:
                self._said_at = now
                logger.error("node %s has %d files open of its limit of %d: connections past the limit are "
                             "refused (clients and workers time out) while libzmq retries them, a core busy; "
                             "raise the limit (ulimit -n, systemd's LimitNOFILE, docker's --ulimit nofile) "
                             "or spread the connections over more nodes", self.node_id, self.open, self.limit)
        elif self.near and self.open < CLEAR * self.limit:
            self.near = False
            logger.warning("node %s is back under its limit on open files: %d of %d", self.node_id,
                           self.open, self.limit)

    def stats(self) -> dict[str, Any]:
        """STATUS's ``open_files``: ``open`` (None: not counted here), ``limit``
        (None: unlimited), ``near`` (at ``NEAR`` of the limit or more at the
        last count) and ``times_near``."""
        return {"open": self.open, "limit": self.limit, "near": self.near, "times_near": self.times_near}
