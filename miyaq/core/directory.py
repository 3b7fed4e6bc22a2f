"""The service endpoints of the ring's other members, as the role last saw them.

Workers connect to every node of a ring (WELCOME and HEARTBEAT list them) and
report a task to another of its holders when the node that gave it dies
(DISPATCH carries the holders' endpoints). The core keeps this directory;
the clustered role writes it on every ring view. A standalone node never
writes it, so its workers are told of no other node.
"""
from __future__ import annotations

from collections.abc import Mapping

from miyaq.store.task import Task


class Directory:
    def __init__(self, own: str | None = None) -> None:
        self._service: dict[str, str] = {}
        self.own = own
        """This node's own service endpoint as the ring will name it, known
        before any ring view (None: unknown)."""

    def update(self, service: Mapping[str, str]) -> None:
        """The members of the newest ring view: node id -> service endpoint."""
        self._service = dict(service)

    def nodes(self) -> list[str] | None:
        """Every member's service endpoint (sorted), or None while no ring was seen."""
        if not self._service:
            return None
        return sorted(self._service.values())

    def service_of(self, node_id: str) -> str | None:
        """The service endpoint ``node_id`` advertises in the ring, if it is a member."""
        return self._service.get(node_id)

    def own_service(self, node_id: str) -> str | None:
        """How the ring names this node (``node_id``): its entry in the
        newest view, else the endpoint it will register with. A WELCOME
        sent before the node's first ring view carries it too, so a worker
        linked over ``ipc://`` does not dial the node's TCP endpoint again
        when a later HEARTBEAT lists the ring (CI, 2026-12-07)."""
        return self._service.get(node_id, self.own)

    def holder_endpoints(self, task: Task) -> list[str]:
        """The service endpoints of ``task``'s holders that are in the ring."""
        service = self._service
        return [service[h] for h in task.holders if h in service]
