"""Why a task started more than once: every extra start is put down to one
fault and to the documented rule that allows it, or it is *unexplained*.

Pure, like the checker that calls it: a function of the history alone.
For each start after a task's first one, the *earlier run* is the latest
start before it; the rules are tried in order and the first that matches
explains it:

1. ``worker-killed``: the earlier run's worker process was killed
   (``worker`` fault) while that run was in flight. Matched by the
   worker's name, which a run's records carry whatever process ran the
   handler (a processes pool's child writes a pid of its own); by pid in a
   history from before 2026-12-07, whose records name no worker.
   docs/semantics.md, "At-least-once execution", case 4.
2. ``holder-<kind>``: the node that leased the earlier run was hit by a
   fault of ``<kind>`` (``kill``, ``leader``, ``wipe``, ``pause``,
   ``partition``, ``isolate``, ``split``, ``oneway``, ``clock``, ...)
   while that run was in flight. docs/cluster.md, "Failure modes": the
   node that dispatched a task died, froze or was cut off before the
   other holders heard the task's start or finish, so a standby copy ran
   (or the node's log brought the running task back, docs/semantics.md
   case 3). A finish counts as unheard until ``REPORT_GRACE`` after it, or
   while a network fault on any node held it back (:func:`heard_by`).
3. ``rerun-<kind>``: the earlier run was in flight at the fault or ended
   at most ``MISSED_FINISH_HORIZON`` before it began, and
   the re-run was leased by a node that could not hear
   the other holders, or the node that ran the task earlier could not
   answer it (``partition``, ``deaf``, ``mute``, ``lossy``, ``delay``, ``slow``,
   ``split``, ``zkcut``, ``zkminority``; and ``pause`` of the node that ran
   it earlier, never of the re-runner), at that moment or within
   :func:`heal_grace` of the heal -- ``HEAL_GRACE``, plus the fault's
   length for one that dropped every packet between the nodes: a late
   answer is silence, and a connection stalled through the fault resumes
   only at its next retransmission.
   docs/cluster.md, "Before a standby copy runs": only silence lets a
   standby copy run, and a node cut off from the others hears silence (or
   is not heard).
4. ``lease-expired``: the earlier run lasted longer than the task's lease
   (docs/semantics.md case 2).

*In flight* at a fault means: started before the node could know of the
fault, and not finished (no finish record) or finished less than
``REPORT_GRACE`` seconds before the fault began (its DONE may still have
been on its way to the node, or in the node's log and not yet
announced). A killed, paused, wiped or isolated node knows at once (it
starts nothing more); a node that lost ZooKeeper (``split``, ``zkcut``,
``zkminority``)
knows within ``FENCE_DEADLINE`` and must then stop starting tasks; a
node cut off from its peers but not from ZooKeeper (``partition``,
``deaf``, ``mute``, ``lossy``, ``delay``, ``slow``) stays in the ring and cannot know: the
other holders hear silence and run their copies (docs/cluster.md,
"Before a standby copy runs"), so every run it starts until the heal
counts. The re-run must also come within the fault's window: at or after
its begin (no earlier: the begin is stamped before the fault acts) to
``EXPLAIN_GRACE`` seconds after the cluster was whole again.

:func:`fencing_violations` is the check of epoch fencing: a start leased
by a node of a ``split`` minority, a ``zkcut`` node or a ``zkminority``
node later than
``FENCE_DEADLINE`` after the fault began and before its heal. While all of
ZooKeeper is away (``zk``, ``zkquorum``) no node fences, by design (a
cluster that lost ZooKeeper as a whole keeps serving on its ring), so for
a node cut off while such an outage is under way, or begins within its
deadline, the deadline counts from the ensemble's return
(:func:`fence_clock`).

Anything else — a second start with no fault on the earlier run's worker
or node, one whose earlier run had finished well before the fault (more
than ``REPORT_GRACE`` for the first two rules, ``MISSED_FINISH_HORIZON``
for the ``rerun-*`` ones), or one that started before the fault began —
is ``unexplained``: DESIGN.md says duplicates happen only after a real
failure, so the run fails.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .metrics import EXPLAIN_GRACE, FaultSpan

FENCE_DEADLINE = 6.0
"""Seconds after losing ZooKeeper by which a node must have stopped starting
tasks: kazoo suspends the connection after 2/3 of the session (2 s in a
chaos run), the node fences 1.5 s later (``FENCE_AFTER``), plus margin."""
FENCED_KINDS = ("split", "zkcut", "zkminority")
ZK_DOWN_KINDS = ("zk", "zkquorum")
"""Faults that take ZooKeeper from every node: no node fences while one lasts."""
BLIND_KINDS = ("partition", "deaf", "mute", "lossy", "delay", "slow")
SILENT_KINDS = ("pause",)
"""Faults that silence a node without cutting it off: they explain a re-run
only when they silenced the node that ran the task earlier (a paused node
runs nothing itself; after it resumes it must catch up before it does)."""
HEAL_GRACE = 3.0
"""Answers and streams need a moment to flow again after a network fault
heals: a TCP connection resumes at its next retransmission (the first
timeout: 0.2 s, more on a loaded machine), a QUERY answered too late for
its 1 s timeout is silence, and an announcement waits for its stream's
next flush. A fault that dropped every packet for a while adds its length
(:func:`heal_grace`)."""
STALLING_KINDS = ("partition", "deaf", "mute", "split")
"""Faults that drop every packet between the node and the other nodes for
their whole length (``lossy`` drops one in ten: a connection's timeout
falls back at each packet that gets through)."""
RTO_MAX = 120.0
"""Linux's largest TCP retransmission timeout (``TCP_RTO_MAX``, seconds)."""
REPORT_GRACE = 2.0
"""A run that finished this little before its node's fault, or started this
little after it (the DISPATCH was on its way), counts as in flight: a node
announces a finish on its next stream flush (every 50 ms), but a loaded
2-core machine delays that, and the workers' records, by up to a second or
two."""
MISSED_FINISH_HORIZON = EXPLAIN_GRACE
"""The ``rerun-*`` rules: how long before a fault the earlier run may have
finished. A holder that missed the finish (down or cut off when it was
announced, e.g. restarted after a kill) runs its standby copy only once the
copy comes due and its QUERY meets silence: within the lease and its
offsets, which EXPLAIN_GRACE bounds. A run that finished earlier than that
was known to every holder long before the fault (before 2026-12-05 these
rules did not look at when the earlier run ended: a re-run minutes after a
finish, or after a dead-letter, was put down to any partition or pause)."""
LEASE = 30.0
"""The chaos task's lease (``miyaq.chaos.tasks.work``)."""

