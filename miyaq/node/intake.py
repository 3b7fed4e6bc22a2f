"""Where accepted submits go: the seam between the service socket and the
task's holders. A standalone node is the only holder, so a task is accepted
once the engine stored it (and, with a durable log, once it is written as
the fsync policy promises). The cluster replaces this with an intake that
stores the task on N holders before it answers.
"""
from __future__ import annotations

from typing import Any, Callable

from ..errors import MiyaqError
from ..protocol.commands import REJECTED
from ..store.task import Task
from .engine import Engine

Ack = Callable[[bytes, list[Any]], None]


class LocalIntake:
    def __init__(self, engine: Engine, ack: Ack) -> None:
        self.engine = engine
        self.ack = ack
        self.errors = 0

    def submit(self, task: Task, now: float, identity: bytes) -> None:
        try:
            status, detail = self.engine.submit(task, now)
        except MiyaqError as err:
            self.errors += 1
            self.ack(identity, [task.id, REJECTED, err.to_wire()])
            return
        self.ack(identity, [task.id, status, detail])
