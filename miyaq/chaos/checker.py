"""The checker: reads a chaos history and says what happened to every task.

Pure: a function of the history records alone (the runner writes the
cluster's final answer for each task into the history as ``final``
records), so ``miyaq chaos --check HISTORY`` gives the same verdict later.

Verdicts, per submitted task id:

- **accepted**: an ``ack`` came back. Every accepted task must end
  ``done`` on the cluster -- or ``dead``, if its submit record says
  ``reject`` (``--reject-every``: it raises Reject once it has run; such a
  task that starts again after a finish record is counted in
  ``rejected.ran_again``, and explained like any other extra start). If its ``final`` state is anything else it is
  **lost** (no node knows it, or it ended cancelled/expired) or **stuck**
  (still held — scheduled, ready, running, retrying —, dead-lettered, or
  ``unreachable``: no node answered the status request);
  both are failures of the run. An accepted task no node knows any more
  but that has a ``finish`` record is **forgotten**, not lost: it ran to
  the end, but its tombstone is gone (e.g. every holder's data was
  wiped), so its result, status and dedup by id are gone too — reported,
  not a failure of the run -- when the run wiped a data dir (``wipe``).
  With no wipe, nothing may forget a finished task within a run (tombstones
  are kept an hour and 200,000 deep), so every forgotten task is
  ``forgotten_unexplained`` and fails the run like a lost one (a dead-letter
  record lost in a handoff was found so). Without ``final`` records (a run cut
  short) an accepted task with no ``finish`` record counts as lost.
- **failed submit**: a ``fail`` came back (or nothing did). The client was
  told it failed, but the task may have been stored anyway: the checker
  reports how many of them ran (a ``start``) and how many ended done.
- **ran more than once**: two or more ``start`` records. ``completed_twice``:
  two or more ``finish`` records (the handler ran to the end twice);
  ``after_crash``: an earlier run never finished (its worker or node died
  under it), the re-run the design expects; ``aborted``: the last run was
  cancelled mid-way (no finish record) because another copy finished
  first. Each start after the first is put down to a fault and a rule
  by :mod:`.explain` (``classes``); a task with any start it cannot
  explain counts as ``unexplained`` and fails the run (exit status 4).

Latency, throughput and per-fault recovery come from :mod:`.metrics`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .explain import DuplicateReport, explain, fence_windows, fencing_violations, runs_of
from .metrics import FaultSpan, Metrics

LIVE_STATES = ("scheduled", "ready", "running", "retrying")
GONE_STATES = ("unknown", "cancelled", "expired")
EXAMPLES = 10


class Trace:
    """What the history says about one task id."""

    __slots__ = ("ack", "fail", "final", "finishes", "reject", "starts", "submit")

    def __init__(self) -> None:
        self.submit: float | None = None
        self.reject = False         # submitted to reject itself: must end dead
        self.ack: float | None = None
        self.fail: str | None = None
        self.starts: list[tuple[float, int, int, str | None]] = []      # (t, attempt, pid, node id)
        self.finishes: list[tuple[float, int, int, str | None]] = []
        self.final: str | None = None


@dataclass
class Verdict:
    """The checker's answer; :meth:`summary` is what ``--json`` prints."""

    run: dict[str, Any]
    counts: dict[str, int]
    failed_codes: dict[str, int]
    examples: dict[str, list[str]]
    metrics: Metrics
    final_checked: bool
    stats: dict[str, Any] = field(default_factory=dict)
    dups: DuplicateReport = field(default_factory=DuplicateReport)

    @property
    def lost(self) -> int:
        return self.counts["lost"]

    @property
    def ok(self) -> bool:
        return self.exit_code() == 0

    def exit_code(self) -> int:
        """0 every accepted task done and every duplicate explained; 1 some
        lost; 3 none lost but some stuck; 4 none lost or stuck but some task
        started twice with no fault to explain it, a node cut off from
        ZooKeeper started tasks after it should have fenced itself, or a
        ring change was accepted while ZooKeeper had no quorum."""
        if self.counts["lost"] or self.counts["forgotten_unexplained"]:
            return 1
        if self.counts["stuck"]:
            return 3
        if self.counts["dup_unexplained"] or self.counts["fencing"] or self.ring_changed_without_quorum():
            return 4
        if self.run.get("rolling") and (self.counts["dup"] or self.counts["failed"] or self.rolling_broken()):
            return 4        # a planned restart is not a failure: no duplicate, no failed submit
        return 0

    def ring_changed_without_quorum(self) -> int:
        """``zkquorum`` faults during which a ring change was accepted."""
        return sum(1 for s in self.metrics.spans if (s.ring_change or "").startswith("accepted"))

    def rolling_broken(self) -> bool:
        """A step of a rolling run failed or never got the cluster whole again."""
        return any(s.errors or s.recovered is None for s in self.metrics.spans)

    def summary(self) -> dict[str, Any]:
        c = self.counts
        accepted = max(1, c["accepted"])
        return {
            "ok": self.ok, "exit_code": self.exit_code(), "final_checked": self.final_checked,
            "run": self.run,
            "submitted": c["submitted"], "accepted": c["accepted"], "done": c["done"],
            "forgotten": c["forgotten"], "forgotten_unexplained": c["forgotten_unexplained"],
            "lost": c["lost"], "stuck": c["stuck"], "dead": c["dead"], "never_ran": c["never_ran"],
            "rejected": {"accepted": c["rejected"], "dead": c["rejected_dead"], "ran_again": c["rejected_again"]},
            "failed_submits": {"total": c["failed"], "by_code": self.failed_codes, "ran": c["failed_ran"],
                               "done": c["failed_done"], "held": c["failed_held"]},
            "executions": {"starts": c["starts"], "finishes": c["finishes"]},
            "duplicates": {"ran_more_than_once": c["dup"], "rate": round(c["dup"] / accepted, 6),
                           "completed_twice": c["dup_completed"], "after_crash": c["dup_after_crash"],
                           "aborted": c["dup_aborted"],
                           "unexplained": c["dup_unexplained"], **self.dups.summary()},
            "started_while_fenced": c["fencing"],
            "ring_changed_without_quorum": self.ring_changed_without_quorum(),
            "rolling_broken": bool(self.run.get("rolling")) and self.rolling_broken(),
            "faults_skipped": c["faults_skipped"],
            "examples": self.examples,
            **self.metrics.summary(),
            "node_stats": self.stats,
        }


