"""The checker: reads a chaos history and says what happened to every task.

Pure: a function of the history records alone (the runner writes the
cluster's final answer for each task into the history as ``final``
records), so ``miyaq chaos --check HISTORY`` gives the same verdict later.

Verdicts, per submitted task id:

- **accepted**: an ``ack`` came back -- or the history has an ``ack`` or a
  ``final`` record for the id but no ``submit`` (its submit line was
  damaged: judged as accepted, the stricter reading). Every accepted task must end
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
  not a failure of the run -- when a data dir was wiped (``wipe``) *after*
  the task's first finish record (before 2026-12-05: any wipe in the run).
  Otherwise nothing may forget a finished task within a run (tombstones
  are kept an hour and 200,000 deep), so the task is
  ``forgotten_unexplained`` and fails the run like a lost one (a dead-letter
  record lost in a handoff was found so). Without ``final`` records (a run cut
  short) an accepted task with no ``finish`` record counts as lost.
- **done without a finish record** (``done_unverified``): any task the
  cluster reports ``done`` (or ``dead`` when it rejects itself) with no
  ``finish`` record from any worker. The chaos handler flushes its finish
  record before it returns or raises Reject (:mod:`.tasks`), so the outcome
  cannot reach a node before the record exists: the cluster claims a run
  that no worker made. Fails the run (exit status 4; before 2026-12-05 it
  was taken as done).
- **failed submit**: a ``fail`` came back (or nothing did). The client was
  told it failed, but the task may have been stored anyway: the checker
  reports how many of them ran (a ``start``) and how many ended done.
- **ran more than once**: two or more runs -- ``start`` records, or
  ``finish`` records of different runs (a finish whose start record is
  missing is a run of its own; before 2026-12-05 only starts counted).
  ``completed_twice``:
  two or more ``finish`` records (the handler ran to the end twice);
  ``after_crash``: an earlier run never finished (its worker or node died
  under it), the re-run the design expects; ``aborted``: the last run was
  cancelled mid-way (no finish record) because another copy finished
  first. Each start after the first is put down to a fault and a rule
  by :mod:`.explain` (``classes``); a task with any start it cannot
  explain counts as ``unexplained`` and fails the run (exit status 4).
- **results read back** (``--result``, :mod:`.reads`): a result read of
  another size than its task returned is **wrong** and fails the run (exit
  status 4); reads that failed are reported by their error code.
- **malformed**: lines of the history that are not records, or records
  failing :mod:`.schema` (wrong types, a time that is not seconds of this
  run), and lines of the workers' files the end-of-run merge could not
  read (its ``merge`` record) -- except a torn last line of the history (a
  kill mid-write). Any keeps the verdict from OK (exit status 5 when
  nothing worse was found): a damaged line may have been the record that
  showed a loss. A file with no ``run`` record, no submit, or more
  skipped lines than records is refused (:class:`.history.NotAHistory`).

Latency, throughput and per-fault recovery come from :mod:`.metrics`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .explain import DuplicateReport, Exec, Run, explain, fence_windows, fencing_violations, runs_of
from .history import NotAHistory, ReadStats, worker_of
from .metrics import FaultSpan, Metrics
from .reads import Reads

LIVE_STATES = ("scheduled", "ready", "running", "retrying")
GONE_STATES = ("unknown", "cancelled", "expired")
EXAMPLES = 10
RUN_HORIZON = 2 * 86400.0
"""A record more than this many seconds from the ``run`` record's time is
malformed (a clock gone wrong, or not seconds): no run lasts two days."""
COUNT_KEYS = ("submitted", "accepted", "done", "forgotten", "forgotten_unexplained", "lost", "stuck", "dead",
              "never_ran", "failed", "rejected", "rejected_dead", "rejected_again",
              "failed_ran", "failed_done", "failed_held", "starts", "finishes", "dup", "dup_completed",
              "dup_after_crash", "dup_aborted", "dup_unexplained", "fencing", "done_unverified", "malformed")


class Trace:
    """What the history says about one task id."""

    __slots__ = ("ack", "fail", "final", "final_t", "finishes", "reject", "starts", "submit")

    def __init__(self) -> None:
        self.submit: float | None = None
        self.reject = False         # submitted to reject itself: must end dead
        self.ack: float | None = None
        self.fail: str | None = None
        self.starts: list[Exec] = []      # (t, attempt, pid, node id, worker)
        self.finishes: list[Exec] = []
        self.final: str | None = None
        self.final_t: float | None = None


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
    malformed_examples: list[str] = field(default_factory=list)
    """Where the first skipped lines are and why (``line N: ...``)."""
    torn_last_line: bool = False
    reads: Reads = field(default_factory=Reads)

    @property
    def lost(self) -> int:
        return self.counts["lost"]

    @property
    def ok(self) -> bool:
        return self.exit_code() == 0

    def exit_code(self) -> int:
        """0 every accepted task done and every duplicate explained; 1 some
        lost; 3 none lost but some stuck; 4 none lost or stuck but some task
        started twice with no fault to explain it, a task reported done (or
        dead-lettered after rejecting itself) with no finish record, a node
        cut off from ZooKeeper started tasks after it should have fenced
        itself, a ring change was accepted while ZooKeeper had no quorum,
        or a result was read back of another size than its task returned;
        5 none of these, but the history is damaged (a line other than a
        torn last one skipped): what it lost may have hidden any of them.
        (2 is the command's: no history to judge.)"""
        c = self.counts
        if c["lost"] or c["forgotten_unexplained"]:
            return 1
        if c["stuck"]:
            return 3
        if c["dup_unexplained"] or c["fencing"] or c["done_unverified"] or self.ring_changed_without_quorum() \
                or self.reads.wrong:
            return 4
        if self.run.get("rolling") and (c["dup"] or c["failed"] or self.rolling_broken()):
            return 4        # a planned restart is not a failure: no duplicate, no failed submit
        if c["malformed"]:
            return 5
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
            "done_unverified": c["done_unverified"],
            "results": self.reads.summary(),
            "malformed_lines": c["malformed"], "malformed_examples": self.malformed_examples,
            "torn_last_line": self.torn_last_line,
            "examples": self.examples,
            **self.metrics.summary(),
            "node_stats": self.stats,
        }


