"""The intake of a standalone node: it is the only holder, so a task is
accepted once the engine stored it (and, with a durable log, once it is
written as the fsync policy promises: the service socket holds the
acknowledgement until then). A clustered node uses
:class:`~miyaq.cluster.replicated_intake.ReplicatedIntake` instead, which
stores the task on N holders before it answers; both are an
:class:`~miyaq.core.handles.Intake`.
"""
from __future__ import annotations

from miyaq.core.engine import Engine
from miyaq.core.handles import Ack, AckTarget
from miyaq.errors import MiyaqError
from miyaq.protocol.commands import REJECTED
from miyaq.store.task import Task


class LocalIntake:
    def __init__(self, engine: Engine, ack: Ack) -> None:
        self.engine = engine
        self.ack = ack

    def flush(self) -> None:
        """Nothing to send: the task is stored here only."""

    def sweep(self) -> int:
        """Nothing waits on other holders."""
        return 0

    def submit(self, task: Task, now: float, identity: AckTarget) -> None:
        try:
            status, detail = self.engine.submit(task, now)
        except MiyaqError as err:
            # Full (max_tasks, max_bytes, max_result_bytes) or a failing disk:
            # the endpoint's ack counts the refusal by code (STATUS errors).
            self.ack(identity, [task.id, REJECTED, err.to_wire()])
            return
        self.ack(identity, [task.id, status, detail])
