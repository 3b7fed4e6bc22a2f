"""The runtime's face over gevent (with its parts :mod:`~.fairness` and
:mod:`~.waits`, whose names it gives too).

Everything else in miyaq takes its concurrency primitives from here (the way
kazoo takes them from its handler object): events, queues, locks, timeouts,
sleep, pools, the WSGI server and its TLS contexts, name resolution, the
hub's thread pool and thread-safe wake-ups. Greenlets are spawned through a
:class:`~miyaq.runtime.supervisor.Supervisor`, never with ``gevent.spawn``,
so none dies silently.
"""
from __future__ import annotations

import importlib
import logging
import select as _select
import signal
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import gevent
import gevent.event
import gevent.hub
import gevent.lock
import gevent.pool
import gevent.queue
import gevent.socket
import gevent.threadpool
from gevent import monkey

from .fairness import HUB_SLICE, WAITED_READ, FairShare, let_others_run, slices
from .waits import FdSet, FdWait, HubInbox, ThreadWake, Wakeup

_system_poll = monkey.get_original("select", "poll")

if TYPE_CHECKING:   # imported on first use at run time (see __getattr__ below)
    from gevent.pywsgi import Input as WSGIInput
    from gevent.pywsgi import WSGIHandler, WSGIServer
    from gevent.ssl import SSLContext

T = TypeVar("T")

logger = logging.getLogger(__name__)

Greenlet = gevent.Greenlet
GreenletExit = gevent.GreenletExit
Event = gevent.event.Event
AsyncResult = gevent.event.AsyncResult
Queue = gevent.queue.Queue
QueueEmpty = gevent.queue.Empty
Semaphore = gevent.lock.Semaphore
Lock = gevent.lock.Semaphore
Timeout = gevent.Timeout
Pool = gevent.pool.Pool
#: A pool of native threads whose results greenlets wait for cooperatively
#: (``pool.spawn(fn, *args)`` returns an :class:`AsyncResult`-like object).
ThreadPool = gevent.threadpool.ThreadPool
sleep = gevent.sleep
idle = gevent.idle
#: Name resolution that waits cooperatively (the hub's resolver), with the
#: signature of :func:`socket.getaddrinfo`.
getaddrinfo = gevent.socket.getaddrinfo
#: A TCP connection that waits cooperatively, with the signature of
#: :func:`socket.create_connection`.
create_connection = gevent.socket.create_connection
killall = gevent.killall
joinall = gevent.joinall

__all__ = [
    "HUB_SLICE", "WAITED_READ", "FairShare", "FdSet", "let_others_run",
    "AsyncResult", "Event", "FdWait", "call_later", "call_soon", "create_connection", "getaddrinfo", "Greenlet",
    "GreenletExit",
    "HubInbox", "Lock", "Pool", "Queue", "QueueEmpty", "SSLContext", "Semaphore", "T", "ThreadPool", "ThreadWake",
    "Timeout", "Wakeup",
    "WSGIHandler", "WSGIInput", "WSGIServer", "current", "destroy_hub", "hub_running", "idle", "is_patched",
    "joinall", "killall", "log_hub_errors", "monkey_patch", "native_lock", "native_thread_ident", "on_signal",
    "peer_closed", "raise_in_main", "run_in_thread", "sleep", "slices",
    "start_native_thread",
]


#: On first use (see ``__getattr__``): the WSGI server, its handler and request
#: body stream (gevent's pywsgi), and ``SSLContext``, TLS contexts whose
#: sockets wait cooperatively (give one to the WSGI server).
_LAZY = {"WSGIServer": ("gevent.pywsgi", "WSGIServer"), "WSGIHandler": ("gevent.pywsgi", "WSGIHandler"),
         "WSGIInput": ("gevent.pywsgi", "Input"), "SSLContext": ("gevent.ssl", "SSLContext")}