RULES = {
    "worker-killed": "docs/semantics.md, At-least-once execution, case 4: a worker killed mid-task",
    "holder": "docs/cluster.md, Failure modes: the node that leased the run failed before the other holders "
              "heard of its start or finish",
    "rerun": "docs/cluster.md, Before a standby copy runs: only silence lets a standby copy run, and a node "
             "cut off from the other holders hears silence",
    "lease-expired": "docs/semantics.md, At-least-once execution, case 2: a lease that ran out",
}
WORKER_KINDS = ("worker",)
NOT_NODE_KINDS = ("worker", "zk", "zkserver", "zkleader", "zkquorum", "duplicate")
"""Kinds that take no node away: they explain no holder's re-run (TCP hides duplicated packets)."""


Exec = tuple[float, int, int, str | None, str | int]
"""A ``start`` or ``finish`` record: (t, attempt, pid, node id that leased
it, worker -- :func:`.history.worker_of`: its name, or its pid)."""


@dataclass
class Run:
    """One start record of a task, with its finish (if any)."""

    t: float
    attempt: int
    pid: int               # the process that ran the handler (a pool's child, or the worker itself)
    node: str | None       # node id that leased it, if known
    end: float | None = None
    worker: str | int = 0  # the worker it ran in: its name, or (old histories) its pid


@dataclass
class Explanation:
    cls: str                # "worker-killed", "holder-kill", ..., or "unexplained"
    fault: int | None       # the fault it is put down to
    rule: str


@dataclass
class DuplicateReport:
    """Counts over every extra start of every task that ran more than once."""

    classes: Counter[str] = field(default_factory=Counter)
    by_fault: Counter[int] = field(default_factory=Counter)
    """Explained extra starts per fault id."""
    unexplained_after: Counter[int] = field(default_factory=Counter)
    """Unexplained extra starts per the last fault begun before them (a hint, not a cause)."""

    def add(self, found: list[Explanation]) -> bool:
        """Fold one task's explanations in; True if any was unexplained."""
        bad = False
        for e in found:
            self.classes[e.cls] += 1
            if e.cls == "unexplained":
                bad = True
                if e.fault is not None:
                    self.unexplained_after[e.fault] += 1
            elif e.fault is not None:
                self.by_fault[e.fault] += 1
        return bad

    def summary(self) -> dict[str, Any]:
        return {"classes": dict(self.classes.most_common()), "rules": self.rules(),
                "by_fault": {str(k): v for k, v in sorted(self.by_fault.items())},
                "unexplained_after": {str(k): v for k, v in sorted(self.unexplained_after.items())}}

    def rules(self) -> dict[str, str]:
        out = {}
        for cls in self.classes:
            key = cls.split("-")[0] if cls.startswith(("holder-", "rerun-")) else cls
            if key in RULES:
                out[cls] = RULES[key]
        return out


