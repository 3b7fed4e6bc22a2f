"""``miyaq chaos --rolling``: the operator's procedures, under load,
instead of the nemesis's random faults.

In order, each step waiting for the cluster to be whole again (every node
up, in every ring, every stream heard) plus ``settle`` seconds before the
next:

1. ``drain``: the first node is taken out of the ring (``leave``), the run
   waits until it holds no live task, stops it (SIGTERM), starts it again
   and puts it back (``join``) — the runbook's upgrade with a drain;
2. ``restart``: every other node in turn is stopped with SIGTERM and
   started again (its log brings back what it held) — a plain rolling
   upgrade;
3. ``replace``: the last node leaves, is drained and stopped for good, and
   a new node with a new id and an empty data directory joins in its
   place — a replaced machine.

Each step is recorded like a fault (``begin`` when it starts, ``heal``
when the node runs again, ``recovered`` when the cluster is whole), so
the report shows its recovery time. The checker holds a rolling run to a
stricter rule than a faulty one: not one task may start twice and not one
submit may fail (DESIGN.md: duplicates only after a real failure; a
planned restart is not one).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..cluster.ring_admin import RingAdmin
from ..errors import MiyaqError
from .history import HistoryWriter

logger = logging.getLogger(__name__)

POLL = 0.25
DRAIN_TIMEOUT = 60.0


class Rolling:
    def __init__(self, cluster: Any, history: HistoryWriter, *, settle: float = 3.0,
                 recover_timeout: float = 60.0, first_delay: float = 5.0) -> None:
        self.cluster = cluster
        self.history = history
        self.settle = settle
        self.recover_timeout = recover_timeout
        self.first_delay = first_delay
        self.injected = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: tuple[str, str, float] | None = None

    def start(self) -> Rolling:
        self._thread = threading.Thread(target=self._run, name="rolling", daemon=True)
        self._thread.start()
        return self

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def describe(self, now: float) -> list[str]:
        """The step under way, for the progress line."""
        current = self._current
        return [f"{current[0]} {current[1]} {now - current[2]:.0f}s"] if current else []

    def stop(self, timeout: float | None = None) -> None:
        """Let the step under way finish (a node is never left stopped); no new step."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.recover_timeout + DRAIN_TIMEOUT + 60.0)

    # -- the procedure ------------------------------------------------------------------
    def _run(self) -> None:
        if self._stop.wait(self.first_delay):
            return
        nodes = list(self.cluster.node_ids)
        steps = [("drain", nodes[0])] + [("restart", n) for n in nodes[1:]] + [("replace", nodes[-1])]
        for fid, (kind, node_id) in enumerate(steps, start=1):
            if self._stop.is_set():
                return
            try:
                # A session per step: one held for minutes may be lost meanwhile.
                with RingAdmin(self.cluster.zk_hosts, self.cluster.name, timeout=30.0) as admin:
                    self._step(fid, kind, node_id, admin)
            except (MiyaqError, OSError) as exc:
                self.errors.append(f"{kind} {node_id}: {exc}")
                self.history.write("fault", phase="error", fault=fid, kind=kind, target=node_id,
                                   error=str(exc), step="rolling")
                logger.error("rolling %s of %s failed: %s", kind, node_id, exc)
                return
            self._current = None
            time.sleep(self.settle)

    def _step(self, fid: int, kind: str, node_id: str, admin: RingAdmin) -> None:
        began = time.time()
        self._current = (kind, node_id, began)
        self.injected += 1
        self.history.write("fault", t=began, phase="begin", fault=fid, kind=kind, target=node_id,
                           pid=self.cluster.procs[node_id].pid)
        target = node_id
        if kind in ("drain", "replace"):
            self.history.write("fault", phase="note", fault=fid, kind=kind, target=node_id, note=admin.leave(node_id))
            self._wait_drained(node_id)
        self.cluster.procs[node_id].stop(30.0)
        if kind == "replace":
            target = self.cluster.replace_node(node_id)
            self.history.write("node", id=target, endpoint=self.cluster.specs[target].endpoint)
        else:
            self.cluster.start_node(node_id)
        if kind == "drain":
            self._wait(lambda: admin.status()["members"].get(node_id, {}).get("registered"),
                       f"{node_id} to register again")
            self.history.write("fault", phase="note", fault=fid, kind=kind, target=node_id, note=admin.join(node_id))
        healed = time.time()
        self.history.write("fault", t=healed, phase="heal", fault=fid, kind=kind, target=node_id, new=target)
        self._wait(lambda: self.cluster.whole()[0], "the cluster to be whole again")
        self.history.write("fault", phase="recovered", fault=fid, kind=kind, target=node_id,
                           recover_s=round(time.time() - healed, 3))

    def _wait_drained(self, node_id: str) -> None:
        """Until the node that left holds no live task (handed off, or run to the end)."""
        def drained() -> bool:
            try:
                status = self.cluster.client(node_id).status()
            except MiyaqError:
                return False
            return int((status.get("totals") or {}).get("live", 1)) == 0
        self._wait(drained, f"{node_id} to hand off every task", DRAIN_TIMEOUT)

    def _wait(self, done: Any, what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.recover_timeout)
        while not done():
            if time.monotonic() > deadline:
                raise MiyaqError(f"timed out waiting for {what}")
            time.sleep(POLL)
