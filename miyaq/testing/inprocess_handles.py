"""What a test holds of an :class:`~miyaq.testing.inprocess.InProcessCluster`:
a node (:class:`InProcessNode`: its :class:`~miyaq.node.node.Node` and the
looks at its engine that tests assert on) and a submit
(:class:`Submission`: the answers that come to it). Both only read and
wake the nodes; the cluster makes them and drives the nodes.
"""
from __future__ import annotations

from typing import Any

from miyaq.cluster.role import ClusterRole
from miyaq.config import NodeConfig
from miyaq.node.node import Node
from miyaq.runtime import wall
from miyaq.store.table import Tombstone
from miyaq.store.task import Task
from miyaq.testing.memtransport import MemoryTransport


class InProcessNode:
    """One node of an :class:`~miyaq.testing.inprocess.InProcessCluster`: the :class:`~miyaq.node.node.Node`
    and what a test looks at."""

    def __init__(self, node_id: str, config: NodeConfig, transport: MemoryTransport, node: Node) -> None:
        self.id = node_id
        self.config = config
        self.transport = transport
        self.node = node
        self.engine = node.core.engine
        self.role: ClusterRole = node.role  # type: ignore[assignment]

    def task(self, task_id: str) -> Task | None:
        """This node's live or dead copy of ``task_id``."""
        table = self.engine.table
        return table.live.get(task_id) or table.dead.get(task_id)

    def state(self, task_id: str) -> str | None:
        """The state of this node's copy: live or dead, else its tombstone's, else None."""
        task = self.task(task_id)
        if task is not None:
            return task.state
        stone = self.tombstone(task_id)
        return stone.state if stone is not None else None

    def due_at(self, task_id: str) -> float | None:
        """When this node's copy's timer fires next (wall clock), or None."""
        task = self.task(task_id)
        return task.timer_at if task is not None else None

    def tombstone(self, task_id: str) -> Tombstone | None:
        return self.engine.table.tombstone(task_id)

    def started(self) -> int:
        """Tasks leased to a consumer on this node, ever."""
        return sum(n for (_, what), n in self.engine.outcomes.items() if what == "started")

    def wake(self) -> None:
        """Dispatch, replicate and publish what is pending now (after acting on the engine)."""
        self.node.clockwork.wake(wall())


class Submission:
    """A submit's acknowledgement, once it comes: ``result`` is ``[id, status,
    detail]``; ``answers`` every answer the node gave (one, always)."""

    def __init__(self, task_id: str, via: str = "", fields: dict[str, Any] | None = None) -> None:
        self.task_id = task_id
        self.via = via                      # the node it was sent to, and its fields: to send it again
        self.fields = fields or {}
        self.answers: list[list[Any]] = []

    def _acked(self, results: list[list[Any]]) -> None:
        self.answers += [r for r in results if r and r[0] == self.task_id]

    @property
    def result(self) -> list[Any] | None:
        return self.answers[0] if self.answers else None

    @property
    def status(self) -> str | None:
        return self.result[1] if self.result else None

    @property
    def error_code(self) -> str | None:
        detail = self.result[2] if self.result and len(self.result) > 2 else None
        return detail.get("code") if isinstance(detail, dict) else None
