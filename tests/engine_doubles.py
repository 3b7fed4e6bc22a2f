"""Stand-ins for what the engine talks to, for tests that drive an Engine
directly (no node, no sockets)."""
from __future__ import annotations

from miyaq.store.task import Task


class LeasingConsumer:
    """A consumer as the engine sees one: a principal, and the tasks leased
    to it (its ``running`` map -- which refers back to each task, as a real
    consumer's does). It aborts nothing and does nothing when a lease ends."""

    def __init__(self, principal: str = "consumer") -> None:
        self.principal = principal
        self.running: dict[str, Task] = {}

    def abort(self, ids: list[str]) -> None:
        pass

    def lease_expired(self, task: Task, now: float) -> None:
        pass