def __getattr__(name: str) -> Any:
    """The names of ``_LAZY`` are imported on first use: gevent's pywsgi and
    ssl modules import ``ssl`` (pywsgi through ``http.client``), which a gevent
    worker must import only after it monkey-patched the standard library."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def current() -> Any:
    """The running greenlet (the hub's main greenlet outside any spawned one)."""
    return gevent.getcurrent()


def hub_running() -> bool:
    """True when called from a greenlet of a hub that exists (never creates one)."""
    try:
        from gevent._hub_local import get_hub_if_exists
    except ImportError:  # pragma: no cover - other gevent versions
        return True
    hub = get_hub_if_exists()
    return hub is not None and gevent.getcurrent() is not hub


def call_soon(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn(*args)`` from the hub at its next loop iteration, while every
    greenlet is suspended (so ``fn`` sees a consistent state and may throw
    into one). ``fn`` must not block or raise."""
    gevent.get_hub().loop.run_callback(fn, *args)


def raise_in_main(exc: BaseException) -> None:
    """Raise ``exc`` -- a ``KeyboardInterrupt`` or ``SystemExit`` that landed
    in a greenlet which must go on -- in the main greenlet instead, from the
    hub at its next loop iteration (as gevent does with one raised in the
    hub). Python raises a signal's exception in whatever greenlet of the
    main thread runs at that moment: a Ctrl-C meant for the program must not
    end a library's loop that happened to be running."""
    hub = gevent.get_hub()
    hub.loop.run_callback(hub.parent.throw, exc)


def call_later(seconds: float, fn: Callable[[], Any]) -> Any:
    """Call ``fn()`` from the hub in ``seconds``; ``fn`` must not block or
    raise. Returns the timer (its ``close()`` cancels the call). Counted
    from now, not from the loop's last iteration (which may be long ago)."""
    timer = gevent.get_hub().loop.timer(seconds)
    timer.start(fn, update=True)
    return timer


def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (fsync, a C library) in the hub's thread pool and
    wait for it without blocking other greenlets. Exceptions propagate.
    Called from the hub's own greenlet (a callback, which must not wait), it
    runs inline."""
    hub = gevent.get_hub()
    if gevent.getcurrent() is hub:
        return fn(*args)
    return hub.threadpool.apply(fn, args)


def on_signal(signum: signal.Signals | int, handler: Callable[[], Any]) -> Any:
    """Call ``handler()`` in the hub when the process gets ``signum`` (must not block:
    spawn through a supervisor for longer work)."""
    return gevent.signal_handler(signum, handler)


HUB_ERRORS_BURST = 5
"""At most this many hub errors are logged a minute (:func:`log_hub_errors`)."""


def log_hub_errors() -> None:
    """Send what this thread's hub would print to stderr -- an exception a
    hub callback raised, or one that ended a greenlet no supervisor watches
    (an application's own, in a gevent worker) -- to the log instead: one
    ERROR record ``miyaq.hub`` with its traceback, at most
    :data:`HUB_ERRORS_BURST` a minute, the count of those left out told
    with the next. gevent writes them to stderr as they come, outside the
    log's format and without bound. For miyaq's own processes (node,
    worker); an application's process that only uses the client keeps
    gevent's default. Errors that end the loop (``SystemExit``,
    ``KeyboardInterrupt``) are still raised in the main greenlet, as
    gevent does after reporting them."""
    from miyaq.logs import LogLimiter
    hub = gevent.get_hub()
    limiter = LogLimiter(logging.getLogger("miyaq.hub"), burst=HUB_ERRORS_BURST, per=60.0)
    print_to_stderr = hub.print_exception

    def log_exception(context: Any, kind: Any, value: Any, tb: Any) -> None:
        # Called by gevent's Hub.handle_error, which must not raise.
        try:
            if context is None:
                where = "the event loop"
            elif isinstance(context, str):
                where = context
            else:
                where = hub.format_context(context)
            name = getattr(kind, "__name__", "an exception")
            exc_info = (kind, value, tb) if value is not None else None
            limiter.log(logging.ERROR, "hub error", "%s failed with %s", where, name, exc_info=exc_info)
        except Exception:
            print_to_stderr(context, kind, value, tb)

    hub.print_exception = log_exception


def destroy_hub() -> None:
    """Destroy this thread's hub and its event loop: the last step of a native
    thread that ran a hub of its own (a node in a thread, in tests)."""
    gevent.get_hub().destroy(destroy_loop=True)


_native_allocate_lock: Callable[[], Any] | None = None


def native_lock() -> Any:
    """A lock of the operating system's threads (``threading.Lock`` is a
    greenlet lock once gevent patched it): for state shared with native threads.
    The original constructor is looked up once (a worker makes a lock per task)."""
    global _native_allocate_lock
    if _native_allocate_lock is None:
        _native_allocate_lock = monkey.get_original("_thread", "allocate_lock")
    return _native_allocate_lock()


def is_patched(module: str = "threading") -> bool:
    """True if gevent has monkey-patched ``module`` in this process."""
    return bool(monkey.is_module_patched(module))


def monkey_patch() -> None:
    """Patch the standard library so blocking I/O yields to other greenlets.
    Only safe before the modules it patches are imported by application code."""
    monkey.patch_all()


def peer_closed(fd: int) -> bool:
    """The other end of a connected socket closed or reset it (Linux's
    ``POLLRDHUP``, ``POLLHUP``, ``POLLERR``), asked without waiting and
    without reading: data the peer sent before closing does not hide its
    close, TLS records included. The system's ``poll`` even where gevent
    patched ``select`` (its ``poll`` knows no ``POLLRDHUP``)."""
    poller = _system_poll()
    poller.register(fd, _select.POLLRDHUP)
    events = poller.poll(0)
    gone = _select.POLLRDHUP | _select.POLLHUP | _select.POLLERR | _select.POLLNVAL
    return any(mask & gone for _, mask in events)


def start_native_thread(fn: Callable[[], Any]) -> int:
    """Start ``fn()`` in a real OS thread -- also when gevent has patched
    ``threading`` (then ``threading.Thread`` would make a greenlet). For work
    that must go on while a handler holds the hub (heartbeats) or that runs
    its own loop (asyncio). The thread must not touch this hub's objects: it
    reaches the hub only through a :class:`ThreadWake`. Returns its ident."""
    start = monkey.get_original("_thread", "start_new_thread")
    return int(start(fn, ()))


def native_thread_ident() -> int:
    """The OS thread's ident (the patched ``threading.get_ident`` names greenlets)."""
    return int(monkey.get_original("_thread", "get_ident")())