def runs_of(starts: list[Exec], finishes: list[Exec]) -> list[Run]:
    """Start records joined with their finish (same attempt and pid), by start
    time. A finish with no start record of its run is a run of its own,
    started and finished at the finish's time: the handler writes its start
    record first, so the start line was lost, and the run still happened."""
    ends: dict[tuple[int, int], float] = {}
    for t, attempt, pid, *_ in finishes:
        ends.setdefault((attempt, pid), t)
    started = {(attempt, pid) for _, attempt, pid, *_ in starts}
    runs = [Run(t, attempt, pid, node, ends.get((attempt, pid)), worker) for t, attempt, pid, node, worker in starts]
    orphans: set[tuple[int, int]] = set()
    for t, attempt, pid, node, worker in sorted(finishes, key=lambda f: f[:3]):
        if (attempt, pid) not in started and (attempt, pid) not in orphans:
            orphans.add((attempt, pid))
            runs.append(Run(t, attempt, pid, node, t, worker))
    return sorted(runs, key=lambda r: (r.t, r.attempt, r.pid))


def fence_clock(span: FaultSpan, spans: list[FaultSpan]) -> float:
    """When a node hit by ``span`` (of a FENCED_KINDS kind) starts counting
    toward FENCE_DEADLINE: the fault's begin, or the heal of a ZooKeeper-wide
    outage under way then or beginning before the deadline (no node fences
    while every node is without ZooKeeper)."""
    start = span.begin
    for outage in sorted((s for s in spans if s.kind in ZK_DOWN_KINDS), key=lambda s: s.begin):
        heal = outage.heal if outage.heal is not None else math.inf
        if outage.begin <= start + FENCE_DEADLINE and heal > start:
            start = heal
    return start


def heal_grace(span: FaultSpan) -> float:
    """How long after ``span`` healed the nodes it cut off may still hear
    silence from the others, or not be heard: ``HEAL_GRACE``, and for a
    fault of ``STALLING_KINDS`` as much again as the fault lasted (at most
    ``RTO_MAX``). A TCP connection whose packets were all dropped resends
    at times spaced by a timeout that doubles at each try, so the try
    pending at the heal can be as far off as the connection has been
    stalled: after a 5 s ``deaf`` fault of n2 (chaos seed 87), n0 and n1
    heard nothing of n2's stream until 6.1 s after the heal, n3 2.4 s and
    n4 3.0 s after it, and meanwhile n2's standby copies heard silence from
    n0 and n1 and took over copies they held ready behind a backlog; n0 ran
    one of them 3.4 s after the heal, 75 ms after n2 (before 2026-12-07
    every such run past ``HEAL_GRACE`` was "unexplained")."""
    if span.kind in STALLING_KINDS and span.heal is not None:
        return HEAL_GRACE + min(max(0.0, span.heal - span.begin), RTO_MAX)
    return HEAL_GRACE


def in_flight(run: Run, span: FaultSpan, spans: list[FaultSpan]) -> bool:
    if span.kind in BLIND_KINDS:
        knows = span.heal if span.heal is not None else math.inf
    elif span.kind in FENCED_KINDS:
        knows = fence_clock(span, spans) + FENCE_DEADLINE
    else:
        knows = span.begin
    # A worker writes its start record a moment after the node leased the run.
    return run.t <= knows + REPORT_GRACE and (run.end is None or run.end + REPORT_GRACE >= span.begin)


def fenced_nodes(span: FaultSpan) -> list[str]:
    return span.target.split("+") if span.kind in FENCED_KINDS else []


FenceWindow = tuple[list[str], float, float]
"""Nodes that must have fenced themselves, from when, until when."""


def fence_windows(spans: list[FaultSpan]) -> list[FenceWindow]:
    """The windows in which the nodes of each ZooKeeper-cutting fault must
    start nothing (``spans``: every fault of the run; computed once a run)."""
    return [(fenced_nodes(span), fence_clock(span, spans) + FENCE_DEADLINE,
             span.heal if span.heal is not None else math.inf)
            for span in spans if fenced_nodes(span)]


def fencing_violations(starts: list[Exec], windows: list[FenceWindow]) -> int:
    """Starts leased by a node that should have fenced itself by then."""
    return sum(1 for nodes, deadline, until in windows
               for t, _, _, node, _ in starts if node in nodes and deadline < t <= until)


