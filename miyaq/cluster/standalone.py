"""The role of a node without ZooKeeper: a ring of one that is its own leader.

Built on :class:`~miyaq.cluster.membership.StandaloneCoordinator`, it answers
the same :class:`~miyaq.core.handles.NodeRole` questions a clustered node does:
the ring (epoch 1, this node its only member and leader), leadership (held
from start to stop, so periodic schedules fire here), and an intake that
stores a task here only (:class:`~miyaq.core.local_intake.LocalIntake`).
There are no other holders, so there is nothing to replicate, flush, resync
or hand off.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from miyaq.cluster.membership import LeaderListener, StandaloneCoordinator
from miyaq.cluster.ring_view import local_member
from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.core.handles import Ack
from miyaq.core.local_intake import LocalIntake
from miyaq.errors import MiyaqError


class StandaloneRole:
    name = "role"
    freeze_sensitive = False   # no other holder could have taken over meanwhile

    def __init__(self, config: NodeConfig, engine: Engine, ack: Ack) -> None:
        self.config = config
        self.engine = engine
        self.coordinator = StandaloneCoordinator(local_member(config))
        self.intake = LocalIntake(engine, ack)

    # -- lifecycle ------------------------------------------------------------------
    def setup(self) -> None:
        """Nothing to prepare."""

    def start(self) -> None:
        self.coordinator.start()     # the ring of one, and leadership

    def stop(self) -> None:
        self.coordinator.stop()

    def kill(self) -> None:
        """Nothing to release."""

    # -- the NodeRole interface -------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.coordinator.is_leader

    def add_leader_listener(self, fn: LeaderListener) -> None:
        self.coordinator.add_leader_listener(fn)

    def new_intake(self, ack: Ack) -> LocalIntake:
        return LocalIntake(self.engine, ack)

    def members(self) -> int:
        return 1

    def holders(self, routing_key: str, replicas: int) -> list[str]:
        return [self.config.id]

    def ring_info(self) -> dict[str, Any]:
        me = self.coordinator.registered()[self.config.id]
        return {"epoch": StandaloneCoordinator.EPOCH, "leader": me.node_id, "vnodes": 0,
                "members": {me.node_id: {"service": me.service, "share": 1.0, "weight": me.weight,
                                         "http": me.http}}}

    def cancel(self, task_id: str, now: float, answer: Callable[[dict[str, Any] | MiyaqError], None]) -> None:
        """The only holder: cancelled here, answered at once (``NotFound`` raised for an unknown task)."""
        cancelled, state = self.engine.cancel(task_id, now)
        answer({"cancelled": cancelled, "state": state})

    def running_elsewhere(self, task_id: str, now: float) -> None:
        """No other node holds a copy: a worker's TOUCH for an unknown task is ignored."""

    def stalled(self, seconds: float) -> None:
        """Not watched (``freeze_sensitive`` is False): no other holder ran anything meanwhile."""

    def flush(self) -> None:
        """Nothing to send."""

    def after_peer_work(self, hook: Callable[[], None]) -> None:
        """No other node sends anything here."""

    def replication_lag(self, now: float) -> dict[str, tuple[float, int]]:
        return {}

    def not_ready(self) -> str:
        """Always ready: the ring of one holds this node from :meth:`start`,
        and there is no peer to reconcile with."""
        return ""

    def stats(self) -> None:
        """A standalone node has no cluster section in its status."""
        return None
