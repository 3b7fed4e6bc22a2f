"""A handle on one submitted task: its id, whether the node accepted it,
and its result."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import MiyaqError
from .futures import BlockingFuture, Future, Resolvable
from .wire import accepted_as, decode_outcome

if TYPE_CHECKING:
    from .client import Client


class HandleBase:
    """What every client flavour's handle holds: the id, the acceptance, the
    node that accepted it and, for a ``key`` duplicate, the task holding the key."""

    __slots__ = ("id", "client", "_accepted", "node", "duplicate_of")

    def __init__(self, task_id: str, client: Any, accepted: Resolvable) -> None:
        self.id = task_id
        self.client = client
        self._accepted = accepted
        self.node: str | None = None
        self.duplicate_of: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    @property
    def accepted(self) -> bool:
        """True once a node acknowledged the task (never blocks)."""
        return self._accepted.ok()

    def _took(self, value: tuple[str, str, Any]) -> None:
        self.node, self.duplicate_of = accepted_as(self.id, value)


def unresolved(handles: list[Any]) -> list[Any]:
    """The handles still worth waiting for in a flush (not yet accepted)."""
    return [h for h in handles if not h._accepted.ok()]


def flush_error(failures: list[MiyaqError]) -> MiyaqError:
    """The one error a flush raises: the first failure, saying how many more failed."""
    first = failures[0]
    if len(failures) > 1:
        first.message = f"{first.message} (and {len(failures) - 1} more submits failed)"
        first.args = (first.message,)
    return first


class TaskHandle(HandleBase):
    __slots__ = ()
    client: "Client"
    _accepted: "Future | BlockingFuture"

    def wait_accepted(self, timeout: float | None = None) -> "TaskHandle":
        """Block until the node stored the task. Raises :class:`miyaq.Busy`,
        :class:`miyaq.Unavailable` or :class:`miyaq.Timeout` if it could not
        be placed before the submit deadline."""
        self._took(self._accepted.wait(timeout, what=f"submit of {self.id}"))
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