def killed_worker(span: FaultSpan, worker: str | int) -> bool:
    """Was ``worker`` (a name, or an old history's pid) the one this
    ``worker`` fault killed? Its record names the worker (``target``) and
    the worker process's pid."""
    return worker == span.target or (isinstance(worker, int) and span.pid is not None and worker == int(span.pid))


def explain(runs: list[Run], spans: list[FaultSpan]) -> list[Explanation]:
    """One explanation per start after the first (see the module docstring)."""
    out = []
    for k in range(1, len(runs)):
        out.append(_explain_one(runs[k - 1], runs[k], spans))
    return out


def heard_by(run: Run, spans: list[FaultSpan]) -> float:
    """When every holder has surely heard of ``run``'s end: ``REPORT_GRACE``
    after it, or, while a network fault (``BLIND_KINDS``) on any node held
    the announcement back -- a ``slow`` link with a large REPLICATE before
    it in the same stream, a partition -- ``HEAL_GRACE`` after that fault
    healed (inf: a run with no end, or a fault never healed). A kill of the
    run's node before then leaves the others its standby copies, to run
    again (the holder rule).

    Any node, not only the run's and the re-run's: the history does not
    name a task's holders, and a holder that missed the end passes its
    copy on at a ring change (docs/cluster.md, "Handoff"), which the kill
    of the run's node makes. Chaos seed 495032380 (before 2026-12-08 only
    the two runs' nodes counted, and this was "unexplained"): n1's link at
    1 Mbit/s held back n2's finish of three tasks and cost n1 its
    ZooKeeper session; out of the ring, n1 handed its copies, live by its
    record, to n0; n2 was killed 2 s after the heal, and n0's copies heard
    silence from it and ran."""
    if run.end is None:
        return math.inf
    heard = run.end + REPORT_GRACE
    for span in sorted(spans, key=lambda s: s.begin):
        if span.kind in BLIND_KINDS and span.begin <= heard:
            if span.heal is None:
                return math.inf
            if span.heal + HEAL_GRACE > heard and span.heal + HEAL_GRACE > run.end:
                heard = max(heard, span.heal + HEAL_GRACE)
    return heard


def missed_finish(run: Run, span: FaultSpan, spans: list[FaultSpan]) -> bool:
    """Could a holder's standby copy still not know of ``run``'s end when
    ``span`` began? Yes if the run was in flight at the fault, or finished
    at most MISSED_FINISH_HORIZON before it began."""
    return in_flight(run, span, spans) or (run.end is not None and run.end + MISSED_FINISH_HORIZON >= span.begin)


def _explain_one(earlier: Run, again: Run, spans: list[FaultSpan]) -> Explanation:
    # The nemesis stamps a fault's begin before it acts (Nemesis.inject, Rolling._step) and every
    # process reads the one wall clock, so nothing the fault caused starts before its begin: no
    # tolerance (before 2026-12-05 a start up to 1 s before the begin was put down to the fault).
    window = [s for s in spans if s.begin <= again.t <= s.end(math.inf) + EXPLAIN_GRACE]
    for span in window:
        if span.kind in WORKER_KINDS and killed_worker(span, earlier.worker) and in_flight(earlier, span, spans):
            return Explanation("worker-killed", span.fid, RULES["worker-killed"])
    for span in window:
        if span.kind not in NOT_NODE_KINDS and earlier.node is not None \
                and earlier.node in span.target.split("+") \
                and (in_flight(earlier, span, spans)
                     or earlier.t <= span.begin < heard_by(earlier, spans)):
            return Explanation(f"holder-{span.kind}", span.fid, RULES["holder"])
    for span in window:
        cut_off = span.target.split("+")
        if span.kind in BLIND_KINDS + FENCED_KINDS and (again.node in cut_off or earlier.node in cut_off) \
                and (span.heal is None or again.t <= span.heal + heal_grace(span)) \
                and missed_finish(earlier, span, spans):
            return Explanation(f"rerun-{span.kind}", span.fid, RULES["rerun"])
    for span in window:
        if span.kind in SILENT_KINDS and earlier.node in span.target.split("+") \
                and (span.heal is None or again.t <= span.heal + HEAL_GRACE) and missed_finish(earlier, span, spans):
            return Explanation(f"rerun-{span.kind}", span.fid, RULES["rerun"])
    ran_for = (earlier.end if earlier.end is not None else again.t) - earlier.t
    if ran_for >= LEASE:
        return Explanation("lease-expired", None, RULES["lease-expired"])
    before = [s for s in spans if s.begin <= again.t]
    return Explanation("unexplained", max(before, key=lambda s: s.begin).fid if before else None, "")
