"""What every fault kind is: a target chooser, a way to break it and a way
to repair it (:class:`FaultKind`).

A kind names its targets (given the nodes already down), breaks something
(:meth:`FaultKind.begin`) and repairs it (:meth:`FaultKind.heal`); the
nemesis (:mod:`.nemesis`) decides when, keeps the safety budget and
records everything. ``holder=True`` kinds take a node away as a holder of
tasks (it counts against the budget of N−1 nodes down at once).

``begin`` and ``heal`` block (a kill waits for the process to be reaped,
a restart of ZooKeeper until it answers) and may raise ``MiyaqError``;
``heal`` must be safe to call once after ``begin`` succeeded. The kinds
are in :mod:`.nodefaults`, :mod:`.netfaults`, :mod:`.hostfaults` and
:mod:`.zkfaults`; :mod:`.faults` lists them by name.
"""
from __future__ import annotations

from typing import Any, ClassVar


class FaultKind:
    name: ClassVar[str] = ""
    holder: ClassVar[bool] = True
    """True: the target node stops being a usable holder while the fault lasts."""
    hold: ClassVar[float] = 1.0
    """How long the fault stays in place, in fault durations (``--fault-duration``)."""
    min_hold: ClassVar[float] = 0.0
    """...and at least this many seconds."""
    help: ClassVar[str] = ""

    def lasts(self, duration: float) -> float:
        """Seconds this fault stays in place for a ``--fault-duration`` of ``duration``."""
        return max(duration * self.hold, self.min_hold)

    def targets(self, cluster: Any, down: set[str], ctx: dict[str, Any]) -> list[str]:
        """Nodes this fault may hit now (default: every running node not down).
        A target naming several nodes joins them with ``+``."""
        return [n for n in cluster.node_ids if n not in down and cluster.up(n)]

    def size(self, cluster: Any) -> int:
        """How many nodes one fault of this kind takes away (the budget)."""
        return 1 if self.holder else 0

    def begin(self, cluster: Any, target: str) -> dict[str, Any]:
        """Break ``target``; returns details for the history."""
        raise NotImplementedError

    def heal(self, cluster: Any, target: str) -> dict[str, Any] | None:
        """Repair ``target``; may return details for the history's heal record."""
        raise NotImplementedError
