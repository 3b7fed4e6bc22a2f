"""A handle on one submitted task: its id, whether the node accepted it,
and its result."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import MiyaqError
from .futures import Future
from .wire import accepted_as, decode_outcome

if TYPE_CHECKING:
    from .client import Client


class TaskHandle:
    __slots__ = ("id", "client", "_accepted", "node", "duplicate_of")

    def __init__(self, task_id: str, client: "Client", accepted: Future) -> None:
        self.id = task_id
        self.client = client
        self._accepted = accepted
        self.node: str | None = None
        self.duplicate_of: str | None = None

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    @property
    def accepted(self) -> bool:
        """True once a node acknowledged the task (never blocks)."""
        if not self._accepted.done():
            return False
        try:
            self._accepted.wait(0)
        except MiyaqError:
            return False
        return True

    def wait_accepted(self, timeout: float | None = None) -> "TaskHandle":
        """Block until the node stored the task. Raises :class:`miyaq.Busy`,
        :class:`miyaq.Unavailable` or :class:`miyaq.Timeout` if it could not
        be placed before the submit deadline."""
        value = self._accepted.wait(timeout, what=f"submit of {self.id}")
        self.node, self.duplicate_of = accepted_as(self.id, value)
        return self

    @property
    def task_id(self) -> str:
        """The id that holds this work: the original task's when ``key``
        deduplicated this submit, else this handle's own id."""
        self.wait_accepted(self.client.submit_timeout)
        return self.duplicate_of or self.id

    def result(self, timeout: float | None = 60.0) -> Any:
        """Wait for the task to finish and return the handler's return value.
        Raises :class:`miyaq.TaskFailed` (with the remote exception type and
        message), :class:`miyaq.TaskCancelled`, :class:`miyaq.TaskExpired` or
        :class:`miyaq.Timeout`."""
        self.wait_accepted(timeout)
        answer = self.client.wait_result(self.task_id, timeout, node=self.node)
        return decode_outcome(self.task_id, answer)

    def status(self) -> dict[str, Any]:
        return self.client.status(self.task_id)

    def cancel(self) -> bool:
        return self.client.cancel(self.task_id)


__all__ = ["TaskHandle", "decode_outcome"]
