"""What STATUS and ``GET /status`` report about a node: the core's counts
and the dispatch gate, periodic schedules, the role's cluster section (None
when standalone) and the log's health (None without a data dir)."""
from __future__ import annotations

from typing import Any

from miyaq import __version__
from miyaq.config import NodeConfig
from miyaq.core.core import Core
from miyaq.core.handles import Role, StorageHealth
from miyaq.periodic.scheduler import PeriodicScheduler
from miyaq.runtime import monotonic


class NodeStatus:
    def __init__(self, config: NodeConfig, core: Core, role: Role, periodic: PeriodicScheduler,
                 storage: StorageHealth | None) -> None:
        self.node_id = config.id
        self.core = core
        self.role = role
        self.periodic = periodic
        self.storage = storage
        self.started = monotonic()

    def __call__(self, now: float) -> dict[str, Any]:
        status: dict[str, Any] = {"node": self.node_id, "version": __version__,
                                  "uptime": monotonic() - self.started}
        status.update(self.core.status())
        status["periodic"] = self.periodic.stats()
        status["cluster"] = self.role.stats()
        status["storage"] = self.storage.stats() if self.storage is not None else None
        return status
