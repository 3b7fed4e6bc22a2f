"""A minimal future set by the client's I/O loop and waited on by callers."""
from __future__ import annotations

from typing import Any

from ..errors import MiyaqError, Timeout


class Future:
    __slots__ = ("_event", "_value", "_error")

    def __init__(self, event: Any) -> None:
        self._event = event
        self._value: Any = None
        self._error: MiyaqError | None = None

    def set(self, value: Any) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: MiyaqError) -> None:
        self._error = error
        self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None, what: str = "request") -> Any:
        if not self._event.wait(timeout):
            raise Timeout(f"{what} did not complete within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._value
