"""``miyaq.App``: the registry of task handlers and the producer entry point.

.. code-block:: python

    import miyaq

    app = miyaq.App("tcp://127.0.0.1:7450")   # or App(): MIYAQ_CONNECT, a dev cluster here, 7450

    @app.task(name="emails.send", queue="emails", max_retries=5, timeout=30)
    def send(to, body): ...

    handle = send.submit("a@b", "hi", countdown=10)   # a handle, at once
    handle.wait_accepted()                            # the node stored it
    # send.call("a@b", "hi") submits and waits for a worker's return value
"""
from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, ParamSpec, TypeVar, Unpack, overload

from .client.arguments import endpoint_list
from .client.client import TASK_OPTIONS, Client, pack_args
from .client.option_values import check_option_values, encodable_text
from .client.options import ClientOptions
from .client.wire import unknown_options
from .devstate import default_connect
from .errors import ConfigError, InvalidField
from .protocol import fields as f
from .protocol.periodic import schedule_from_wire
from .protocol.taskspec import check_queue
from .taskdef import SPLIT_OPTIONS, SubmitOptions, TaskDef, TaskOptions, arguments_to_check

if TYPE_CHECKING:
    from .aio import Client as AioClient

__all__ = ["App", "SPLIT_OPTIONS", "SubmitOptions", "TaskDef", "TaskOptions", "check_task_options"]

SCHEDULE_OPTIONS = ("queue", "priority", "timeout", "max_retries", "ttl")
#: Options a schedule takes from ``@app.periodic`` only, never from the
#: task's own options: ``@app.task(ttl=60)`` is its submits' ttl, and its
#: schedules' ticks had none before ``ttl`` was a schedule option. Nor the
#: other way: a handler ``@app.periodic`` registers does not take them.
_OWN_SCHEDULE_OPTIONS = ("ttl",)
P = ParamSpec("P")
R = TypeVar("R")


def _refused_arguments(fn: Any, args: Iterable[Any], kwargs: dict[str, Any] | None) -> str | None:
    """Why ``fn`` cannot be called with ``args`` and ``kwargs`` (``bind``'s
    TypeError), or None: it can, or its signature cannot be read, or ``args``
    is an iterator (already read; a string or another iterable is checked
    as the characters or items it sends: :func:`~miyaq.taskdef.arguments_to_check`)."""
    if not callable(fn):
        return None
    given = args if isinstance(args, (list, tuple)) else arguments_to_check(args)   # a string: its characters
    if given is None:
        return None
    try:
        # The function as it runs (TaskDef._check's rule): a functools.wraps
        # decorator may pass an argument of its own (a session).
        signature = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*given, **(kwargs or {}))
    except TypeError as exc:
        return str(exc)
    return None