def check(records: Iterable[dict[str, Any]], bucket: float = 1.0) -> Verdict:
    """Read every record once and judge (see the module docstring)."""
    traces: dict[str, Trace] = {}
    run: dict[str, Any] = {}
    faults: dict[int, FaultSpan] = {}
    phases: dict[str, float] = {}
    stats: dict[str, Any] = {}
    final_checked = False
    skipped = 0
    node_of: dict[str, str] = {}

    def trace(task_id: str) -> Trace:
        tr = traces.get(task_id)
        if tr is None:
            tr = traces[task_id] = Trace()
        return tr

    for r in records:
        ev, t = r.get("ev"), float(r.get("t", 0.0))
        task_id = str(r.get("id"))
        if ev == "submit":
            trace(task_id).submit = t
            trace(task_id).reject = bool(r.get("reject"))
        elif ev == "ack":
            trace(task_id).ack = t
        elif ev == "fail":
            trace(task_id).fail = str(r.get("code", "error"))
        elif ev == "start" or ev == "finish":
            runs = trace(task_id).starts if ev == "start" else trace(task_id).finishes
            runs.append((t, int(r.get("attempt", 0)), int(r.get("pid", 0)), node_of.get(str(r.get("node")))))
        elif ev == "final":
            trace(task_id).final = str(r.get("state"))
        elif ev == "fault":
            if r.get("phase") == "skipped":
                skipped += 1
            FaultSpan.feed(faults, r)
        elif ev == "phase":
            phases[str(r.get("name"))] = t
            final_checked = final_checked or r.get("name") == "checked"
        elif ev == "node":        # a node added during the run (--rolling: a replacement)
            node_of[str(r.get("endpoint"))] = str(r.get("id"))
        elif ev == "run":
            run = {k: v for k, v in r.items() if k != "ev"}
            node_of = {str(ep): str(n) for n, ep in (run.get("node_endpoints") or {}).items()}
        elif ev == "stats":
            stats = r.get("nodes") or {}
    spans = sorted(faults.values(), key=lambda f: f.begin)
    fenced = fence_windows(spans)
    metrics = Metrics(run.get("t", min((tr.submit for tr in traces.values() if tr.submit), default=0.0)),
                      bucket, phases, spans)
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    dups = DuplicateReport()

    def example(kind: str, task_id: str) -> None:
        listed = examples.setdefault(kind, [])
        if len(listed) < EXAMPLES:
            listed.append(task_id)

    for task_id, tr in traces.items():
        if tr.submit is None:
            continue          # a run record without a submit (another producer's task?)
        counts["submitted"] += 1
        counts["starts"] += len(tr.starts)
        counts["finishes"] += len(tr.finishes)
        metrics.add_task(tr)
        if fenced:
            n = fencing_violations(tr.starts, fenced)
            if n:
                counts["fencing"] += n
                example("started_while_fenced", task_id)
        if len(tr.starts) > 1:
            _judge_duplicate(tr, task_id, counts, spans, example, dups)
        if tr.ack is not None:
            counts["accepted"] += 1
            _judge_accepted(tr, task_id, counts, final_checked, example)
        else:
            counts["failed"] += 1
            codes[tr.fail or "unanswered"] += 1
            if tr.starts:
                counts["failed_ran"] += 1
                example("failed_but_ran", task_id)
            if tr.final == "done" or (not final_checked and tr.finishes):
                counts["failed_done"] += 1
            elif tr.final in LIVE_STATES:
                counts["failed_held"] += 1
    counts["faults_skipped"] = skipped
    if not any(s.kind == "wipe" for s in spans):
        counts["forgotten_unexplained"] = counts["forgotten"]    # only a wiped data dir may forget
    for key in ("submitted", "accepted", "done", "forgotten", "forgotten_unexplained", "lost", "stuck", "dead",
                "never_ran", "failed", "rejected", "rejected_dead", "rejected_again",
                "failed_ran", "failed_done", "failed_held", "starts", "finishes", "dup", "dup_completed",
                "dup_after_crash", "dup_aborted", "dup_unexplained", "fencing"):
        counts.setdefault(key, 0)
    return Verdict(run, dict(counts), dict(codes), examples, metrics, final_checked, stats, dups)


