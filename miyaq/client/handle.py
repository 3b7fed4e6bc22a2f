"""A handle on one submitted task: its id, whether the node accepted it,
and its result."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..errors import MiyaqError
from .arguments import seconds
from .futures import BlockingFuture, Future, Resolvable
from .wire import accepted_as, decode_outcome

if TYPE_CHECKING:
    from .client import Client


class HandleBase:
    """What every client flavour's handle holds: the id, the acceptance, the
    node that accepted it and, for a ``key`` duplicate, the task holding the key."""

    __slots__ = ("id", "client", "_accepted", "node", "duplicate_of", "told")

    def __init__(self, task_id: str, client: Any, accepted: Resolvable) -> None:
        self.id = task_id
        self.client = client
        self._accepted = accepted
        self.node: str | None = None
        self.duplicate_of: str | None = None
        # The submit failed and a caller already got its error (wait_accepted,
        # result): a flush does not raise it again.
        self.told = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    @property
    def accepted(self) -> bool:
        """True once a node acknowledged the task (never blocks)."""
        return self._accepted.ok()

    def _took(self, value: tuple[str, str, Any]) -> None:
        self.node, self.duplicate_of = accepted_as(self.id, value)

    def _failed(self) -> None:
        """A wait for acceptance raised: if the submit itself failed (not
        merely the wait's own timeout), its error has reached a caller."""
        if self._accepted.done():
            self.told = True


MAX_FAILURES_KEPT = 1000
"""Failed submits whose handles wait for the next ``flush()`` to raise their
error; beyond, only their number is kept (the flush's error counts them)."""


class Unflushed:
    """The handles of the submits a ``flush()`` will wait for, bounded.

    A pass drops the handles already accepted, and the failed ones past the
    first ``MAX_FAILURES_KEPT`` (counted in :attr:`dropped`), once the list
    grows past twice what the last pass kept (and past ``window``). So the
    list holds at most about ``2 × (window + MAX_FAILURES_KEPT)`` handles,
    and each submit pays O(1) for the passes however full the window stays.
    Before, a pass ran whenever the list held more than ``window``: with the
    window full (a slow or busy node, a cluster waiting for its replicas)
    every submit walked ``window`` handles again; and failed handles were
    kept until a flush, so a program that submits and never flushes (a web
    handler) kept every failed submit's handle for good
    (tests/test_client_core.py, "Unflushed"). ``lock`` guards the list for
    a client that several threads submit through (a pass replaces the list:
    a handle another thread added meanwhile would be lost, and its flush
    would not wait for it); the asyncio client passes a null context."""

    __slots__ = ("_handles", "_window", "_prune_at", "_lock", "dropped")

    def __init__(self, window: int, lock: AbstractContextManager[Any]) -> None:
        self._handles: list[Any] = []
        self._window = window
        self._prune_at = window
        self._lock = lock
        self.dropped = 0        # failed submits whose handles a pass let go since the last take

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, handle: Any) -> None:
        with self._lock:
            handles = self._handles
            handles.append(handle)
            if len(handles) > self._prune_at:
                self._prune()

    def _prune(self) -> None:
        kept: list[Any] = []
        failed = 0
        for h in self._handles:
            accepted = h._accepted
            if accepted.ok() or h.told:
                continue
            if accepted.done():
                failed += 1
                if failed > MAX_FAILURES_KEPT:
                    self.dropped += 1
                    continue
            kept.append(h)
        self._handles = kept
        self._prune_at = max(self._window, 2 * len(kept))

    def take(self) -> tuple[list[Any], int]:
        """The handles added since the last ``take`` that no pass let go (a
        flush waits for each; accepted ones return at once), but those whose
        failure a caller already got, and how many failed ones the passes let go."""
        with self._lock:
            handles, dropped = self._handles, self.dropped
            self._handles, self.dropped, self._prune_at = [], 0, self._window
        return [h for h in handles if not h.told], dropped


def flush_error(failures: list[MiyaqError], uncounted: int = 0) -> MiyaqError:
    """The one error a flush raises: the first failure, saying how many more
    failed (``uncounted``: failed submits whose handles were let go, see
    :class:`Unflushed`)."""
    first = failures[0]
    more = len(failures) - 1 + uncounted
    if more:
        first.message = f"{first.message} (and {more} more submits failed)"
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
        timeout = seconds(timeout, "timeout", optional=True)
        if not self._accepted.done():
            self.client._check_open()     # closed, or forked: nothing would resolve it here
        try:
            self._took(self._accepted.wait(timeout, what=f"submit of {self.id}"))
        except MiyaqError:
            self._failed()
            raise
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
        timeout = seconds(timeout, "timeout", optional=True)
        self.wait_accepted(timeout)
        answer = self.client.wait_result(self.task_id, timeout, node=self.node)
        return decode_outcome(self.task_id, answer)

    def status(self) -> dict[str, Any]:
        return self.client.status(self.task_id)

    def cancel(self) -> bool:
        return self.client.cancel(self.task_id)


__all__ = ["TaskHandle", "decode_outcome"]