def check(records: Iterable[dict[str, Any]], bucket: float = 1.0, read: ReadStats | None = None) -> Verdict:
    """Read every record once and judge (see the module docstring).

    ``records`` must be records that passed :func:`.schema.problem` (as
    :func:`.history.read_history` yields them); ``read`` is that reader's
    count of skipped lines, read once ``records`` is exhausted. Raises
    :class:`NotAHistory` when there is nothing to judge: no ``run`` record,
    no ``submit`` (nor ``ack``) record, or more skipped lines than records."""
    traces: dict[str, Trace] = {}
    run: dict[str, Any] = {}
    faults: dict[int, FaultSpan] = {}
    phases: dict[str, float] = {}
    stats: dict[str, Any] = {}
    final_checked = False
    skipped = 0
    implausible = 0
    merge_bad = 0
    node_of: dict[str, str] = {}
    reads = Reads()

    def trace(task_id: str) -> Trace:
        tr = traces.get(task_id)
        if tr is None:
            tr = traces[task_id] = Trace()
        return tr

    for r in records:
        ev, t = r["ev"], float(r["t"])
        if run and abs(t - run["t"]) > RUN_HORIZON:
            implausible += 1        # a far-off time would stretch every per-second series over it
            continue
        task_id = str(r.get("id"))
        if ev == "submit":
            reads.feed(r)
            trace(task_id).submit = t
            trace(task_id).reject = bool(r.get("reject"))
        elif ev == "ack":
            trace(task_id).ack = t
        elif ev == "fail":
            trace(task_id).fail = str(r.get("code", "error"))
        elif ev == "start" or ev == "finish":
            runs = trace(task_id).starts if ev == "start" else trace(task_id).finishes
            runs.append((t, r["attempt"], r["pid"], node_of.get(str(r.get("node"))), worker_of(r)))
        elif ev == "final":
            trace(task_id).final = str(r.get("state"))
            trace(task_id).final_t = t
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
        elif ev == "merge":
            merge_bad += r["bad_lines"]
        elif ev == "read":
            reads.feed(r)
    read = read if read is not None else ReadStats()
    _refuse_if_no_history(run, traces, read)
    spans = sorted(faults.values(), key=lambda f: f.begin)
    fenced = fence_windows(spans)
    metrics = Metrics(run["t"], bucket, phases, spans)
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    dups = DuplicateReport()

    def example(kind: str, task_id: str) -> None:
        listed = examples.setdefault(kind, [])
        if len(listed) < EXAMPLES:
            listed.append(task_id)

    wipes = sorted(s.begin for s in spans if s.kind == "wipe")
    for task_id, tr in traces.items():
        if tr.submit is None and tr.ack is None and tr.final is None:
            continue          # starts without a submit, ack or final (another producer's task?)
        counts["submitted"] += 1
        counts["starts"] += len(tr.starts)
        counts["finishes"] += len(tr.finishes)
        if tr.submit is not None:
            metrics.add_task(tr)
        elif tr.ack is None:
            tr.ack = tr.final_t     # its submit and ack lines are damaged: judged as accepted
        if fenced:
            n = fencing_violations(tr.starts, fenced)
            if n:
                counts["fencing"] += n
                example("started_while_fenced", task_id)
        task_runs = runs_of(tr.starts, tr.finishes)
        if len(task_runs) > 1:
            _judge_duplicate(tr, task_runs, task_id, counts, spans, example, dups)
        if final_checked and _done_unverified(tr):
            counts["done_unverified"] += 1      # the cluster says it ran; no worker wrote that it did
            example("done_without_finish_record", task_id)
        if tr.ack is not None:
            counts["accepted"] += 1
            _judge_accepted(tr, task_id, counts, final_checked, example, wipes)
        else:
            counts["failed"] += 1
            codes[tr.fail or "unanswered"] += 1
            if tr.starts:
                counts["failed_ran"] += 1
                example("failed_but_ran", task_id)
            if (tr.final == "done" and tr.finishes) or (not final_checked and tr.finishes):
                counts["failed_done"] += 1
            elif tr.final in LIVE_STATES:
                counts["failed_held"] += 1
    counts["faults_skipped"] = skipped
    counts["malformed"] = read.damaged + implausible + merge_bad
    for key in COUNT_KEYS:
        counts.setdefault(key, 0)
    return Verdict(run, dict(counts), dict(codes), examples, metrics, final_checked, stats, dups,
                   read.examples, read.torn_last, reads)


