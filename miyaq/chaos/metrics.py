"""Throughput, latency and recovery measured from a chaos history.

Fed by :func:`.checker.check` one task at a time. Times are wall-clock
seconds; reports give them relative to the run's start (``t0``).

- **Timeline**: per ``bucket`` (1 s): acks and first finishes by when
  they happened; submits, failed submits, ack and done latencies by
  submit time.
- **Latency per phase**: a task's phase is what was going on when it was
  submitted: ``calm`` (no fault in place), the kind of the fault in place
  (from its begin until the cluster was whole again), or ``drain`` (after
  the load stopped). ``ack`` = submit → acknowledgement; ``done`` = submit
  → the first finish record.
- **Recovery per fault**: ``recover_s`` (nemesis: heal → cluster whole
  again); ``client_recovery_s``: from the fault's begin to the end of the
  last *unhealthy* second before the next fault (less the second just
  before it, whose submits the next fault may delay; a second is unhealthy
  when under 90 % of the submits made in it were acknowledged within 1 s);
  ``unhealthy_s``: how many such seconds. For a killed worker: the tasks
  it was running and how long until the last of them finished elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checker import Trace

EXPLAIN_GRACE = 90.0
"""A re-run up to this long after a fault's recovery is put down to it
(chaos tasks have a 30 s lease; standby copies wait the lease + offsets)."""
HEALTHY_ACK_S = 1.0
HEALTHY_SHARE = 0.9
MIN_SUBMITS = 3
MAX_BUCKETS = 2 * 86400
"""Per-second series never go past this many buckets (two days), whatever the
history says: a series is a loop over every bucket of the run's span."""


def percentiles(values: list[float]) -> dict[str, float | int]:
    """Nearest-rank p50/p90/p99/max (seconds, 4 decimals) and the count."""
    if not values:
        return {"n": 0}
    values = sorted(values)
    n = len(values)

    def rank(p: float) -> float:
        return round(values[min(n - 1, max(0, math.ceil(p * n) - 1))], 4)

    return {"n": n, "p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": round(values[-1], 4)}


@dataclass
class FaultSpan:
    fid: int
    kind: str
    target: str
    begin: float
    heal: float | None = None
    recovered: float | None = None
    recover_s: float | None = None
    unrecovered: bool = False
    pid: int | None = None
    errors: list[str] = field(default_factory=list)
    ring_change: str | None = None
    """``zkquorum``: how a ring change asked while the quorum was lost went."""

    @staticmethod
    def feed(spans: dict[int, FaultSpan], r: dict[str, Any]) -> None:
        """Fold one ``fault`` history record into ``spans``."""
        phase, fid = r.get("phase"), r.get("fault")
        if not isinstance(fid, int):
            return
        t = float(r.get("t", 0.0))
        if phase == "begin":
            spans[fid] = FaultSpan(fid, str(r.get("kind")), str(r.get("target")), t, pid=r.get("pid"))
            return
        span = spans.get(fid)
        if span is None:
            return
        if phase == "heal":
            span.heal = t
            if r.get("ring_change") is not None:
                span.ring_change = str(r["ring_change"])
        elif phase == "recovered":
            span.recovered = t
            span.recover_s = r.get("recover_s")
        elif phase == "unrecovered":
            span.unrecovered = True
        elif phase == "error":
            span.errors.append(f"{r.get('step')}: {r.get('error')}")

    def end(self, fallback: float) -> float:
        """When the cluster was whole again (or ``fallback`` if never seen)."""
        return self.recovered or fallback

    def covers(self, t: float) -> bool:
        """Could something at ``t`` be this fault's doing?"""
        return self.begin - 1.0 <= t <= self.end(math.inf) + EXPLAIN_GRACE


class Bucket:
    __slots__ = ("ack_lat", "acks", "done_lat", "fails", "finishes", "quick_acks", "submits")

    def __init__(self) -> None:
        self.submits = self.acks = self.fails = self.finishes = self.quick_acks = 0
        self.ack_lat: list[float] = []
        self.done_lat: list[float] = []