def _judge_accepted(tr: Trace, task_id: str, counts: Counter[str], final_checked: bool, example: Any) -> None:
    if not tr.starts:
        counts["never_ran"] += 1
    if tr.reject:
        counts["rejected"] += 1
        if tr.finishes and any(t > min(tr.finishes)[0] for t, *_ in tr.starts):
            counts["rejected_again"] += 1        # the handler rejected it, and it ran again
            example("rejected_ran_again", task_id)
    if final_checked:
        state = tr.final or "unknown"
        if tr.reject and state == "dead":
            counts["rejected_dead"] += 1
        elif state == "done" and not tr.reject:
            counts["done"] += 1
        elif state in GONE_STATES and tr.finishes:
            counts["forgotten"] += 1    # it ran to the end; the cluster no longer remembers it
            example("forgotten", task_id)
        elif state in GONE_STATES:
            counts["lost"] += 1
            example("lost", task_id)
        else:       # live, dead-lettered (or a rejecting task done), or the cluster did not answer
            counts["stuck"] += 1
            counts["dead"] += state == "dead"
            example(f"stuck_{state}", task_id)
    elif tr.finishes:
        counts["rejected_dead" if tr.reject else "done"] += 1
    else:
        counts["lost"] += 1
        example("lost", task_id)


def _judge_duplicate(tr: Trace, task_id: str, counts: Counter[str], spans: list[FaultSpan], example: Any,
                     report: DuplicateReport) -> None:
    counts["dup"] += 1
    finished = {(a, pid) for _, a, pid, _ in tr.finishes}
    starts = sorted(tr.starts)
    if len(tr.finishes) > 1:
        counts["dup_completed"] += 1
        example("completed_twice", task_id)
    if any((a, pid) not in finished for _, a, pid, _ in starts[:-1]):
        counts["dup_after_crash"] += 1
    elif (starts[-1][1], starts[-1][2]) not in finished:
        counts["dup_aborted"] += 1      # a later copy was cancelled mid-run: another one finished
    explanations = explain(runs_of(tr.starts, tr.finishes), spans)
    if report.add(explanations):
        counts["dup_unexplained"] += 1
        example("duplicate_unexplained", task_id)
    for e in explanations:
        if e.cls != "unexplained":
            example(f"duplicate_{e.cls}", task_id)
