"""``TaskDef``: what ``@app.task`` returns -- a handler, typed as it was declared.

``TaskDef[P, R]`` is generic like ``Callable[P, R]``: ``P`` the handler's
parameters, ``R`` what it returns (a coroutine for an ``async def``
handler). A user's type checker so sees ``add(2, 3)`` as the handler's call,
checks the arguments of ``add.submit(2, 3)`` and ``add.call(2, 3)`` against
the handler's parameters, and types ``add.call(...)``,
``await add.call_async(...)`` and the ``result()`` of the handle that
``add.submit(...)`` gives (a ``TaskHandle[int]``) as its return value (for
an ``async def`` handler, what its coroutine returns). The typing is only
in the overloads below: one checks the handler's arguments when no task
option is given (PEP 612 allows no keyword parameter next to
``P.kwargs``); each of the others takes one task option by name (its type
checked) and the handler's arguments unchecked. Each comes in a pair, the
one for an ``async def`` handler first: the checker picks it by the
handler's return type. Keyword arguments named like a handler parameter
*and* a task option go to the option at run time, whatever the checker
says (:meth:`TaskDef.submit_with` keeps them apart). docs/python-api.md,
"Type checking".
"""
from __future__ import annotations

import functools
import inspect
from datetime import datetime
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Iterable, ParamSpec, Protocol, TypeAlias,
                    TypeVar, Unpack, overload)

from .client.client import TASK_OPTIONS, Client
from .client.wire import task_wire
from .client.options import TaskOptions
from .client.handle import TaskHandle
from .taskdef_aio import AioTaskCalls

if TYPE_CHECKING:
    from .aio import Client as AioClient

__all__ = ["SPLIT_OPTIONS", "SubmitOptions", "TaskApp", "TaskDef", "TaskOptions"]

#: Keyword arguments of ``TaskDef.submit``/``call`` taken as task options
#: rather than handler arguments: every task option but ``offset``, a common
#: name of a handler's own parameter (paging) that went to the handler before
#: it became an option (give it in ``@app.task`` or to ``submit_with``).
SPLIT_OPTIONS = (frozenset(TASK_OPTIONS) - {"offset"}) | {"id", "wait"}


class SubmitOptions(TaskOptions, total=False):
    """The keyword arguments of :meth:`TaskDef.submit_with`: the task
    options, ``id`` and ``wait`` (as :meth:`miyaq.Client.submit`'s)."""

    id: str | None
    wait: bool


class TaskApp(Protocol):
    """What a :class:`TaskDef` uses of the :class:`miyaq.App` that registered
    it (``tdef.app``): its clients. A protocol, so this module need not
    import ``miyaq.app`` (which imports it)."""

    @property
    def client(self) -> Client: ...

    @property
    def aio(self) -> AioClient: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


