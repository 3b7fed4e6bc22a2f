"""One node process of a dev cluster (``miyaq dev-cluster``):
:class:`DevNode`, its id, its block of ports (:mod:`miyaq.devcluster.ports`) and the
endpoints on them, and its process. :class:`~miyaq.devcluster.cluster.DevCluster`
starts and stops the processes; this only describes one.
"""
from __future__ import annotations

from dataclasses import dataclass

from miyaq.devcluster.ports import HOST, HTTP_OFFSET
from miyaq.testing.harness import Proc

__all__ = ["DevNode"]


@dataclass
class DevNode:
    """One node process of the dev cluster."""

    node_id: str
    port: int
    proc: Proc
    starts: int = 1
    """How many times this node was started (again on another block when
    another process took one of its ports: :mod:`miyaq.devcluster.busy`)."""
    log_start: int = 0
    """Where this run's output starts in its log (a node started again appends to it)."""

    @property
    def ports(self) -> tuple[int, int, int, int]:
        """Service, peer, pub and HTTP ports."""
        return (self.port, self.port + 1, self.port + 2, self.http_port)

    @property
    def http_port(self) -> int:
        return self.port + HTTP_OFFSET

    @property
    def service(self) -> str:
        return f"tcp://{HOST}:{self.port}"

    @property
    def exit_code(self) -> int | None:
        """The process's exit code; ``None`` while it runs."""
        return self.proc.exit_code

    def describe(self) -> str:
        return (f"node {self.node_id}  service {self.service}  peer tcp://{HOST}:{self.port + 1}  "
                f"pub tcp://{HOST}:{self.port + 2}  http http://{HOST}:{self.http_port}  "
                f"(pid {self.proc.pid}, log {self.proc.log_path})")
