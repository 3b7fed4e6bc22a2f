"""A handle on one submitted task: its id, whether the node accepted it,
and its result."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Generic

from ..errors import MiyaqError, Timeout
from .arguments import seconds
from .futures import BlockingFuture, Future, Resolvable
from .wire import accepted_as, decode_outcome

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    from .client import Client

    #: What a task's handler returns, as its handle's ``result()`` gives it
    #: back; ``Any`` when not known (a handle from ``Client.submit``, a bare
    #: ``TaskHandle`` annotation): a PEP 696 default, so ``mypy --strict``
    #: asks for no type parameter. Only a checker reads ``typing_extensions``
    #: (its stubs ship with mypy and pyright); at run time a plain TypeVar.
    ResultT = TypeVar("ResultT", covariant=True, default=Any)
else:
    from typing import TypeVar

    ResultT = TypeVar("ResultT", covariant=True)


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

    def put_back(self, handles: list[Any]) -> None:
        """The handles a flush took whose outcome it did not report -- its
        wait timed out (or was interrupted) before they resolved: the next
        flush waits for them again (ahead of those added since). Those
        accepted, or whose failure a caller got, are let go. Before, a flush
        that timed out forgot them, and the next one returned at once, with
        no error, while they later failed."""
        back = [h for h in handles if not h.told and not h._accepted.ok()]
        if not back:
            return
        with self._lock:
            self._handles = back + self._handles
            if len(self._handles) > self._prune_at:
                self._prune()


class FlushTally:
    """What one flush's waits found: the submits that failed (their errors)
    and those not finished when its time ran out (their handles)."""

    __slots__ = ("failures", "unfinished")

    def __init__(self) -> None:
        self.failures: list[MiyaqError] = []
        self.unfinished: list[Any] = []

    def add(self, handle: Any, error: MiyaqError) -> None:
        """``handle.wait_accepted()`` raised ``error``."""
        accepted = handle._accepted
        if accepted.done():
            failure = accepted.error()
            if failure is not None:           # else accepted just after the wait gave up
                self.failures.append(failure)
        elif isinstance(error, Timeout):
            self.unfinished.append(handle)    # the flush's own timeout, not the submit's outcome
        else:
            self.failures.append(error)       # closed, forked...

    def error(self, uncounted: int, timeout: float) -> MiyaqError | None:
        """What the flush raises, if anything."""
        if self.unfinished:
            return flush_timeout(self.unfinished, self.failures, uncounted, timeout)
        if self.failures:
            return flush_error(self.failures, uncounted)
        return None


def flush_timeout(unfinished: list[Any], failures: list[MiyaqError], uncounted: int, timeout: float) -> Timeout:
    """The Timeout of a flush that ran out of time: how many submits were not
    finished (a later flush waits for them again) and, apart, how many
    really failed."""
    n = len(unfinished)
    message = (f"{n} submit{'' if n == 1 else 's'} not finished within {timeout:g}s (the first: "
               f"{unfinished[0].id}); a later flush() waits for {'it' if n == 1 else 'them'} again")
    failed = len(failures) + uncounted
    if failed:
        message += f"; {failed} submit{'' if failed == 1 else 's'} failed"
        if failures:
            message += f", the first: {failures[0].message}"
    return Timeout(message, unfinished=n, failed=failed)


def flush_error(failures: list[MiyaqError], uncounted: int = 0) -> MiyaqError:
    """The one error a flush raises when every submit it waited for finished:
    the first failure, saying how many more failed (``uncounted``: failed
    submits whose handles were let go, see :class:`Unflushed`)."""
    first = failures[0]
    more = len(failures) - 1 + uncounted
    if more:
        first.message = f"{first.message} (and {more} more submits failed)"
        first.args = (first.message,)
    return first


class TaskHandle(HandleBase, Generic[ResultT]):
    """One submitted task (docs/python-api.md, "TaskHandle"). Generic in what
    its handler returns: ``TaskDef.submit`` gives a ``TaskHandle[int]`` for a
    handler returning ``int``, ``Client.submit`` a ``TaskHandle`` (of
    ``Any``). That costs nothing at run time: ``Generic`` adds no ``__new__``
    nor ``__init__`` and no ``__dict__`` (its ``__slots__`` are empty)."""

    __slots__ = ()
    client: "Client"
    _accepted: "Future | BlockingFuture"

    def wait_accepted(self, timeout: float | None = None) -> "TaskHandle[ResultT]":
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

    def result(self, timeout: float | None = 60.0) -> ResultT:
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