def runs_async(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` makes a coroutine for the worker's asyncio
    loop to run: an ``async def``, one under ``@staticmethod`` (which
    ``inspect.iscoroutinefunction`` does not see through), or an object
    whose ``__call__`` is an ``async def`` -- each as a ``functools.partial``
    too. Taken
    for a sync handler, its coroutine was the task's result: never run, the
    task failed on a result msgpack cannot pack."""
    while isinstance(fn, (staticmethod, functools.partial)):
        fn = fn.__func__ if isinstance(fn, staticmethod) else fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isroutine(fn) or inspect.isclass(fn):
        return False
    return inspect.iscoroutinefunction(getattr(type(fn), "__call__", None))


P = ParamSpec("P")
#: The handler's return type (covariant: a ``TaskDef[P, int]`` is a ``TaskDef[P, object]``).
R = TypeVar("R", covariant=True)
T = TypeVar("T")


class TaskDef(AioTaskCalls[P, R]):
    """A registered handler. Calling it runs it here; ``submit``/``call``
    send it to the queue (``submit_async``/``call_async`` from asyncio code:
    its base :class:`~miyaq.taskdef_aio.AioTaskCalls`). Keyword arguments
    named like a task option (queue, priority, countdown, eta, ttl, key,
    ...; not ``offset``: :data:`SPLIT_OPTIONS`) are options, the rest go to
    the handler; use :meth:`submit_with` when a handler argument has such a
    name."""

    def __init__(self, app: TaskApp, fn: Callable[P, R], name: str, options: dict[str, Any]) -> None:
        self.app: TaskApp = app
        self.fn: Callable[P, R] = fn
        #: An ``async def`` handler (a worker runs it on its asyncio loop);
        #: decided once here, not for every task a worker runs.
        self.is_async = runs_async(fn)
        self.name = name
        self.options = options
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<TaskDef {self.name} queue={self.options.get('queue', 'default')}>"

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        options = dict(self.options)
        handler_kwargs = {}
        for k, v in kwargs.items():
            if k in SPLIT_OPTIONS:
                options[k] = v
            else:
                handler_kwargs[k] = v
        return options, handler_kwargs

    @overload
    def submit(self: TaskDef[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> TaskHandle[T]: ...
    @overload
    def submit(self: TaskDef[P, T], *args: P.args, **kwargs: P.kwargs) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, queue: str | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, queue: str | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, priority: int | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, priority: int | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, eta: float | datetime | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, eta: float | datetime | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, countdown: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, countdown: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, ttl: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, ttl: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, max_retries: int | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, max_retries: int | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, backoff: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, backoff: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, backoff_max: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, backoff_max: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, timeout: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, timeout: float | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, key: str | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, key: str | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, replicas: int | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, replicas: int | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, at_most_once: bool | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, at_most_once: bool | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, id: str | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, id: str | None, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Awaits[T], *a: Any, wait: bool, **kw: Any) -> TaskHandle[T]: ...
    @overload
    def submit(self: _Returns[T], *a: Any, wait: bool, **kw: Any) -> TaskHandle[T]: ...
    def submit(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        options, handler_kwargs = self._split(kwargs)
        return self.app.client.submit(self.name, args, handler_kwargs, **options)

    @overload
    def submit_with(self: _Awaits[T], args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Unpack[SubmitOptions]) -> TaskHandle[T]: ...
    @overload
    def submit_with(self: _Returns[T], args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Unpack[SubmitOptions]) -> TaskHandle[T]: ...
    def submit_with(self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Unpack[SubmitOptions]) -> TaskHandle[Any]:
        merged = {**self.options, **options}
        return self.app.client.submit(self.name, args, kwargs, **merged)

    @overload
    def call(self: TaskDef[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    def call(self: TaskDef[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, timeout: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, timeout: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, queue: str | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, queue: str | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, priority: int | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, priority: int | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, eta: float | datetime | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, eta: float | datetime | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, countdown: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, countdown: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, ttl: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, ttl: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, max_retries: int | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, max_retries: int | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, backoff: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, backoff: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, backoff_max: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, backoff_max: float | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, key: str | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, key: str | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, replicas: int | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, replicas: int | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, at_most_once: bool | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, at_most_once: bool | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, id: str | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, id: str | None, **kw: Any) -> T: ...
    @overload
    def call(self: _Awaits[T], *a: Any, wait: bool, **kw: Any) -> T: ...
    @overload
    def call(self: _Returns[T], *a: Any, wait: bool, **kw: Any) -> T: ...
    def call(self, *args: Any, timeout: Any = 60.0, **kwargs: Any) -> Any:
        """Submit and wait for the result (:meth:`miyaq.Client.call`);
        ``timeout`` is the wait, the task's lease the decorator's (or the
        node's default): ``Client.call`` takes none, so the entry is built here."""
        options, handler_kwargs = self._split(kwargs)
        options.pop("wait", None)
        task_id = options.pop("id", None)
        return self.app.client._call_wire(task_wire(self.name, args, handler_kwargs, options), task_id, timeout)


#: The ``self`` of the overloads that type a result (``call``'s value, the
#: ``TaskHandle[T]`` of ``submit``): a TaskDef whose handler's value awaits
#: to ``T`` (an ``async def``; tried first), else one whose handler returns
#: ``T``. Defined at run time too, so ``typing.get_type_hints`` resolves the
#: overloads (``typing.get_overloads``).
_Awaits: TypeAlias = TaskDef[..., Awaitable[T]]
_Returns: TypeAlias = TaskDef[..., T]
