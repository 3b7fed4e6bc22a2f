"""The baseline's processes (:mod:`miyaq.bench.bare`): a relay and W workers.

Has the same face as :class:`miyaq.bench.fleet.Fleet` -- ``start``,
``pids``, ``unfinished``, ``check_children``, ``stop_workers``, ``close`` --
so the runner measures both the same way. Each worker grants the relay the
credit a miyaq worker grants its node (``concurrency + prefetch``, twice
the concurrency by default) and runs tasks one after another: for a no-op
handler that is all concurrency buys. With ``hub`` the relay and the
workers wait for messages in the gevent hub (``bare --hub``), as miyaq's
node and workers do.
"""
from __future__ import annotations

import logging
import sys
import time

from ..errors import MiyaqError, Timeout
from ..testing.ports import free_port
from .bare_client import RelayProbe
from .cpu import rss_bytes
from .procs import Child, ProcessGroup

logger = logging.getLogger(__name__)

POLL = 0.05


class BareFleet:
    def __init__(self, procs: ProcessGroup, *, workers: int, concurrency: int, records_dir: str,
                 deadline: float, hub: bool = False, prefetch: int | None = None) -> None:
        self.kind = "baseline@gevent" if hub else "baseline"
        self.hub = hub
        self.procs = procs
        self.n_workers = workers
        self.credit = concurrency + (concurrency if prefetch is None else prefetch)
        self.records_dir = records_dir
        self.deadline = deadline
        self.relay: Child | None = None
        self.workers: list[Child] = []
        self.endpoint = ""
        self.probe: RelayProbe | None = None

    def start(self) -> None:
        port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{port}"
        bare = [sys.executable, "-m", "miyaq.bench.bare"]
        hub = ["--hub"] if self.hub else []
        self.relay = self.procs.start("relay", [*bare, "relay", "--bind", self.endpoint, *hub])
        self.probe = RelayProbe(self.endpoint)
        self._wait_for_relay()
        for i in range(self.n_workers):
            self.workers.append(self.procs.start(f"worker-{i}", [
                *bare, "worker", "--connect", self.endpoint, "--credit", str(self.credit),
                "--records", self.records_dir, *hub]))
        self._wait_for_workers()

    def _wait_for_relay(self) -> None:
        assert self.probe is not None and self.relay is not None
        while time.monotonic() < self.deadline:
            self.check_children()
            try:
                self.probe.stats(0.5)
                return
            except Timeout:
                continue
        raise Timeout(f"the bare relay did not answer before the timeout; last lines of "
                      f"its output:\n{self.relay.log_tail()}")

    def _wait_for_workers(self) -> None:
        assert self.probe is not None
        seen = 0
        while time.monotonic() < self.deadline:
            self.check_children()
            seen = self.probe.stats()[2]
            if seen >= self.n_workers:
                return
            time.sleep(POLL)
        raise Timeout(f"only {seen} of {self.n_workers} bare workers reached the relay before the timeout")

    def check_children(self) -> None:
        for child in ([self.relay] if self.relay else []) + self.workers:
            if not child.alive():
                raise MiyaqError(child.describe_exit())

    def pids(self) -> dict[str, int]:
        out = {"relay": self.relay.pid} if self.relay else {}
        out.update((w.name, w.pid) for w in self.workers)
        return out

    def unfinished(self) -> tuple[int, int]:
        """(tasks received but not done, 0): the relay has no dead tasks."""
        assert self.probe is not None
        received, done, _ = self.probe.stats()
        return received - done, 0

    def counters(self) -> dict[str, int]:
        """The relay counts nothing of the kind (see ``Fleet.counters``)."""
        return {}

    def peak_rss(self) -> int | None:
        """VmHWM of the relay."""
        return rss_bytes(self.relay.pid, "VmHWM") if self.relay is not None else None

    def stop_workers(self, grace: float = 5.0) -> None:
        self.procs.stop(self.workers, grace)

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        self.procs.close()
