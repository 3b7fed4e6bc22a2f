"""The keyword options of the clients and of ``@app.task``, as TypedDicts
for a user's type checker (``**options: Unpack[TaskOptions]``): a misspelt
option or a value of the wrong type is its error, not only a TypeError or
an InvalidField at run time. Declarations only; the clients check the
values themselves (docs/python-api.md, "Type checking")."""
from __future__ import annotations

from datetime import datetime
from typing import TypedDict

__all__ = ["CallOptions", "ClientOptions", "TaskOptions"]


class ClientOptions(TypedDict, total=False):
    """The tuning keywords of :class:`Client` and ``miyaq.aio.Client``
    (docs/configuration.md), for a type checker: what ``miyaq.App(...)``
    passes on to the clients it makes (a misspelt one is a TypeError only
    then, at the app's first submit). ``green`` is not one: the app decides
    it (``App.green``)."""

    window: int
    window_bytes: int
    submit_timeout: float
    ack_timeout: float
    request_timeout: float
    max_batch: int
    heartbeat_timeout: float


class CallOptions(TypedDict, total=False):
    """The task options but ``timeout`` -- the keyword arguments of
    :meth:`miyaq.Client.call`, whose own ``timeout`` is the wait for the result --
    for a type checker: a misspelt option or a value of the wrong type is
    its error, not only a TypeError or an InvalidField at run time. None
    leaves an option out (the node's default). Meanings and ranges:
    docs/python-api.md, "Submitting"."""

    queue: str | None
    priority: int | None
    eta: float | datetime | None
    countdown: float | None
    ttl: float | None
    max_retries: int | None
    backoff: float | None
    backoff_max: float | None
    key: str | None
    replicas: int | None
    at_most_once: bool | None
    offset: float | None


class TaskOptions(CallOptions, total=False):
    """Every task option (``miyaq.client.wire.TASK_OPTIONS``): the keyword arguments of
    :meth:`miyaq.Client.submit` and ``@app.task(...)``; ``timeout`` is the lease."""

    timeout: float | None
