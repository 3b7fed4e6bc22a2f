"""The node, the workers and the client of one bench run, up and ready.

:class:`Fleet` starts a standalone node (or uses ``--connect``), waits until
it answers STATUS, starts W worker processes running
:mod:`miyaq.bench.tasks` on a queue of their own, and waits until the node
counts W workers on that queue. Every wait is bounded by the run's
deadline and checks that the children are still alive, so a node that
fails to start is reported with its log instead of a bare timeout.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from ..client.client import Client
from ..errors import MiyaqError, Timeout
from . import tasks
from .procs import Child, ProcessGroup, free_port, peak_rss

logger = logging.getLogger(__name__)

CONNECT_WAIT = 5.0      # longest wait for a node to answer its first STATUS
POLL = 0.05


class Fleet:
    def __init__(self, procs: ProcessGroup, *, connect: str | None, workers: int, concurrency: int,
                 queue: str, records_dir: str, deadline: float, fsync: str | None = None,
                 data_dir: str = "") -> None:
        self.procs = procs
        self.fsync = fsync
        self.data_dir = data_dir
        self.connect = connect
        self.n_workers = workers
        self.concurrency = concurrency
        self.queue = queue
        self.records_dir = records_dir
        self.deadline = deadline            # time.monotonic() value
        self.node: Child | None = None
        self.workers: list[Child] = []
        self.endpoint = connect or ""
        self.client: Client | None = None

    # -- starting ------------------------------------------------------------------
    def start(self) -> Client:
        """Bring everything up; returns the producer client. Raises MiyaqError."""
        if not self.connect:
            port = free_port()
            self.endpoint = f"tcp://127.0.0.1:{port}"
            durable = ["--data-dir", self.data_dir, "--fsync", self.fsync] if self.fsync else []
            self.node = self.procs.start("node", [
                sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(port),
                "--http-port", "0", "--node-id", "bench", "--log-level", "WARNING", *durable])
        self.client = Client(self.endpoint, submit_timeout=self._left(), request_timeout=2.0)
        self._wait_for_node()
        env = dict(os.environ, **{tasks.ENV_CONNECT: self.endpoint, tasks.ENV_RECORDS: self.records_dir})
        for i in range(self.n_workers):
            self.workers.append(self.procs.start(f"worker-{i}", [
                sys.executable, "-m", "miyaq.cli.main", "worker", "miyaq.bench.tasks:app",
                "--processes", "1", "--concurrency", str(self.concurrency), "--connect", self.endpoint,
                "--queues", self.queue, "--grace", "2", "--log-level", "WARNING"], env))
        self._wait_for_workers()
        return self.client

    def _left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check_children(self) -> None:
        """Raise if the node or a worker has exited."""
        for child in ([self.node] if self.node else []) + self.workers:
            if not child.alive():
                raise MiyaqError(child.describe_exit())

    def _wait_for_node(self) -> None:
        assert self.client is not None
        limit = min(self._left(), CONNECT_WAIT if self.connect else self._left())
        stop = time.monotonic() + limit
        last: MiyaqError | None = None
        while time.monotonic() < stop:
            self.check_children()
            try:
                self.client.status()
                return
            except MiyaqError as err:   # not connected yet, or not answering yet
                last = err
            time.sleep(POLL)
        why = f" (last error: {last.message})" if last is not None else ""
        if self.node is not None:
            raise Timeout(f"the bench's node at {self.endpoint} did not answer within {limit:.1f}s{why}; "
                          f"last lines of {self.node.log_path}:\n{self.node.log_tail()}")
        raise Timeout(f"cannot reach a miyaq node at {self.endpoint}: no answer to STATUS within "
                      f"{limit:.1f}s{why}. Is a node running there?")

    def _wait_for_workers(self) -> None:
        assert self.client is not None
        seen = 0
        while time.monotonic() < self.deadline:
            self.check_children()
            row = self.queue_row()
            seen = int(row.get("workers", 0)) if row else 0
            if seen >= self.n_workers:
                return
            time.sleep(POLL)
        tails = "\n".join(f"--- {w.log_path}:\n{w.log_tail()}" for w in self.workers)
        raise Timeout(f"only {seen} of {self.n_workers} workers registered with {self.endpoint} "
                      f"before the timeout\n{tails}")

    # -- watching ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        assert self.client is not None
        return self.client.status()

    def queue_row(self) -> dict[str, Any] | None:
        """The node's counters for the bench queue (None until it exists)."""
        row = self.status().get("queues", {}).get(self.queue)
        return row if isinstance(row, dict) else None

    def node_peak_rss(self) -> int | None:
        """VmHWM of the bench's own node; None with --connect (not ours to read)."""
        if self.node is None or not self.node.alive():
            return None
        return peak_rss(self.node.pid)

    # -- stopping ------------------------------------------------------------------
    def stop_workers(self, grace: float = 5.0) -> None:
        """SIGTERM the workers and wait: they flush their record files on exit."""
        self.procs.stop(self.workers, grace)

    def close(self) -> None:
        """Close the client and stop every child. Never raises."""
        if self.client is not None:
            try:
                self.client.close(flush=False)
            except Exception:   # closing must not mask the error that got us here
                logger.exception("closing the bench client failed")
            self.client = None
        self.procs.close()
