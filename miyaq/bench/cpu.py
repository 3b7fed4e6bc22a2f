"""CPU time and memory of the bench's processes, read from Linux ``/proc``.

:func:`cpu_seconds` is the CPU time of a process and of every process it
started that is still running (summed over the tree), so a worker that runs
handlers in child processes is counted whole. Each process's time is the
sum over its threads of ``/proc/PID/task/TID/schedstat`` (nanoseconds on a
CPU), which resolves the few milliseconds a short phase costs (a thread that
ended between two readings takes its time with it: the processes measured
keep their threads). Where ``schedstat`` is missing, ``utime + stime`` of
``/proc/PID/stat`` counts instead, in clock ticks (10 ms on most
systems). A process that is gone reads as ``None``.

:func:`main_thread_seconds` is the CPU time of a process's first thread
alone: in miyaq's node and workers the gevent hub, in the producer the
caller; the rest of a process's time is libzmq's I/O thread and any pool
threads. :func:`wakeups` counts the times a process's threads (and its
descendants') went to sleep waiting for something
(``voluntary_ctxt_switches``): each is a wake-up later, with its system
calls and cold caches, so wake-ups per task tell a one-message-at-a-time
cost from a batched one.

Off Linux (no ``/proc``) every reading is ``None`` and the bench reports
CPU as unknown rather than zero.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TICK = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def own_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` itself (all its threads)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 13:
        return None
    # After the name: state(0) ppid(1) ... utime(11) stime(12)
    precise = _schedstat_seconds(pid)
    return precise if precise is not None else (int(fields[11]) + int(fields[12])) * TICK


def _sum_over_threads(pid: int, read: Callable[[str], int]) -> int | None:
    """``read(thread directory)`` summed over ``pid``'s live threads; None if
    ``pid`` is gone (a thread that ends meanwhile is skipped)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            total += read(f"/proc/{pid}/task/{tid}")
        except (OSError, ValueError, IndexError):
            continue
    return total


def _schedstat_ns(thread: str) -> int:
    with open(f"{thread}/schedstat", encoding="ascii") as fh:
        return int(fh.read().split()[0])


def _voluntary_switches(thread: str) -> int:
    with open(f"{thread}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def _schedstat_seconds(pid: int) -> float | None:
    """Sum of the live threads' time on a CPU (ns in ``schedstat``), or None."""
    ns = _sum_over_threads(pid, _schedstat_ns)
    return None if ns is None else ns / 1e9


def main_thread_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid``'s first thread (its ``schedstat``), or None."""
    try:
        return _schedstat_ns(f"/proc/{pid}/task/{pid}") / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _own_wakeups(pid: int) -> int | None:
    """Voluntary context switches of ``pid``'s live threads, or None."""
    return _sum_over_threads(pid, _voluntary_switches)


def wakeups(pid: int) -> int | None:
    """Voluntary context switches of ``pid`` and its live descendants; None if ``pid`` is gone."""
    own = _own_wakeups(pid)
    if own is None:
        return None
    return own + sum(_own_wakeups(p) or 0 for p in tree(pid)[1:])


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (``/proc/PID/task/*/children``)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                found.extend(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            continue
    return found


def tree(pid: int, limit: int = 256) -> list[int]:
    """``pid`` and its descendants, breadth first (at most ``limit``)."""
    out = [pid]
    i = 0
    while i < len(out) and len(out) < limit:
        out.extend(children(out[i]))
        i += 1
    return out[:limit]


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` and its live descendants; None if ``pid`` is gone."""
    own = own_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(own_cpu_seconds(p) or 0.0 for p in tree(pid)[1:])


def rss_bytes(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of ``/proc/PID/status`` in bytes (``VmRSS`` now, ``VmHWM`` peak)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def sample(pids: dict[str, int]) -> dict[str, float | None]:
    """CPU seconds of each named process (see :func:`cpu_seconds`)."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


@dataclass(frozen=True)
class Reading:
    """Everything the bench reads of its processes at one moment, per name."""
    cpu: dict[str, float | None]           # :func:`cpu_seconds`
    main: dict[str, float | None]          # :func:`main_thread_seconds`
    wakeups: dict[str, float | None]       # :func:`wakeups`


def read(pids: dict[str, int]) -> Reading:
    """A :class:`Reading` of each named process."""
    return Reading(sample(pids), {name: main_thread_seconds(pid) for name, pid in pids.items()},
                   {name: _as_float(wakeups(pid)) for name, pid in pids.items()})


def between(before: Reading, after: Reading) -> Reading:
    """What each process used between two readings (None where unknown)."""
    return Reading(spent(before.cpu, after.cpu), spent(before.main, after.main),
                   spent(before.wakeups, after.wakeups))


def _as_float(value: int | None) -> float | None:
    return None if value is None else float(value)


def spent(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
    """How much each count (CPU seconds, wake-ups) grew between two samples, per name (None where unknown)."""
    out: dict[str, float | None] = {}
    for name, end in after.items():
        start = before.get(name)
        out[name] = None if start is None or end is None else max(0.0, end - start)
    return out


def total(values: Iterable[float | None]) -> float | None:
    """The sum, or None if any part is unknown."""
    acc = 0.0
    for v in values:
        if v is None:
            return None
        acc += v
    return acc