class App:
    """Handlers by name, and the producer side: ``app.client`` (threads or
    gevent) and, in asyncio code, ``app.aio`` (miyaq.aio). ``key`` and
    ``server_key`` (else ``MIYAQ_KEY``/``MIYAQ_SERVER_KEY``) are the CURVE
    certificates of both clients; other ``client_options`` go to them too."""

    def __init__(self, endpoints: str | Iterable[str] | None = None, *, key: str | None = None,
                 server_key: str | None = None, **client_options: Unpack[ClientOptions]) -> None:
        unknown = client_options.keys() - ClientOptions.__optional_keys__
        if "green" in unknown:
            raise ConfigError("App(green=...) is not an option: an app makes a gevent client where the gevent "
                              "worker runs it (App.green) and a threaded one elsewhere, as Client(green=None) does")
        if unknown:
            raise ConfigError(f"unknown client option(s) for App: {', '.join(sorted(unknown))} (options: "
                              f"{', '.join(sorted(ClientOptions.__optional_keys__))})")
        self.key = key
        self.server_key = server_key
        self._endpoints: list[str] | None = None
        if endpoints is not None:
            self._endpoints = endpoint_list(endpoints)      # ConfigError for a bad type, as Client(...)
        self.client_options = client_options
        self.tasks: dict[str, TaskDef[..., Any]] = {}
        self.schedules: dict[str, dict[str, Any]] = {}   # periodic specs, sent in READY
        # One client, or with green=True one per OS thread: a gevent client
        # belongs to its thread's hub (a worker's hub and its asyncio thread).
        self._clients: dict[int, Client] = {}
        # miyaq.aio clients, one per event loop (a client belongs to its loop).
        # A client holds its loop, so an entry outlives the loop: the clients
        # of loops that ended are let go when a new loop makes one (see aio).
        self._aio: dict[Any, AioClient] = {}
        self._aio_lock = threading.Lock()     # loops in several threads (the threads pool)
        self.green: bool | None = None   # the gevent worker sets True before handlers run

    @property
    def endpoints(self) -> list[str]:
        """The nodes this app's client and workers connect to: as given, else
        ``MIYAQ_CONNECT``, else the ``miyaq dev-cluster`` started in the current
        directory, else ``tcp://127.0.0.1:7450`` -- decided on first use."""
        if self._endpoints is None:
            self._endpoints, _ = default_connect()
        return self._endpoints

    @property
    def client(self) -> Client:
        key = _thread_key() if self.green else 0
        client = self._clients.get(key)
        if client is None or client.forked:          # a forked child makes its own
            client = self._clients[key] = Client(",".join(self.endpoints), green=self.green, key=self.key,
                                                 server_key=self.server_key, **self.client_options)
        return client

    @property
    def aio(self) -> "AioClient":
        """The app's ``miyaq.aio.Client`` for the running event loop, made on
        first use (one per loop); ConfigError outside a running loop."""
        import asyncio   # here: asyncio imports ssl, which a gevent worker imports only after patching
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigError("app.aio (submit_async, call_async) needs a running asyncio event loop") from None
        client = self._aio.get(loop)
        if client is None or client.closed:
            from .aio import Client as Aio
            with self._aio_lock:
                ended = [other for other in self._aio if other.is_closed()]
                let_go = [self._aio.pop(other) for other in ended]
                client = self._aio[loop] = Aio(",".join(self.endpoints), key=self.key, server_key=self.server_key,
                                               **self.client_options)
            for old in let_go:
                old.abandon()
        return client

    async def aclose(self) -> None:
        """Flush and close the running loop's ``app.aio`` client (if it was used)."""
        import asyncio
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        with self._aio_lock:
            client = self._aio.pop(loop, None)
        if client is not None:
            await client.close()

    @overload
    def task(self, fn: Callable[P, R], *, name: str | None = None,
             **options: Unpack[TaskOptions]) -> TaskDef[P, R]: ...
    @overload
    def task(self, fn: None = None, *, name: str | None = None,
             **options: Unpack[TaskOptions]) -> Callable[[Callable[P, R]], TaskDef[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
             **options: Any) -> Any:
        """Register a handler; a type checker sees the :class:`TaskDef` keep
        its parameters and return type (``TaskDef[P, R]``), and the options'
        names and types (:class:`TaskOptions`). Options are task defaults (queue, priority,
        max_retries, backoff, timeout, ttl, replicas, at_most_once, offset...).
        ConfigError naming the task and the option, here, for an unknown
        option, a value the node would refuse (:func:`check_task_options`),
        a name registered twice, or ``fn`` not a function."""
        unknown = set(options) - set(TASK_OPTIONS)
        if unknown:
            raise ConfigError(unknown_options(unknown))

        def register(fn: Callable[..., Any]) -> TaskDef[..., Any]:
            if not callable(fn):
                raise ConfigError(f"app.task registers a function, not {type(fn).__name__} (a name goes as "
                                  "name=...)")
            task_name = f"{fn.__module__}.{fn.__qualname__}" if name is None else name
            check_task_options(task_name, options)
            if task_name in self.tasks:
                raise ConfigError(f"a task named {task_name!r} is already registered")
            tdef = TaskDef(self, fn, task_name, options)
            self.tasks[task_name] = tdef
            return tdef

        return register(fn) if fn is not None else register

    @overload
    def periodic(self, fn: Callable[P, R], *, every: float | None = None, cron: str | None = None,
                 name: str | None = None, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                 **options: Any) -> TaskDef[P, R]: ...
    @overload
    def periodic(self, fn: None = None, *, every: float | None = None, cron: str | None = None,
                 name: str | None = None, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                 **options: Any) -> Callable[[Callable[P, R]], TaskDef[P, R]]: ...

    def periodic(self, fn: Callable[..., Any] | None = None, *, every: float | None = None,
                 cron: str | None = None, name: str | None = None, args: Iterable[Any] = (),
                 kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """Run a handler on a schedule: the leader node submits it once per
        tick, cluster-wide (docs/periodic.md). Give ``every`` (seconds, >= 0.1;
        ticks are its multiples since the epoch) or ``cron`` (5 fields, UTC).
        ``args``/``kwargs`` are passed to each call; options: queue, priority,
        timeout, max_retries (default: the task's own), and ``ttl`` (seconds,
        0.001 to 10 years; default none, and never the task's own ttl): a
        tick's task no worker started within ``ttl`` of its firing expires
        instead of waiting, so ticks do not pile up while no worker serves
        the queue. ``name`` (1-40 characters of A-Z a-z 0-9 _ . : -;
        default: the task's name) names the schedule, and the task when this
        registers the handler. Over an ``@app.task`` (or another
        ``@app.periodic`` with another name) it schedules that task. A bad
        schedule raises ``ConfigError`` here, at import time."""
        unknown = set(options) - set(SCHEDULE_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown periodic option(s): {', '.join(sorted(unknown))} "
                              f"(allowed: {', '.join(SCHEDULE_OPTIONS)})")

        def register(fn: Callable[..., Any]) -> TaskDef[..., Any]:
            existing = fn if isinstance(fn, TaskDef) else None
            task_name = existing.name if existing else name or f"{fn.__module__}.{fn.__qualname__}"
            merged = {**(existing.options if existing else {}), **options}
            wire = {k: merged[k] for k in SCHEDULE_OPTIONS
                    if k not in _OWN_SCHEDULE_OPTIONS and merged.get(k) is not None}
            wire.update({k: options[k] for k in _OWN_SCHEDULE_OPTIONS if options.get(k) is not None})
            wire.update(name=name or task_name, task=task_name, every=every, cron=cron,
                        body=pack_args(args, kwargs))
            try:
                schedule = schedule_from_wire(wire)
            except InvalidField as err:
                raise ConfigError(f"@app.periodic on {task_name}: {err.message}") from None
            if schedule.name in self.schedules:
                raise ConfigError(f"a periodic schedule named {schedule.name!r} is already registered")
            refused = _refused_arguments(existing.fn if existing else fn, args, kwargs)
            if refused:
                raise ConfigError(f"@app.periodic on {task_name}: its handler cannot take the schedule's args and "
                                  f"kwargs ({refused}): every tick would fail")
            # The handler it registers takes the schedule's task options, not its own
            # (before 2026-12-07 its ttl went too: every submit of the handler had it).
            task_options = {k: v for k, v in options.items() if k not in _OWN_SCHEDULE_OPTIONS}
            tdef = existing or self.task(fn, name=task_name, **task_options)
            self.schedules[schedule.name] = schedule.to_wire()
            return tdef

        return register(fn) if fn is not None else register

    def queues(self) -> list[str]:
        """Every queue a registered task or a periodic schedule names (default
        included if used): what ``miyaq worker`` consumes unless told. A
        schedule's ``queue`` may differ from its task's (``@app.periodic(queue=
        "reports")`` over an ``@app.task`` of ``default``); before 2026-12-07
        it was left out, and no worker of the app took its ticks."""
        named = {t.options.get("queue", "default") for t in self.tasks.values()}
        named.update(s.get("queue", "default") for s in self.schedules.values())
        return sorted(named) or ["default"]

    def unknown_task(self, name: Any, where: str) -> str:
        """The message of the ``UnknownTask`` failure a worker (``where``:
        "worker ID", "this worker's child") reports for a task ``name`` this
        app has no handler for: what the app has instead, most likely the
        one meant -- a task of a script run as ``__main__`` is named
        ``__main__.<function>`` there and ``<module>.<function>`` in the
        worker. At most five names, so a large app keeps it one line."""
        text = f"no handler named {name!r} in {where}"
        last = str(name).rpartition(".")[2]
        alike = sorted(n for n in self.tasks if n.rpartition(".")[2] == last)
        if alike:
            text += f"; its app has {', '.join(repr(n) for n in alike[:5])}"
            if str(name).startswith("__main__."):
                text += (" (a task of a script run as __main__ is named __main__.<function> there: give "
                         "@app.task a name=, or import the task from its module)")
            return text
        known = sorted(self.tasks)
        more = f" and {len(known) - 5} more" if len(known) > 5 else ""
        return text + (f"; its app's tasks: {', '.join(repr(n) for n in known[:5])}{more}" if known
                       else "; its app has no tasks")

    def close(self) -> None:
        """Flush and close the app's client (with ``green``: the calling
        thread's; each thread closes its own)."""
        client = self._clients.pop(_thread_key() if self.green else 0, None)
        if client is not None:
            client.close()



def check_task_options(task_name: Any, options: dict[str, Any]) -> None:
    """ConfigError naming the task and the option unless ``task_name`` is a
    string of 1 to 256 characters UTF-8 can encode and each of ``options``
    (None: the node's default) a value the node takes
    (:func:`~miyaq.client.option_values.check_option_values`; here an empty
    ``queue`` is refused too). Before 2026-12-05 such a task registered, and
    a queue that was a list made ``miyaq worker`` fail with a traceback at start."""
    if isinstance(task_name, str):
        label = repr(task_name) if len(task_name) <= 80 else f"{task_name[:60]!r}..."
    else:
        label = f"named {task_name!r}"
    try:
        f.string({"name": task_name}, "name", max_len=256)
        encodable_text(task_name, "name")
        wire = {k: v for k, v in options.items() if v is not None}
        if wire.get("queue") == "":
            check_queue("")
        eta = wire.get("eta")
        if eta is not None and hasattr(eta, "timestamp"):
            wire["eta"] = eta.timestamp()
        check_option_values(wire)
    except InvalidField as err:
        message = err.message.replace("field ", "option ", 1) if err.message.startswith("field ") else err.message
        raise ConfigError(f"@app.task {label}: {message}") from None


def _thread_key() -> int:
    """The OS thread's ident, also under gevent's patching (imported lazily:
    a producer that never runs in a worker never imports gevent)."""
    from .runtime.green import native_thread_ident
    return native_thread_ident()
