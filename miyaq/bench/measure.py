"""One system measured: bring it up, run the phases, read the records.

A *system* is miyaq (a :class:`~miyaq.bench.fleet.Fleet`: one node or a
cluster) or the bare baseline (:class:`~miyaq.bench.bare_fleet.BareFleet`),
always driven by a separate producer process (:mod:`miyaq.bench.agent`).
A *phase* is one load: ``bulk``, ``rate``, ``confirmed`` or ``call``.

For each phase the CPU time of every process (the node or relay, each
worker, the producer), of its main thread, and its wake-ups
(:mod:`miyaq.bench.cpu`) are read just before the producer starts and once
every task is done, so a phase's CPU per task is everything the system
spent on it, divided by the tasks completed. Waiting for the drain polls
the node's STATUS (the relay's stats) every ``DRAIN_POLL`` seconds, which
is counted too: a few polls per phase. With ``idle`` seconds, the CPU of
the system doing nothing (heartbeats and timers only) is read first.

Start and done times come from the record files the workers write and the
bench reads after they exit (:mod:`miyaq.bench.records`), so nothing is
measured through the system under test.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from ..errors import MiyaqError
from . import cpu
from .producer import Producer
from .profile import Profilers
from .progress import Progress
from .records import Records, read_records
from .stats import match, rate, summarize_ms

DRAIN_POLL = 0.02


@dataclass(frozen=True)
class Phase:
    name: str            # what the report calls it
    mode: str            # bulk | rate | confirmed | call
    tasks: int
    rate: float | None = None


class System(Protocol):
    kind: str
    records_dir: str

    @property
    def endpoint(self) -> str: ...
    def start(self) -> None: ...
    def peak_rss(self) -> int | None: ...
    def counters(self) -> dict[str, int]: ...
    def pids(self) -> dict[str, int]: ...
    def unfinished(self) -> tuple[int, int]: ...
    def check_children(self) -> None: ...
    def stop_workers(self, grace: float = 5.0) -> None: ...
    def close(self) -> None: ...


@dataclass
class PhaseRun:
    phase: Phase
    tag: str
    answer: dict[str, Any]
    times: list[float]
    used: cpu.Reading
    observed_end: float
    dead: int | None                  # None: unknown (the node did not answer)
    unfinished: int | None            # the same
    errors: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)   # what the phase added to System.counters


def role(process: str) -> str:
    """``node-1`` -> ``node``, ``worker-0`` -> ``workers``; the rest as they are."""
    if process.startswith("worker"):
        return "workers"
    if process.startswith("node"):
        return "node"
    return process


@dataclass
class SystemRun:
    measurements: list[dict[str, Any]]
    idle: dict[str, Any] | None       # see measure_idle
    endpoint: str
    peak_rss: int | None               # of the node (the first one) or the relay


@dataclass(frozen=True)
class ProfileSpec:
    directory: str
    fmt: str                          # a py-spy format (miyaq.bench.profile.FORMATS)
    label: str                        # the system's name in the file names


def run_system(system: System, producer_for: Callable[[System], Producer], phases: list[Phase], *,
               payload: int, timeout: float, start_deadline: float, idle: float,
               progress_stream: TextIO | None,
               profile: ProfileSpec | None = None) -> SystemRun:
    """Bring ``system`` up with its producer (by ``start_deadline``), measure
    ``idle`` seconds of idle CPU, then run ``phases`` (all of them within
    ``timeout`` seconds: the idle measurement is not part of it), read the
    records. A phase the timeout left no time for is measured as not run,
    with an error. A producer that fails a phase (exits, stalls past the
    phase's deadline and the :data:`~miyaq.bench.producer.SLACK`, or cannot
    be written to) is that phase's error; it is killed, and the phases after
    it are measured as not run. With ``profile``, each phase runs under
    py-spy (:mod:`miyaq.bench.profile`)."""
    system.start()
    producer = producer_for(system).start(max(1.0, start_deadline - time.monotonic()))
    pids = dict(system.pids(), producer=producer.pid)
    idle_result = measure_idle(pids, idle) if idle > 0 else None
    deadline = time.monotonic() + timeout
    outcomes: list[PhaseRun | tuple[Phase, str]] = []      # (phase, why): not run
    for phase in phases:
        if producer.lost is not None:
            outcomes.append((phase, "not run: the producer failed in an earlier phase"))
            continue
        if time.monotonic() >= deadline:
            outcomes.append((phase, f"not run: the --timeout of {timeout:g} s had passed before it could start"))
            continue
        profilers = None
        if profile is not None:
            label = f"{profile.label}-{phase.name}"
            profilers = Profilers(profile.directory, profile.fmt, label, pids).start()
        run: PhaseRun | None = None
        try:
            run = _run_phase(system, producer, pids, phase, deadline, payload, progress_stream)
            outcomes.append(run)
        finally:
            if profilers is not None:
                problems = profilers.stop()
                if run is not None:
                    run.errors.extend(problems)
    peak = system.peak_rss()
    producer.quit()
    system.stop_workers()
    records = read_records(system.records_dir, "")
    return SystemRun([measurement(system.kind, o, records) if isinstance(o, PhaseRun)
                      else not_run(system.kind, *o) for o in outcomes], idle_result,
                     system.endpoint, peak)


def measure_idle(pids: dict[str, int], seconds: float) -> dict[str, Any]:
    """CPU milliseconds per second of each process while nothing is submitted."""
    before = cpu.sample(pids)
    time.sleep(seconds)
    per_role = by_role(cpu.spent(before, cpu.sample(pids)))
    ms = {r: None if v is None else round(v * 1000.0 / seconds, 2) for r, v in per_role.items()}
    total = cpu.total(per_role.values())
    ms["total"] = None if total is None else round(total * 1000.0 / seconds, 2)
    return {"seconds": seconds, "cpu_ms_per_second": ms}


def _run_phase(system: System, producer: Producer, pids: dict[str, int], phase: Phase, deadline: float,
               payload: int, progress_stream: TextIO | None) -> PhaseRun:
    tag = "b" + uuid.uuid4().hex[:12]
    times_path = os.path.join(system.records_dir, f"{tag}.times")
    progress = None
    if progress_stream is not None:
        progress = Progress(progress_stream, f"{system.kind}: {phase.name}, {phase.tasks:,} tasks").start()
    counted = system.counters()
    before = cpu.read(pids)
    try:
        answer, times = producer.load(times_path, max(0.1, deadline - time.monotonic()), mode=phase.mode,
                                      tag=tag, tasks=phase.tasks, payload=payload, rate=phase.rate)
    except MiyaqError as err:      # exited, stalled, gone: this phase's error, not the run's end
        answer, times = {"errors": [f"the producer failed, so nothing it submitted is counted: {err.message}"]}, []
    finally:
        if progress is not None:
            progress.stop()
    errors = list(answer.get("errors", []))
    end, live, dead = _wait_drained(system, deadline, errors)
    used = cpu.between(before, cpu.read(pids))
    after = system.counters()
    added = {k: v - counted.get(k, 0) for k, v in after.items() if v - counted.get(k, 0)}
    return PhaseRun(phase, tag, answer, times, used, end, dead, live, errors, added)


def _wait_drained(system: System, deadline: float,
                  errors: list[str]) -> tuple[float, int | None, int | None]:
    """Poll until no task is live, a child exits or the deadline passes.
    Returns when that was seen, and the live and dead counts then -- after
    a child exited, as the node (or relay) still counts them; both None
    when it does not answer: then nobody knows which tasks still wait."""
    while True:
        try:
            system.check_children()
        except MiyaqError as err:
            errors.append(f"stopped waiting for completions: {err.message}")
            return (time.time(), *_unfinished_after_exit(system, errors))
        try:
            live, dead = system.unfinished()
        except MiyaqError as err:
            errors.append(f"stopped waiting for completions: no count of unfinished tasks: {err.message}")
            return time.time(), None, None
        if live == 0:
            return time.time(), live, dead
        if time.monotonic() >= deadline:
            errors.append(f"timeout: {live} task(s) still unfinished")
            return time.time(), live, dead
        time.sleep(DRAIN_POLL)


def _unfinished_after_exit(system: System, errors: list[str]) -> tuple[int | None, int | None]:
    """What the node (or relay) still counts once a child exited: tasks that
    wait are unfinished, not lost. (None, None) if it does not answer."""
    try:
        live, dead = system.unfinished()
    except MiyaqError:
        return None, None
    if live:
        errors.append(f"{live} task(s) still unfinished then")
    return live, dead


def measurement(kind: str, run: PhaseRun, records: Records) -> dict[str, Any]:
    """What one phase of one system did, as the report and ``--json`` show it."""
    answer = run.answer
    matched = match(run.tag, run.times, records)
    accepted = int(answer.get("accepted", 0))
    submitted = int(answer.get("submitted", 0))
    errors = list(run.errors)
    if run.dead:
        errors.append(f"{run.dead} task(s) failed and were dead-lettered")
    if run.dead is None or run.unfinished is None:
        unseen = accepted - matched.completed
        if unseen > 0:
            errors.append(f"{unseen} accepted task(s) left no record; how many of them still waited is "
                          f"unknown (the node gave no count)")
    else:
        missing = accepted - matched.completed - run.dead - run.unfinished
        if missing > 0:
            errors.append(f"{missing} task(s) finished but left no record (did a worker exit uncleanly?)")
    first = float(answer.get("first_submit", 0.0))
    enqueue_s = float(answer.get("acked_at", first)) - first if submitted else 0.0
    last_done = matched.last_done if matched.last_done is not None else run.observed_end
    drain_s = last_done - first if submitted else 0.0
    prefix = run.tag + "-"
    duplicates = sum(n for tid, n in records.repeats.items() if tid.startswith(prefix))
    return {
        "system": kind,
        "phase": run.phase.name,
        "mode": run.phase.mode,
        "rate": run.phase.rate,
        "submitted": submitted,
        "accepted": accepted,
        "completed": matched.completed,
        "enqueue_seconds": round(enqueue_s, 4),
        "enqueue_rate": rate(accepted, enqueue_s),
        "drain_seconds": round(drain_s, 4),
        "drain_rate": rate(matched.completed, drain_s),
        "latency": {"submit_to_start_ms": summarize_ms(matched.to_start),
                    "submit_to_done_ms": summarize_ms(matched.to_done)},
        "cpu_seconds": {k: None if v is None else round(v, 4) for k, v in run.used.cpu.items()},
        "cpu_us_per_task": per_task(run.used.cpu, matched.completed),
        "main_thread_cpu_us_per_task": per_task(run.used.main, matched.completed),
        "wakeups_per_task": per_task(run.used.wakeups, matched.completed, scale=1.0, digits=2),
        "duplicates": duplicates,
        "cluster_events": run.counters or None,
        "errors": errors,
    }


def not_run(kind: str, phase: Phase, why: str) -> dict[str, Any]:
    """The measurement of a phase that could not start (the timeout left no
    time, the producer failed before it): nothing submitted, no figure, one
    error, ``why`` (so the run does not pass for complete)."""
    return {
        "system": kind, "phase": phase.name, "mode": phase.mode, "rate": phase.rate,
        "submitted": 0, "accepted": 0, "completed": 0,
        "enqueue_seconds": 0.0, "enqueue_rate": None, "drain_seconds": 0.0, "drain_rate": None,
        "latency": {"submit_to_start_ms": None, "submit_to_done_ms": None},
        "cpu_seconds": {}, "cpu_us_per_task": None, "main_thread_cpu_us_per_task": None,
        "wakeups_per_task": None, "duplicates": 0, "cluster_events": None,
        "errors": [why],
    }


def per_task(used: dict[str, float | None], tasks: int, scale: float = 1e6,
             digits: int = 1) -> dict[str, float | None] | None:
    """``used`` per completed task, times ``scale`` (CPU seconds -> microseconds), per role and in total."""
    if tasks <= 0:
        return None
    per_role = by_role(used)
    out = {r: None if v is None else round(v * scale / tasks, digits) for r, v in per_role.items()}
    total = cpu.total(per_role.values())
    out["total"] = None if total is None else round(total * scale / tasks, digits)
    return out


def by_role(used: dict[str, float | None]) -> dict[str, float | None]:
    """CPU seconds per process summed per role (None where any part is unknown)."""
    per_role: dict[str, float | None] = {}
    for name, value in used.items():
        r = role(name)
        prev = per_role.get(r, 0.0)
        per_role[r] = None if value is None or prev is None else prev + value
    return per_role
