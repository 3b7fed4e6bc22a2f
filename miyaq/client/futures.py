"""Futures the client's I/O context resolves and callers wait on.

:class:`Resolvable` is what the core sees (``set``/``fail``); each flavour
adds how a caller waits. :class:`Future` creates the event a waiter blocks
on only when someone actually waits: most pipelined submits are never
waited on one by one, and creating a threading.Event per submit was a
measurable share of the producer's time. :class:`BlockingFuture` is for a
caller that waits at once (``submit(wait=True)``, requests): a lock taken
when it is made and released when it resolves -- no event, no shared guard.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

from ..errors import MiyaqError, Timeout

_guard = threading.Lock()   # short critical sections only; never held while waiting


def _new_guard() -> None:
    """A forked child gets a new guard: only the forking thread is copied,
    so a guard another thread of the parent held at the fork (its I/O thread
    resolving a submit) would stay locked in the child for ever, and the
    child's first new client hang on it."""
    global _guard
    _guard = threading.Lock()


os.register_at_fork(after_in_child=_new_guard)


class Resolvable:
    """Resolved once, by the I/O context: a value or an error."""

    __slots__ = ("_done", "_value", "_error")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: MiyaqError | None = None

    def set(self, value: Any) -> None:
        self._value = value
        self._resolve()

    def fail(self, error: MiyaqError) -> None:
        self._error = error
        self._resolve()

    def _resolve(self) -> None:
        self._done = True

    def done(self) -> bool:
        return self._done

    def ok(self) -> bool:
        """Resolved with a value (never waits)."""
        return self._done and self._error is None

    def error(self) -> MiyaqError | None:
        """The error of a future resolved with one, else None (never waits)."""
        return self._error

    def result(self) -> Any:
        """The value, or raises the error, of a resolved future."""
        if self._error is not None:
            raise self._error
        return self._value


class Future(Resolvable):
    __slots__ = ("_make_event", "_event")

    def __init__(self, make_event: Callable[[], Any]) -> None:
        # The fields set here rather than through Resolvable.__init__: one per
        # pipelined submit, where a call more is a measurable share.
        self._done = False
        self._value: Any = None
        self._error: MiyaqError | None = None
        self._make_event = make_event
        self._event: Any = None

    def _resolve(self) -> None:
        with _guard:
            self._done = True
            event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None, what: str = "request") -> Any:
        if not self._done:
            with _guard:
                if not self._done and self._event is None:
                    self._event = self._make_event()
                event = self._event
            if event is not None and not event.wait(timeout) and not self._done:
                raise Timeout(f"{what} did not complete within {timeout:g}s")
        return self.result()


class BlockingFuture(Resolvable):
    """For native threads whose caller waits at once: a plain lock, held from
    creation until the future resolves. Several waiters are woken one after
    the other (each releases the lock it got)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._lock.acquire()

    def _resolve(self) -> None:
        self._done = True
        self._lock.release()

    def wait(self, timeout: float | None, what: str = "request") -> Any:
        if not self._done:
            if self._lock.acquire(True, -1 if timeout is None else timeout):
                self._lock.release()
            elif not self._done:
                raise Timeout(f"{what} did not complete within {timeout:g}s")
        return self.result()
