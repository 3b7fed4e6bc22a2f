"""A future the asyncio driver resolves and coroutines await.

Like the threaded client's :class:`miyaq.client.futures.Future`, the
``asyncio.Future`` a waiter awaits is created only when someone waits: most
pipelined submits are never awaited one by one. Resolved only in the event
loop's thread (the driver's); awaited by any number of coroutines of it.
"""
from __future__ import annotations

import asyncio
from typing import Any

from ..client.futures import Resolvable
from ..errors import Timeout


class AioFuture(Resolvable):
    __slots__ = ("_future",)

    def __init__(self) -> None:
        super().__init__()
        self._future: asyncio.Future[None] | None = None

    def _resolve(self) -> None:
        self._done = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self, timeout: float | None, what: str = "request") -> Any:
        """The value, once resolved; Timeout after ``timeout`` seconds (None: no limit).
        Cancelling the waiting coroutine does not cancel the call, and its
        ``CancelledError`` is always raised, also when the future was resolved
        in the same pass of the loop (the caller then decides what becomes of
        the value: a RECEIVE's task is given back). Before 2026-12-06 Python
        3.11's ``asyncio.wait_for`` returned the value then, swallowing the
        cancel: a consumer loop told to stop went on consuming."""
        if not self._done:
            if self._future is None:
                self._future = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._future)
            except TimeoutError:
                if not self._done:
                    raise Timeout(f"{what} did not complete within {timeout:g}s") from None
        return self.result()