class Metrics:
    def __init__(self, t0: float, bucket: float, phases: dict[str, float], spans: list[FaultSpan]) -> None:
        self.t0 = t0
        self.bucket = bucket
        self.phases = phases
        self.spans = spans
        self.buckets: dict[int, Bucket] = {}
        self.by_phase: dict[str, tuple[list[float], list[float]]] = {}
        # worker (name, or an old history's pid) -> (start, the task's finishes)
        self.interrupted: dict[str | int, list[tuple[float, list[float]]]] = {}
        self.load_end = phases.get("drain", math.inf)
        end = max(phases.values(), default=math.inf)
        self.last_key = min(MAX_BUCKETS, int((end - t0) // bucket) + 1 if math.isfinite(end) else MAX_BUCKETS)
        """The series end here: the run's last phase (``checked``), not the latest time any record claims."""

    def _b(self, t: float) -> Bucket:
        key = int((t - self.t0) // self.bucket)
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = Bucket()
        return b

    def phase_of(self, t: float) -> str:
        if t >= self.load_end:
            return "drain"
        for span in self.spans:
            if span.begin <= t < span.end(self.load_end):
                return span.kind
        return "calm"

    def add_task(self, tr: Trace) -> None:
        assert tr.submit is not None
        b = self._b(tr.submit)
        b.submits += 1
        ack_lat, done_lat = self.by_phase.setdefault(self.phase_of(tr.submit), ([], []))
        if tr.ack is not None:
            self._b(tr.ack).acks += 1
            lat = tr.ack - tr.submit
            b.ack_lat.append(lat)
            ack_lat.append(lat)
            b.quick_acks += lat <= HEALTHY_ACK_S
        elif tr.fail is not None:
            b.fails += 1
        if tr.finishes:
            first = min(f[0] for f in tr.finishes)
            self._b(first).finishes += 1
            b.done_lat.append(first - tr.submit)
            done_lat.append(first - tr.submit)
        finished = {(a, pid) for _, a, pid, *_ in tr.finishes}
        ends = sorted(f[0] for f in tr.finishes)
        for t, attempt, pid, _, worker in tr.starts:
            if (attempt, pid) not in finished:
                self.interrupted.setdefault(worker, []).append((t, ends))

    # -- results -------------------------------------------------------------------------
    def healthy(self, key: int) -> bool:
        b = self.buckets.get(key)
        if b is None or b.submits < MIN_SUBMITS:
            return True
        return b.quick_acks >= HEALTHY_SHARE * b.submits

    def fault_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i, span in enumerate(self.spans):
            # Submits in the second before the next fault (or the drain) may be acked after it: not ours.
            window_end = min(self.spans[i + 1].begin if i + 1 < len(self.spans) else math.inf,
                             self.load_end) - HEALTHY_ACK_S
            first = int((span.begin - self.t0) // self.bucket)
            end = min(window_end, (self._key_range()[1] + 1) * self.bucket + self.t0)
            last = math.ceil((end - self.t0) / self.bucket) - 1     # buckets that start before the window ends
            first = max(first, self._key_range()[0])
            bad = [k for k in range(first, last + 1) if not self.healthy(k)]
            row: dict[str, Any] = {
                "fault": span.fid, "kind": span.kind, "target": span.target,
                "begin_s": round(span.begin - self.t0, 2),
                "heal_s": round(span.heal - self.t0, 2) if span.heal else None,
                "recover_s": span.recover_s, "unrecovered": span.unrecovered,
                "client_recovery_s": round(max(0.0, (bad[-1] + 1) * self.bucket + self.t0 - span.begin), 2)
                if bad else 0.0,
                "unhealthy_s": round(len(bad) * self.bucket, 2),
            }
            if span.kind == "worker" and span.pid is not None:
                # Runs the kill cut short: started before it, and the task not finished by anyone by then
                # (a run aborted earlier because another copy finished does not count).
                ran = self.interrupted.get(span.target, []) + self.interrupted.get(int(span.pid), [])
                cut = [ends for t, ends in ran if t <= span.begin and not any(e <= span.begin for e in ends)]
                row["interrupted_tasks"] = len(cut)
                reruns = [min(e for e in ends if e > span.begin) for ends in cut if ends]
                row["rerun_s"] = round(max(reruns) - span.begin, 2) if reruns else None
            if span.errors:
                row["errors"] = span.errors
            if span.ring_change is not None:
                row["ring_change"] = span.ring_change
            rows.append(row)
        return rows

    def latency(self) -> dict[str, dict[str, Any]]:
        return {phase: {"ack": percentiles(a), "done": percentiles(d)}
                for phase, (a, d) in sorted(self.by_phase.items())}

    def series(self) -> dict[str, list[float]]:
        """Per-bucket series for the timeline picture (x in seconds from t0)."""
        lo, hi = self._key_range()
        keys = range(lo, hi + 1)
        out: dict[str, list[float]] = {k: [] for k in ("t", "submits", "acks", "fails", "finishes",
                                                        "ack_p50", "ack_p99", "done_p99")}
        for k in keys:
            b = self.buckets.get(k) or Bucket()
            out["t"].append(k * self.bucket)
            for name in ("submits", "acks", "fails", "finishes"):
                out[name].append(getattr(b, name) / self.bucket)
            ack, done = percentiles(b.ack_lat), percentiles(b.done_lat)
            out["ack_p50"].append(ack.get("p50", math.nan))
            out["ack_p99"].append(ack.get("p99", math.nan))
            out["done_p99"].append(done.get("p99", math.nan))
        return out

    def _key_range(self) -> tuple[int, int]:
        """The buckets the series cover: those holding something, within
        ``MAX_BUCKETS`` before the run's start and ``last_key`` after it."""
        lo = max(min(self.buckets, default=0), -MAX_BUCKETS)
        hi = min(max(self.buckets, default=-1), self.last_key)
        return lo, hi

    def summary(self) -> dict[str, Any]:
        recover = [s.recover_s for s in self.spans if s.recover_s is not None]
        return {"latency": self.latency(), "faults": self.fault_rows(),
                "recovery": {"faults": len(self.spans), "unrecovered": sum(s.unrecovered for s in self.spans),
                             "recover_s": percentiles(recover)},
                "phases": {k: round(v - self.t0, 2) for k, v in self.phases.items()}}
