"""A minimal future set by the client's I/O loop and waited on by callers.

The event a waiter blocks on is created only when someone actually waits:
most pipelined submits are never waited on one by one, and creating a
threading.Event per submit was a measurable share of the producer's time.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from ..errors import MiyaqError, Timeout

_guard = threading.Lock()   # short critical sections only; never held while waiting


class Future:
    __slots__ = ("_make_event", "_event", "_done", "_value", "_error")

    def __init__(self, make_event: Callable[[], Any]) -> None:
        self._make_event = make_event
        self._event: Any = None
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
        with _guard:
            self._done = True
            event = self._event
        if event is not None:
            event.set()

    def done(self) -> bool:
        return self._done

    def wait(self, timeout: float | None, what: str = "request") -> Any:
        if not self._done:
            with _guard:
                if not self._done and self._event is None:
                    self._event = self._make_event()
                event = self._event
            if event is not None and not event.wait(timeout) and not self._done:
                raise Timeout(f"{what} did not complete within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._value
