"""What the asyncio client hands back: a submitted task's
:class:`TaskHandle` and a pull consumer's :class:`Received`, each a thin
set of coroutines over its :class:`~miyaq.aio.client.Client`
(docs/python-api.md, "asyncio: ``miyaq.aio``")."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic

from ..client import operations as ops
from ..client.arguments import seconds
from ..client.handle import HandleBase, ResultT
from ..client.wire import ReceivedTask, decode_outcome
from ..errors import MiyaqError
from .futures import AioFuture

if TYPE_CHECKING:
    from .client import Client


class TaskHandle(HandleBase, Generic[ResultT]):
    """One submitted task: ``id``, ``node``, ``duplicate_of``, ``accepted``,
    and coroutines ``wait_accepted()``, ``result()``, ``status()``, ``cancel()``.
    Generic in what its handler returns, as :class:`miyaq.TaskHandle`."""

    __slots__ = ()
    client: "Client"
    _accepted: AioFuture

    @property
    def task_id(self) -> str:
        """``duplicate_of or id``: final once ``wait_accepted()`` returned."""
        return self.duplicate_of or self.id

    async def wait_accepted(self, timeout: float | None = None) -> "TaskHandle[ResultT]":
        """Wait until a node stored the task; raises Busy, Unavailable, Timeout,
        InvalidField... if it could not be placed before its deadline."""
        timeout = seconds(timeout, "timeout", optional=True)
        if not self._accepted.done():
            self.client._io.check_loop()
        try:
            self._took(await self._accepted.wait(timeout, what=f"submit of {self.id}"))
        except MiyaqError:
            self._failed()
            raise
        return self

    async def result(self, timeout: float | None = 60.0) -> ResultT:
        """The handler's return value, or the exception it stands for."""
        timeout = seconds(timeout, "timeout", optional=True)
        await self.wait_accepted(timeout)
        answer = await self.client.wait_result(self.task_id, timeout, node=self.node)
        return decode_outcome(self.task_id, answer)

    async def status(self) -> dict[str, Any]:
        await self.wait_accepted(self.client.submit_timeout)
        return await self.client.status(self.task_id)

    async def cancel(self) -> bool:
        await self.wait_accepted(self.client.submit_timeout)
        return await self.client.cancel(self.task_id)


class Received(ReceivedTask):
    """A task taken by :meth:`Client.receive`: ``args``, ``kwargs``, then
    ``await ack(result)`` or ``await nack(error, retry=True)``; ``await
    touch()`` while the work runs past the task's ``timeout``."""

    #: The handler's positional and keyword arguments, as msgpack decoded them.
    args: list[Any]
    kwargs: dict[str, Any]

    def __init__(self, client: "Client", info: dict[str, Any]) -> None:
        super().__init__(info)
        self.client = client

    async def ack(self, result: Any = None) -> bool:
        return await self.client._run(ops.ack(self.id, self.attempt, result))

    async def touch(self) -> bool:
        """Extend the lease by the task's ``timeout`` from now; False if this
        attempt no longer holds the task (as :meth:`miyaq.Received.touch`)."""
        return await self.client._run(ops.touch(self.id, self.attempt))

    async def nack(self, error: str = "", *, retry: bool = True, delay: float | None = None) -> bool:
        return await self.client._run(ops.nack(self.id, self.attempt, error, retry, delay))
