"""Faults of a node's host rather than of its process or network.

- ``clock``: the node is restarted (SIGTERM, wait, start) through Debian's
  ``faketime`` with its clock ``CLOCK_SKEW`` seconds ahead or behind the
  others (alternately), runs so for ``CLOCK_HOLD`` × the fault duration,
  then is restarted with the true time. libfaketime moves the process's
  monotonic clock with its wall clock (the Python runtime cannot sleep
  otherwise), so the skew is constant for the process's life: a skewed
  clock, as an unsynchronised host has, not a step while it runs.
- ``diskfull``: the node's data directory (a small tmpfs, :mod:`.disk`) is
  filled up; every write the node makes fails with ENOSPC until the heal
  deletes the filler.
"""
from __future__ import annotations

import itertools
from typing import Any

from ..errors import MiyaqError
from .fault_kind import FaultKind

CLOCK_SKEW = 20.0
"""Seconds of skew: past the replica offset and under the chaos task's 30 s lease."""
CLOCK_HOLD = 3.0


class ClockSkew(FaultKind):
    name = "clock"
    help = f"restart a node with its clock {CLOCK_SKEW:g} s ahead or behind (faketime), then with the true time"
    hold = CLOCK_HOLD

    def __init__(self) -> None:
        self._signs = itertools.cycle((1, -1))

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        skew = next(self._signs) * CLOCK_SKEW
        cluster.restart_node(target, skew=skew)
        return {"skew": skew, "pid": cluster.procs[target].pid}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.restart_node(target, skew=None)


class DiskFull(FaultKind):
    name = "diskfull"
    help = "fill a node's data directory (a small tmpfs) until every write fails, then free it"

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        return {"filled_bytes": cluster.fill_disk(target)}

    def heal(self, cluster: Any, target: str) -> None:
        cluster.free_disk(target)
        proc = cluster.procs[target]
        if not proc.alive():
            # The node must ride out a full disk (docs/durability.md); one that
            # died is a failure of the run: restart it, and say so in the report.
            status = proc.proc.poll() if proc.proc is not None else None
            cluster.start_node(target)
            raise MiyaqError(f"{target} exited (status {status}) while its disk was full; restarted")


HOST_KINDS = (ClockSkew, DiskFull)
