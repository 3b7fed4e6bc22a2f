"""The nemesis: injects faults on a schedule and records each one's life.

Every ``interval`` seconds (until ``last_start``, so that a fault has time
to heal before the load ends) it tries the enabled kinds in a random order and
starts the first one that has a target within the safety budget (if none has, it tries again every
``RETRY_SKIPPED`` seconds until the next tick): at most
``replicas − 1`` nodes down at once (a node counts as down from the moment
it is broken until the cluster is whole again after its repair, plus a
short settle time for handoffs), unless ``unsafe``. A tick whose every try
found no target is recorded as ``skipped``.

Each fault lives in its own thread: begin → wait its duration → heal →
wait until the cluster is whole (:meth:`LocalCluster.whole`) →
``recovered`` with ``recover_s`` (seconds from heal to whole). After
``recover_timeout`` an ``unrecovered`` record is written and the thread
keeps waiting (the budget stays taken) until the cluster is whole or the
nemesis stops. History records: ``{"ev": "fault", "phase": "begin" |
"heal" | "recovered" | "unrecovered" | "skipped" | "error", "fault": N,
"kind", "target", ...}``.

:meth:`Nemesis.stop` ends the schedule, heals every fault still in place at
once and waits (bounded) for the cluster to recover. Loops are bounded in
time by their stop events and deadlines.
"""
from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import MiyaqError
from .fault_kind import FaultKind
from .faults import KINDS, ZK_FAULTS, choose
from .history import HistoryWriter

logger = logging.getLogger(__name__)

POLL = 0.25
RETRY_SKIPPED = 2.0
HEAL_TRIES = 3


