"""One bench run: which systems, which phases, how many repeats; the result.

What the times mean (all ``time.time()`` on this one machine: the bench,
its nodes, its workers and its producer are local processes sharing one
clock):

* **submit** -- read by the producer just before it calls ``submit()``
  (``call()``) for the task. In bulk mode this includes time the call
  spends blocked on a full client window, so submit -> start also measures
  queueing behind the tasks submitted earlier: it is the latency of a
  saturated queue. Paced (``--rate``) it is the latency of one task.
* **start** -- read by the no-op handler as its first statement, in the
  worker process: after the node leased the task, the DISPATCH crossed the
  socket, and a runner picked it up.
* **done** -- read by the handler as its last statement. The DONE report to
  the node leaves afterwards and is not included; the bench waits until the
  node counts no live task before it reads the records.
* **last acknowledgement** -- when the producer's ``flush()`` returned (for
  confirmed submits and calls: when the last one returned).

Rates: enqueue = accepted / (last acknowledgement - first submit) -- for
confirmed submits and calls, round trips per second; drain = completed /
(last done - first submit). A task id seen in more than one record is a
duplicate execution.

Systems run one after the other, each with fresh processes, and with
``repeat`` > 1 in turns (A, B, A, B ...), so drift on a shared machine
touches each alike; the report shows medians and ranges.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from .bare_fleet import BareFleet
from .compare import ratios, summarize
from .fleet import Fleet
from .measure import Phase, ProfileSpec, System, run_system
from .procs import ProcessGroup, sigterm_as_exit
from .producer import Producer

START_ALLOWANCE = 60.0   # seconds a system may take to start, beyond --timeout
TOP_FIELDS = ("submitted", "accepted", "completed", "enqueue_seconds", "enqueue_rate", "drain_seconds",
              "drain_rate", "latency", "duplicates")


@dataclass
class BenchConfig:
    workers: int = 2
    concurrency: int = 8
    prefetch: int | None = None     # the workers' --prefetch (None: theirs); the relay's credit follows
    tasks: int = 20_000
    payload: int = 100
    rate: float | None = None
    connect: str | None = None
    timeout: float = 120.0          # for each system's phases (starting it may take START_ALLOWANCE more)
    fsync: str | None = None        # start the node with a log in a temp dir, this fsync policy
    baseline: bool = False          # also run the bare relay (miyaq.bench.bare)
    baseline_gevent: bool = False   # also run the bare relay and workers waiting in a gevent hub
    confirmed: bool = False         # phases: confirmed submits, then calls
    idle: float = 0.0               # seconds of idle CPU measured before the phases
    repeat: int = 1
    python: str | None = None       # interpreter of the miyaq processes (another build)
    compare_python: str | None = None   # also run miyaq with this interpreter, as "miyaq@other"
    cluster: int = 0                # nodes of a cluster to hold against a single node (0: none)
    profile: str | None = None      # directory for py-spy profiles of every process, per phase
    profile_format: str = "flamegraph"
    keys: bool = False              # also run miyaq with CURVE on every socket, as "miyaq+keys"
    pool: str | None = None         # the workers' --pool (None: their default)
    work: str = ""                  # what each task does: "", "sleep:MS", "block:MS", "cpu:MS" (bench.tasks)


def phases_of(cfg: BenchConfig) -> list[Phase]:
    if cfg.confirmed:
        return [Phase("confirmed", "confirmed", cfg.tasks), Phase("call", "call", cfg.tasks)]
    if cfg.rate:
        return [Phase(f"rate {cfg.rate:g}/s", "rate", cfg.tasks, cfg.rate)]
    return [Phase("bulk", "bulk", cfg.tasks)]


Maker = Callable[[ProcessGroup, str, float], tuple[System, Callable[[System], Producer]]]


def systems_of(cfg: BenchConfig) -> list[tuple[str, Maker]]:
    """(label, maker) of every system this run measures, the main one first.
    A maker builds the system and says how to start its producer."""
    def miyaq(python: str | None, nodes: int, keys: bool = False) -> Maker:
        def make(procs: ProcessGroup, tmp: str, deadline: float) -> tuple[System, Callable[[System], Producer]]:
            queue = f"bench-{os.path.basename(tmp)}"
            fleet = Fleet(procs, connect=cfg.connect, workers=cfg.workers, concurrency=cfg.concurrency,
                          prefetch=cfg.prefetch, queue=queue, records_dir=tmp, deadline=deadline,
                          fsync=cfg.fsync, data_dir=os.path.join(tmp, "node-data"), python=python, nodes=nodes,
                          keys=keys, pool=cfg.pool, work=cfg.work, payload=cfg.payload)
            return fleet, lambda s: Producer(procs, python or sys.executable, "miyaq", s.endpoint, queue,
                                             env=fleet.key_env("producer"))
        return make

    def bare(hub: bool) -> Maker:
        def make(procs: ProcessGroup, tmp: str, deadline: float) -> tuple[System, Callable[[System], Producer]]:
            fleet = BareFleet(procs, workers=cfg.workers, concurrency=cfg.concurrency,
                              prefetch=cfg.prefetch, records_dir=tmp, deadline=deadline, hub=hub)
            return fleet, lambda s: Producer(procs, sys.executable, "bare", s.endpoint, "")
        return make

    out: list[tuple[str, Maker]] = []
    if cfg.cluster > 1:
        out.append((f"cluster-{cfg.cluster}", miyaq(cfg.python, cfg.cluster)))
    out.append(("miyaq", miyaq(cfg.python, 1)))
    if cfg.compare_python:
        out.append(("miyaq@other", miyaq(cfg.compare_python, 1)))
    if cfg.keys:
        out.append(("miyaq+keys", miyaq(cfg.python, 1, keys=True)))
    if cfg.baseline:
        out.append(("baseline", bare(False)))
    if cfg.baseline_gevent:
        out.append(("baseline@gevent", bare(True)))
    return out


def run_bench(cfg: BenchConfig, progress_stream: TextIO | None = None) -> dict[str, Any]:
    """Run the benchmark and return its result (see :func:`_result`).
    Raises MiyaqError when a system cannot be brought up."""
    phases = phases_of(cfg)
    runs: list[dict[str, Any]] = []
    idle: dict[str, list[dict[str, Any]]] = {}
    first: dict[str, Any] = {}
    with sigterm_as_exit():
        for repeat in range(cfg.repeat):
            for label, make in systems_of(cfg):
                with tempfile.TemporaryDirectory(prefix="miyaq-bench-") as tmp:
                    # Starting processes on a loaded machine is not what --timeout bounds.
                    deadline = time.monotonic() + cfg.timeout + START_ALLOWANCE
                    procs = ProcessGroup(tmp)
                    system, producer_for = make(procs, tmp, deadline)
                    profile = None
                    if cfg.profile:
                        suffix = f"-run{repeat + 1}" if cfg.repeat > 1 else ""
                        profile = ProfileSpec(cfg.profile, cfg.profile_format, label + suffix)
                    try:
                        done = run_system(system, producer_for, phases, payload=cfg.payload,
                                          timeout=cfg.timeout, start_deadline=deadline, idle=cfg.idle,
                                          progress_stream=progress_stream, profile=profile)
                    finally:
                        system.close()
                if label == "miyaq" and not first:
                    first = {"node": done.endpoint, "node_peak_rss_bytes": done.peak_rss}
                for m in done.measurements:
                    m.update(system=label, repeat=repeat)
                runs.extend(done.measurements)
                if done.idle is not None:
                    idle.setdefault(label, []).append(done.idle)
    return _result(cfg, runs, idle, first)


def _result(cfg: BenchConfig, runs: list[dict[str, Any]], idle: dict[str, list[dict[str, Any]]],
            first: dict[str, Any]) -> dict[str, Any]:
    """The first miyaq measurement's fields at the top (as earlier versions
    printed), every run, medians per phase and system, and the ratios."""
    main = next((m for m in runs if m["system"] == "miyaq"), runs[0] if runs else None)
    summary = summarize(runs)
    result: dict[str, Any] = {"config": asdict(cfg), "node": first.get("node", "")}
    for key in TOP_FIELDS:
        result[key] = main.get(key) if main else None
    result["node_peak_rss_bytes"] = first.get("node_peak_rss_bytes")
    for key in ("cpu_us_per_task", "main_thread_cpu_us_per_task", "wakeups_per_task"):
        result[key] = main.get(key) if main else None
    result["runs"] = runs
    result["idle"] = idle or None
    result["summary"] = summary
    compared: dict[str, Any] = {}
    if cfg.baseline:
        compared["miyaq/baseline"] = ratios(summary, "miyaq", "baseline")
        if cfg.confirmed:
            compared["miyaq call/baseline confirmed"] = ratios(
                summary, "miyaq", "baseline", {"call": "confirmed"}).get("call")
    if cfg.baseline_gevent:
        compared["miyaq/baseline@gevent"] = ratios(summary, "miyaq", "baseline@gevent")
        if cfg.baseline:
            compared["baseline@gevent/baseline"] = ratios(summary, "baseline@gevent", "baseline")
    if cfg.cluster > 1:
        compared[f"cluster-{cfg.cluster}/miyaq"] = ratios(summary, f"cluster-{cfg.cluster}", "miyaq")
    if cfg.compare_python:
        compared["miyaq/miyaq@other"] = ratios(summary, "miyaq", "miyaq@other")
    if cfg.keys:
        compared["miyaq+keys/miyaq"] = ratios(summary, "miyaq+keys", "miyaq")
    result["ratios"] = compared or None
    result["errors"] = [f"{m['system']} {m['phase']} (run {m['repeat'] + 1}): {e}"
                        for m in runs for e in m["errors"]]
    return result
