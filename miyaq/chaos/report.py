"""What a chaos run prints: a live progress line while it runs and the
report table at the end (docs/chaos.md, "Reading the report").

Progress goes to a terminal as one line rewritten in place every second;
to a file or pipe as a plain line every ``PLAIN_EVERY`` seconds. The
report is built from :meth:`.checker.Verdict.summary` only, so
``--check`` prints the same table later.
"""
from __future__ import annotations

import time
from typing import IO, Any

PLAIN_EVERY = 5.0


class Progress:
    """One status line; :meth:`update` is cheap and rate-limits itself."""

    def __init__(self, out: IO[str], total: float) -> None:
        self.out = out
        self.total = total
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, phase: str, counters: dict[str, int], faults: list[str]) -> None:
        now = time.monotonic()
        if now - self._last < (1.0 if self.tty else PLAIN_EVERY):
            return
        self._last = now
        elapsed = now - self.start
        text = (f"[{phase} {elapsed:4.0f}s/{self.total:.0f}s] submitted {counters.get('submitted', 0)}  "
                f"acked {counters.get('acked', 0)}  failed {counters.get('failed', 0)}  "
                f"finished {counters.get('finished', 0)}  in flight {counters.get('in_flight', 0)}  "
                f"faults {counters.get('faults', 0)}")
        if faults:
            text += "  now: " + ", ".join(faults)
        if self.tty:
            self.out.write("\r\033[K" + text[:200])
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _pct(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    return f"{value:7.3f}" if isinstance(value, (int, float)) else "      -"


def render(summary: dict[str, Any], history_path: str | None = None, picture: str | None = None) -> str:
    """The report table as text."""
    run = summary.get("run", {})
    lines = []
    # The workers' pool: in the run record since 2026-12-07 (gevent before).
    pool = f", {run['workers']} x {run['concurrency']} {run['pool']}" if "pool" in run and "workers" in run else ""
    # Task and result sizes (--payload, --result): in the run record since 2026-12-07.
    sizes = "".join(f", {name}s {run[name]}" for name in ("payload", "result") if run.get(name) not in (None, "0"))
    pool += " (busy tasks)" if run.get("busy") else ""       # --busy: in the run record since 2026-12-07
    head = (f"miyaq chaos: {run.get('nodes', '?')} nodes, N={run.get('replicas', '?')}{pool}, "
            f"{run.get('rate', '?')}/s{sizes} for {run.get('duration', '?')}s, faults: {run.get('faults') or 'none'}")
    lines += [head, "=" * len(head)]
    f = summary["failed_submits"]
    d = summary["duplicates"]
    rows = [
        ("submitted", summary["submitted"], ""),
        ("accepted", summary["accepted"], "the submit's ack came back"),
        ("done", summary["done"], "finished on the cluster"),
        ("forgotten", summary["forgotten"], "finished, but no node remembers it now (tombstone gone)"),
        ("LOST", summary["lost"], "accepted, then unknown to every node (must be 0)"),
        ("stuck", summary["stuck"], f"accepted, still held after the drain (dead-lettered: {summary['dead']})"),
        ("never ran", summary["never_ran"], "accepted, no start record"),
        *([("rejected", summary["rejected"]["accepted"],
            f"accepted, rejecting themselves; dead-lettered {summary['rejected']['dead']}, "
            f"ran again after rejecting {summary['rejected']['ran_again']}")]
          if summary.get("rejected", {}).get("accepted") else []),
        ("failed submits", f["total"], ", ".join(f"{k} {v}" for k, v in sorted(f["by_code"].items()))),
        ("  ...ran anyway", f["ran"], f"done {f['done']}, still held {f['held']}"),
        ("ran more than once", d["ran_more_than_once"],
         (f"{100 * d['rate']:.3f}% of accepted; completed twice {d['completed_twice']}, "
          f"re-run after a crash {d['after_crash']}, cancelled mid-run {d['aborted']}, "
          f"unexplained {d['unexplained']}")),
    ]
    for cls, n in d.get("classes", {}).items():
        rows.append((f"  {cls}", n, "extra starts; " + (d.get("rules", {}).get(cls) or
                                                        "NO fault or rule allows these: a bug")))
    rows.append(("executions", summary["executions"]["starts"], f"finished {summary['executions']['finishes']}"))
    res = summary.get("results") or {}
    if res.get("asked"):
        failed = "".join(f", {k} {v}" for k, v in sorted(res["failed"].items()))
        rows.append(("results read", res["read"], f"of {res['asked']} returning bytes; right {res['right']}{failed}, "
                                                  f"not read {res['not_read']}"))
        if res["wrong"]:
            rows.append(("WRONG RESULTS", res["wrong"], "read back of another size than the task returned (must be 0)"))
    if summary.get("done_unverified"):
        rows.append(("DONE, NEVER RAN", summary["done_unverified"],
                     "the cluster says done (or dead after a rejection), no worker wrote a finish record (must be 0)"))
    if summary.get("malformed_lines"):
        rows.append(("MALFORMED LINES", summary["malformed_lines"], "lines of the history that are no valid record"))
    if summary.get("started_while_fenced"):
        rows.append(("STARTED WHILE FENCED", summary["started_while_fenced"],
                     "starts leased by a node cut off from ZooKeeper after it should have stopped (must be 0)"))
    if summary.get("ring_changed_without_quorum"):
        rows.append(("RING CHANGED", summary["ring_changed_without_quorum"],
                     "ring changes accepted while ZooKeeper had no quorum (must be 0)"))
    lines.append("Tasks")
    lines += [f"  {name:<20}{value:>9}   {note}".rstrip() for name, value, note in rows]
    if not summary.get("final_checked"):
        lines.append("  (no final status check in this history: 'done' means a finish record was seen)")
    lines += ["", "Latency, seconds (phase = what was going on at submit time)",
              (f"  {'phase':<10}{'n':>8}  {'ack p50':>7} {'p90':>7} {'p99':>7} {'max':>7}   "
               f"{'done p50':>8} {'p90':>7} {'p99':>7} {'max':>7}")]
    for phase, lat in summary.get("latency", {}).items():
        a, dn = lat["ack"], lat["done"]
        lines.append(f"  {phase:<10}{a.get('n', 0):>8}  {_pct(a, 'p50')} {_pct(a, 'p90')} {_pct(a, 'p99')} "
                     f"{_pct(a, 'max')}   {' ' + _pct(dn, 'p50')} {_pct(dn, 'p90')} {_pct(dn, 'p99')} "
                     f"{_pct(dn, 'max')}")
    faults = summary.get("faults", [])
    lines += ["", (f"Faults ({len(faults)} injected, {summary.get('faults_skipped', 0)} skipped for want of a "
                   "safe target)")]
    if faults:
        lines.append(f"  {'#':>3} {'at s':>7}  {'kind':<10}{'target':<11}{'healed s':>9} {'whole +s':>9} "
                     f"{'clients s':>10} {'unhealthy':>10}  notes")
    for row in faults:
        notes = []
        if row.get("unrecovered"):
            notes.append("NOT RECOVERED in time")
        if "interrupted_tasks" in row:
            rerun = row.get("rerun_s")
            notes.append(f"{row['interrupted_tasks']} task(s) interrupted" +
                         (f", all re-run within {rerun}s" if rerun is not None else ""))
        notes += row.get("errors", [])
        if row.get("ring_change"):
            notes.append(f"ring change {row['ring_change']}")
        heal = row.get("heal_s")
        rec = row.get("recover_s")
        lines.append(f"  {row['fault']:>3} {row['begin_s']:>7.1f}  {row['kind']:<10}{row['target']:<11}"
                     f"{heal if heal is not None else '-':>9} {rec if rec is not None else '-':>9} "
                     f"{row['client_recovery_s']:>10} {row['unhealthy_s']:>10}  {'; '.join(notes)}")
    lines.append("")
    if summary["lost"]:
        lines.append(f"VERDICT: FAILED, {summary['lost']} accepted task(s) LOST, e.g. "
                     f"{', '.join(summary['examples'].get('lost', [])[:3])}")
    elif summary.get("forgotten_unexplained"):
        lines.append(f"VERDICT: FAILED, {summary['forgotten_unexplained']} finished task(s) forgotten by the "
                     f"whole cluster with no data dir wiped since they finished, e.g. "
                     f"{', '.join(summary['examples'].get('forgotten', [])[:3])}")
    elif summary["stuck"]:
        lines.append(f"VERDICT: FAILED, nothing lost but {summary['stuck']} accepted task(s) not done after the "
                     "drain")
    elif summary.get("done_unverified"):
        lines.append(f"VERDICT: FAILED, {summary['done_unverified']} task(s) reported done (or dead-lettered after "
                     "rejecting) with no finish record from any worker, e.g. "
                     f"{', '.join(summary['examples'].get('done_without_finish_record', [])[:3])}")
    elif summary.get("started_while_fenced"):
        lines.append(f"VERDICT: FAILED, {summary['started_while_fenced']} task start(s) by a node that had lost "
                     "ZooKeeper and should have fenced itself")
    elif summary.get("ring_changed_without_quorum"):
        lines.append("VERDICT: FAILED, a ring change was accepted while the ZooKeeper ensemble had no quorum")
    elif d["unexplained"]:
        ids = ", ".join(summary["examples"].get("duplicate_unexplained", [])[:3])
        lines.append(f"VERDICT: FAILED, nothing lost but {d['unexplained']} task(s) started more than once with "
                     f"no fault to explain it, e.g. {ids}")
    elif run.get("rolling") and summary["exit_code"] == 4:
        lines.append(f"VERDICT: FAILED, a rolling restart must cost nothing: {d['ran_more_than_once']} task(s) "
                     f"started more than once, {f['total']} submit(s) failed"
                     + ("; a step did not complete (see the faults)" if summary.get("rolling_broken") else ""))
    elif summary.get("malformed_lines"):
        lines.append(f"VERDICT: NOT OK, the history is damaged: {summary['malformed_lines']} line(s) are no valid "
                     f"record ({'; '.join(summary.get('malformed_examples', [])[:3])}); nothing else failed, but a "
                     "damaged line may have hidden a loss")
    else:
        lines.append("VERDICT: OK, every accepted task finished")
    if summary.get("malformed_lines") and summary.get("exit_code") != 5:
        lines.append(f"NOTE: the history is damaged too: {summary['malformed_lines']} line(s) are no valid record "
                     f"({'; '.join(summary.get('malformed_examples', [])[:3])})")
    if summary.get("torn_last_line"):
        lines.append("NOTE: the history's last line is torn (a kill mid-write) and was skipped")
    if summary.get("forgotten") and not summary.get("forgotten_unexplained"):
        lines.append(f"NOTE: {summary['forgotten']} finished task(s) are unknown to the cluster now (their "
                     "tombstones went with wiped data dirs): no status, no result, and a resubmit with the same "
                     "id would run again")
    if history_path:
        lines.append(f"history: {history_path}")
    if picture:
        lines.append(f"timeline: {picture}")
    return "\n".join(lines)
