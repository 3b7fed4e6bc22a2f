"""A task a pull consumer took with :meth:`miyaq.Client.receive`, and its
answers to the node: ``ack``, ``touch``, ``nack`` (docs/python-api.md,
"Pull consumers: ``receive()`` and ``Received``")."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import operations as ops
from .wire import ReceivedTask

if TYPE_CHECKING:
    from .client import Client


class Received(ReceivedTask):
    """A task taken by :meth:`Client.receive`: ``args``, ``kwargs``, then
    ``ack(result)`` or ``nack(error, retry=True)``; ``touch()`` while the
    work runs past the task's ``timeout``."""

    #: The handler's positional and keyword arguments, as msgpack decoded them.
    args: list[Any]
    kwargs: dict[str, Any]

    def __init__(self, client: "Client", info: dict[str, Any]) -> None:
        super().__init__(info)
        self.client = client

    def ack(self, result: Any = None) -> bool:
        """Done, with ``result`` (msgpack-encoded: TypeError, nothing sent,
        if it cannot be) as the task's result. False if this attempt no
        longer holds the task (cancelled, expired, finished, its lease ran out)."""
        return ops.run(ops.ack(self.id, self.attempt, result), self.client._ask)

    def touch(self) -> bool:
        """Extend the lease by the task's ``timeout`` from now. False if this
        attempt no longer holds the task (its lease ran out, it was
        finished, cancelled or received by another): stop, the work is not
        yours any more. Needs a node of 2026-12-05 or later (an older one
        extends the lease but never answers: Timeout)."""
        return ops.run(ops.touch(self.id, self.attempt), self.client._ask)

    def nack(self, error: str = "", *, retry: bool = True, delay: float | None = None) -> bool:
        """Failed with ``error``: retried after ``delay`` seconds (else the
        task's backoff), or dead-lettered with ``retry=False``. False if this
        attempt was already given up on."""
        return ops.run(ops.nack(self.id, self.attempt, error, retry, delay), self.client._ask)
