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
from .client.wire import FOREIGN_OPTIONS, task_wire
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


def arguments_to_check(args: Any) -> tuple[Any, ...] | None:
    """``args`` that is not a list or tuple as the positional arguments the
    handler will be called with (the client sends ``list(args)``: a string
    is its characters, as ``fn(*"daily")`` makes them); None for an
    iterator, which the client reads once (left to it), or what is not
    iterable at all (the client's TypeError says so). Before review36
    (2026-12-07) any such ``args`` was left unchecked: ``args="daily"``
    for ``def report(kind)`` was sent as five arguments, and every tick of
    a schedule declared so failed in the worker."""
    try:
        if iter(args) is args:
            return None
    except TypeError:
        return None
    return tuple(args)


class _Shape:
    """A handler's parameters when they are all named ones (positional or
    keyword, keyword-only: no ``*args``, ``**kwargs`` nor positional-only),
    for :meth:`TaskDef._check` to tell a call it takes without
    ``Signature.bind`` (a tenth of its cost): Python's own rule, so never
    "takes" for a call it refuses; any doubt goes to ``bind``."""

    __slots__ = ("keywords", "given", "left")

    def __init__(self, params: list[inspect.Parameter]) -> None:
        positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        required_keywords = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
        #: Every parameter's name: what a keyword argument may be.
        self.keywords = frozenset(p.name for p in params)
        #: By the count of positional arguments (0 to all of them): the names they fill ...
        self.given = [frozenset(p.name for p in positional[:n]) for n in range(len(positional) + 1)]
        #: ... and the names still required of keywords then.
        self.left = [frozenset([*(p.name for p in positional[n:] if p.default is p.empty), *required_keywords])
                     for n in range(len(positional) + 1)]

    def takes(self, count: int, kwargs: dict[str, Any] | None) -> bool:
        """Whether the handler takes ``count`` positional arguments and ``kwargs``."""
        if count >= len(self.given):
            return False
        if not kwargs:
            return not self.left[count]
        keys = kwargs.keys()
        return keys <= self.keywords and keys.isdisjoint(self.given[count]) and self.left[count] <= keys


def _parameters(fn: Callable[..., Any]) -> tuple[inspect.Signature | None, _Shape | None]:
    """``fn``'s signature (None when it cannot be read: a builtin, some C
    callables), and its :class:`_Shape` when it has only named parameters."""
    try:
        # The function as it runs, not the one functools.wraps points at: a
        # decorator may pass arguments of its own (a session), and the
        # wrapped function's signature would refuse calls the wrapper takes.
        signature = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return None, None
    params = list(signature.parameters.values())
    if any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
        return signature, None
    return signature, _Shape(params)


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
        self._signature, self._shape = _parameters(fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<TaskDef {self.name} queue={self.options.get('queue', 'default')}>"

    def _split(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The task options and the handler's keyword arguments of a
        ``submit``/``call``, once :meth:`_check` found that the handler
        takes ``args`` and those keyword arguments."""
        options = dict(self.options)
        handler_kwargs = {}
        for k, v in kwargs.items():
            if k in SPLIT_OPTIONS:
                options[k] = v
            else:
                handler_kwargs[k] = v
        self._check(args, handler_kwargs, kwargs)
        return options, handler_kwargs

    def _check(self, args: Iterable[Any], kwargs: dict[str, Any] | None,
               given: dict[str, Any] | None = None) -> None:
        """TypeError, before anything is sent, when the handler cannot be
        called with ``args`` and ``kwargs`` (a missing or an extra argument,
        an unknown keyword): the worker would fail every attempt of the
        task with that TypeError, retried and then dead-lettered, as Celery
        checks at ``delay()``. A handler of named parameters costs a few
        comparisons (:class:`_Shape`), others ``Signature.bind``; a handler whose
        signature cannot be read (a builtin) is not checked. ``given``: the
        keywords of a ``submit``/``call``, options among them, so that a
        handler parameter named like an option (``key``) that went to the
        option is named as such."""
        given_args: tuple[Any, ...] | list[Any]
        if isinstance(args, (tuple, list)):
            given_args = args
        else:
            checked = arguments_to_check(args)    # a string: its characters, as they are sent
            if checked is None:
                return
            given_args = checked
        shape = self._shape
        if shape is not None and shape.takes(len(given_args), kwargs):
            return
        signature = self._signature
        if signature is None:
            return
        try:
            signature.bind(*given_args, **(kwargs or {}))
        except TypeError as exc:
            hints = [f"; '{k}' is not a miyaq option: {FOREIGN_OPTIONS[k]}" for k in (kwargs or {})
                     if k in FOREIGN_OPTIONS and k not in signature.parameters]
            hints += [f"; '{k}' was taken as the task option, not the handler's parameter: pass it with "
                      f"submit_with(args, kwargs, **options)" for k in (given or {})
                      if k in SPLIT_OPTIONS and k in signature.parameters]
            raise TypeError(f"task {self.name!r} not sent: its handler {getattr(self.fn, '__name__', 'fn')}"
                            f"{signature} cannot take these arguments ({exc}){''.join(hints[:3])}") from None

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
        options, handler_kwargs = self._split(args, kwargs)
        return self.app.client.submit(self.name, args, handler_kwargs, **options)

    @overload
    def submit_with(self: _Awaits[T], args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Unpack[SubmitOptions]) -> TaskHandle[T]: ...
    @overload
    def submit_with(self: _Returns[T], args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Unpack[SubmitOptions]) -> TaskHandle[T]: ...
    def submit_with(self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Unpack[SubmitOptions]) -> TaskHandle[Any]:
        self._check(args, kwargs)
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
        options, handler_kwargs = self._split(args, kwargs)
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