@dataclass
class ActiveFault:
    fid: int
    kind: FaultKind
    target: str
    began: float
    holders: set[str]
    healed: float | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class Nemesis:
    def __init__(self, cluster: Any, history: HistoryWriter, kinds: list[str], *, interval: float = 10.0,
                 duration: float = 5.0, pause_duration: float = 8.0, recover_timeout: float = 60.0,
                 settle: float = 1.0, replicas: int = 2, unsafe: bool = False, first_delay: float | None = None,
                 busy_workers: Callable[[], set[str | int]] = set, rng: random.Random | None = None,
                 last_start: float | None = None, cycle: bool = False) -> None:
        self.cluster = cluster
        self.history = history
        self.kinds = [k for k in kinds if k in KINDS]
        self.interval = interval
        self.duration = duration
        self.pause_duration = pause_duration
        self.recover_timeout = recover_timeout
        self.settle = settle
        self.unsafe = unsafe
        self.max_down = len(cluster.node_ids) if unsafe else max(0, replicas - 1)
        self.first_delay = interval if first_delay is None else first_delay
        self.busy_workers = busy_workers    # names (pids) of the workers running a task now
        self.last_start = last_start     # time.monotonic(): no fault begins after this
        self.rng = rng or random.Random()
        self.cycle = cycle       # kinds in their given order, round-robin (each one soon), not at random
        self._injected_kinds: dict[str, int] = {}      # kind -> times injected (cycle order)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._active: dict[int, ActiveFault] = {}
        self._stop = threading.Event()         # no new faults
        self._heal_now = threading.Event()     # end every fault's wait at once
        self._thread: threading.Thread | None = None
        self.injected = 0
        self.skipped = 0

    # -- schedule ---------------------------------------------------------------------
    def start(self) -> Nemesis:
        if self.kinds:
            self._thread = threading.Thread(target=self._schedule, name="nemesis", daemon=True)
            self._thread.start()
        return self

    def _schedule(self) -> None:
        tick = time.monotonic() + self.first_delay
        next_at = tick
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            now = time.monotonic()
            if self.last_start is not None and now > self.last_start:
                return
            last_try = now + RETRY_SKIPPED >= tick + self.interval
            try:
                fault = self.inject(record_skip=last_try)
            except Exception:   # a nemesis bug must not leave faults unhealed
                logger.exception("nemesis: injecting a fault failed")
                fault = None
            if fault is None and not last_try:
                next_at = now + RETRY_SKIPPED    # nothing safe to break yet: try again soon
                continue
            tick = max(tick + self.interval, now + 1.0)
            next_at = tick

    def active(self) -> list[ActiveFault]:
        with self._lock:
            return list(self._active.values())

    def describe(self, now: float) -> list[str]:
        """The faults in place, for the progress line."""
        return [f"{f.kind.name} {f.target} {now - f.began:.0f}s" for f in self.active()]

    def down(self) -> set[str]:
        with self._lock:
            return set().union(*(f.holders for f in self._active.values()))

    def inject(self, record_skip: bool = True) -> ActiveFault | None:
        """Start one fault now if any enabled kind has a target within budget."""
        down = self.down()
        ctx = {"busy_workers": self.busy_workers(), "unsafe": self.unsafe,
               "zk_down": any(f.kind.name in ZK_FAULTS for f in self.active())}
        reasons = []
        for kind in choose(self.kinds, self.rng, self._injected_kinds if self.cycle else None):
            if kind.holder and len(down) + kind.size(self.cluster) > self.max_down:
                reasons.append(f"{kind.name}: {len(down)} node(s) down already (budget {self.max_down})")
                continue
            targets = kind.targets(self.cluster, down, ctx)
            if not targets:
                reasons.append(f"{kind.name}: no target")
                continue
            target = self.rng.choice(sorted(targets))
            fault = ActiveFault(next(self._ids), kind, target, time.time(),
                                set(target.split("+")) if kind.holder else set())
            try:
                detail = kind.begin(self.cluster, target)
            except (MiyaqError, OSError, KeyError) as exc:
                self._record("error", fault, error=str(exc), step="begin")
                continue
            with self._lock:
                self._active[fault.fid] = fault
            self.injected += 1
            self._injected_kinds[kind.name] = self._injected_kinds.get(kind.name, 0) + 1
            self._record("begin", fault, t=fault.began, **detail)
            logger.info("fault %d: %s %s", fault.fid, kind.name, target)
            fault.thread = threading.Thread(target=self._life, args=(fault,), name=f"fault-{fault.fid}",
                                            daemon=True)
            fault.thread.start()
            return fault
        if record_skip:
            self.skipped += 1
            self.history.write("fault", phase="skipped", reasons=reasons)
        return None

    # -- one fault's life ---------------------------------------------------------------
    def _life(self, fault: ActiveFault) -> None:
        try:
            self._heal_now.wait(self.pause_duration if fault.kind.name == "pause" else
                                1.0 if fault.kind.name == "worker" else fault.kind.lasts(self.duration))
            self._heal(fault)
            if fault.kind.name == "worker":
                self._record("recovered", fault, recover_s=0.0)
                return
            self._await_recovery(fault)
            time.sleep(self.settle)
        finally:
            with self._lock:
                self._active.pop(fault.fid, None)

    def _heal(self, fault: ActiveFault) -> None:
        detail: dict[str, Any] = {}
        for attempt in range(1, HEAL_TRIES + 1):
            try:
                detail = fault.kind.heal(self.cluster, fault.target) or {}
                break
            except (MiyaqError, OSError) as exc:
                self._record("error", fault, error=str(exc), step="heal", attempt=attempt)
                time.sleep(1.0)
        fault.healed = time.time()
        self._record("heal", fault, t=fault.healed, **detail)

    def _await_recovery(self, fault: ActiveFault) -> None:
        assert fault.healed is not None
        deadline = time.monotonic() + self.recover_timeout
        reported = False
        why = ""
        while True:
            whole, why = self.cluster.whole()
            if whole:
                self._record("recovered", fault, recover_s=round(time.time() - fault.healed, 3))
                return
            if not reported and time.monotonic() >= deadline:
                reported = True
                self._record("unrecovered", fault, after_s=self.recover_timeout, why=why)
                logger.warning("fault %d (%s %s): not recovered after %.0fs: %s", fault.fid, fault.kind.name,
                               fault.target, self.recover_timeout, why)
            if self._stop.is_set() and reported:
                return
            time.sleep(POLL)

    def _record(self, phase: str, fault: ActiveFault, **fields: Any) -> None:
        self.history.write("fault", phase=phase, fault=fault.fid, kind=fault.kind.name, target=fault.target,
                           **fields)

    # -- stopping -----------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> None:
        """No new faults; heal the ones in place now; wait (bounded) for their
        recovery. Never raises."""
        self._stop.set()
        self._heal_now.set()
        if self._thread is not None:
            self._thread.join(10.0)
        deadline = time.monotonic() + (timeout if timeout is not None else self.recover_timeout + 30.0)
        for fault in self.active():
            if fault.thread is not None:
                fault.thread.join(max(0.1, deadline - time.monotonic()))
        left = self.active()
        if left:
            logger.warning("nemesis: %d fault(s) still recovering at stop: %s", len(left),
                           ", ".join(f"{f.kind.name} {f.target}" for f in left))