def _refuse_if_no_history(run: dict[str, Any], traces: dict[str, Trace], read: ReadStats) -> None:
    if not run:
        damaged = f" ({'; '.join(read.examples[:3])})" if read.examples else ""
        raise NotAHistory(f"no valid 'run' record: not a chaos history (give the history.jsonl of a run){damaged}")
    if not any(tr.submit is not None or tr.ack is not None for tr in traces.values()):
        raise NotAHistory("no task was submitted in this history: nothing to judge")
    if read.bad > read.records:
        raise NotAHistory(f"{read.bad} of {read.bad + read.records} lines are not history records "
                          f"({'; '.join(read.examples[:3])})")


def _done_unverified(tr: Trace) -> bool:
    """The cluster's final answer says the task ran to its end -- ``done``,
    or ``dead`` for a task that rejects itself -- but no worker wrote a
    finish record, which the chaos handler flushes before the outcome is
    reported (:mod:`.tasks`)."""
    ended = tr.final == "done" or (tr.final == "dead" and tr.reject)
    return ended and not tr.finishes


def _judge_accepted(tr: Trace, task_id: str, counts: Counter[str], final_checked: bool, example: Any,
                    wipes: list[float]) -> None:
    if not tr.starts:
        counts["never_ran"] += 1
    if tr.reject:
        counts["rejected"] += 1
        if tr.finishes and any(t > min(f[0] for f in tr.finishes) for t, *_ in tr.starts):
            counts["rejected_again"] += 1        # the handler rejected it, and it ran again
            example("rejected_ran_again", task_id)
    if final_checked:
        state = tr.final or "unknown"
        if _done_unverified(tr):
            pass                        # counted in done_unverified, neither done nor dead
        elif tr.reject and state == "dead":
            counts["rejected_dead"] += 1
        elif state == "done" and not tr.reject:
            counts["done"] += 1
        elif state in GONE_STATES and tr.finishes:
            counts["forgotten"] += 1    # it ran to the end; the cluster no longer remembers it
            example("forgotten", task_id)
            if not any(w > min(f[0] for f in tr.finishes) for w in wipes):
                counts["forgotten_unexplained"] += 1    # no data dir wiped since it finished
                example("forgotten_unexplained", task_id)
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


def _judge_duplicate(tr: Trace, runs: list[Run], task_id: str, counts: Counter[str], spans: list[FaultSpan],
                     example: Any, report: DuplicateReport) -> None:
    """``runs``: the task's runs (:func:`.explain.runs_of`), two or more --
    two starts, or two finishes even if a start record is missing."""
    counts["dup"] += 1
    if len(tr.finishes) > 1:
        counts["dup_completed"] += 1
        example("completed_twice", task_id)
    if any(r.end is None for r in runs[:-1]):
        counts["dup_after_crash"] += 1
    elif runs[-1].end is None:
        counts["dup_aborted"] += 1      # a later copy was cancelled mid-run: another one finished
    explanations = explain(runs, spans)
    if report.add(explanations):
        counts["dup_unexplained"] += 1
        example("duplicate_unexplained", task_id)
    for e in explanations:
        if e.cls != "unexplained":
            example(f"duplicate_{e.cls}", task_id)
