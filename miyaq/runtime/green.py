"""The one module that imports gevent.

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
from collections import deque
from collections.abc import Iterator
from time import monotonic as _real_monotonic
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
    "AsyncResult", "Event", "FdWait", "call_later", "call_soon", "create_connection", "getaddrinfo", "Greenlet",
    "GreenletExit",
    "HubInbox", "Lock", "Pool", "Queue", "QueueEmpty", "SSLContext", "Semaphore", "T", "ThreadPool", "ThreadWake",
    "Timeout",
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


HUB_SLICE = 0.02
"""The longest (seconds) a reader loop kept busy by its socket runs before
it yields to the hub (:class:`FairShare`)."""
WAITED_READ = 0.0002
"""A socket read that took this long (seconds, real time) waited in the hub
for its peer: the other greenlets ran meanwhile (:meth:`FairShare.read`)."""


def slices(items: list[T], *, first: int, fewest: int, most: int,
           pause: Callable[[], None] | None = None) -> Iterator[list[T]]:
    """``items`` a slice at a time, calling ``pause`` (default:
    :func:`let_others_run`) between slices. Each slice is sized so that
    working through it takes about ``HUB_SLICE`` of real time, from how long
    the one before took (measured from the slice's yield to the caller's
    next request): between ``fewest`` and ``most`` items, ``first`` (at most
    ``most``) to begin with. Real time, not CPU: on a host whose cores other
    processes share, the slices are smaller, and the hub is held about as
    long as anywhere else. For a loop over a snapshot of the node's state
    (a handoff pass) that must not hold the hub for long."""
    wait = pause if pause is not None else let_others_run
    share = FairShare()
    size = min(first, most)
    start = 0
    while start < len(items):
        if start:
            wait()
            share.waited()
        chunk = items[start:start + size]
        yield chunk
        start += len(chunk)
        spent = share.spent()
        wanted = most if spent <= 0 else int(len(chunk) * HUB_SLICE / spent)
        size = max(min(fewest, most), min(most, wanted))


def let_others_run() -> None:
    """Yield to the hub for one loop iteration, I/O included (``sleep(0)``
    may resume this greenlet before the loop polls)."""
    gevent.sleep(0.0001)


class FairShare:
    """Keeps one reader loop from holding the hub while its socket never
    runs dry: :meth:`check`, between two bursts, yields for one loop
    iteration once the loop has run ``HUB_SLICE`` seconds (real time) since
    it last waited or yielded; :meth:`due` tells a burst to end early when
    that time is up; :meth:`waited` says it just waited (and so let the
    others run). A loop that waits between bursts never yields more than
    that.

    Without it, a node under a steady flood -- a REPLICATE stream, a
    producer's submits, a worker's results -- read burst after burst on one
    socket and left every other greenlet waiting: the other sockets'
    readers, the timers, and the housekeeping whose silence past ``STALL``
    means a frozen process (docs/architecture.md, "Runtime rules")."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = _real_monotonic()

    def waited(self) -> None:
        self._since = _real_monotonic()

    def due(self) -> bool:
        """The loop has had its slice: end the burst (its next :meth:`check` yields)."""
        return _real_monotonic() - self._since >= HUB_SLICE

    def spent(self) -> float:
        """Seconds (real time) since the loop last waited or yielded."""
        return _real_monotonic() - self._since

    def check(self) -> None:
        if self.due():
            let_others_run()
            self._since = _real_monotonic()

    def read(self, read: Callable[[Any], T], arg: Any) -> T:
        """``read(arg)``, a socket read, after a :meth:`check`. A read that
        took ``WAITED_READ`` or longer waited for its peer in the hub (the
        others ran meanwhile) and counts as a wait: a connection that waits
        for its client between requests then never yields on top of it (a
        yield costs a loop iteration, about a millisecond: 3% of a
        sequential HTTP client's time, before 2026-12-05)."""
        self.check()
        start = _real_monotonic()
        try:
            return read(arg)
        finally:
            now = _real_monotonic()
            if now - start >= WAITED_READ:
                self._since = now


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
    raise. Returns the timer (its ``close()`` cancels the call)."""
    timer = gevent.get_hub().loop.timer(seconds)
    timer.start(fn)
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


class ThreadWake:
    """Calls ``callback()`` in this hub when any thread calls :meth:`wake`.

    gevent's async watcher is the one thread-safe way into a hub. Create it
    in the hub's thread; ``wake()`` may be called from any thread, any number
    of times (calls coalesce). ``close()`` in the hub's thread.
    """

    def __init__(self, callback: Callable[[], Any]) -> None:
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(callback)

    def wake(self) -> None:
        self._watcher.send()

    def close(self) -> None:
        self._watcher.stop()
        self._watcher.close()


class _Parking:
    """One greenlet parked on io watchers until one fires, :meth:`wake` is
    called, or a timeout passes (what :class:`FdWait` and :class:`FdSet` share)."""

    def __init__(self) -> None:
        self._loop = gevent.get_hub().loop
        self._waiter: Any = None

    @property
    def waiting(self) -> bool:
        return self._waiter is not None

    def _park(self, watchers: Any, timeout: float | None) -> bool:
        waiter = self._waiter = gevent.hub.Waiter()
        for watcher in watchers:
            watcher.start(waiter.switch, True)
        timer = None
        if timeout is not None:
            timer = self._loop.timer(max(0.0, timeout))
            timer.start(waiter.switch, False)
        try:
            return bool(waiter.get())
        finally:
            self._waiter = None
            for watcher in watchers:
                watcher.stop()
            if timer is not None:
                timer.close()

    def wake(self) -> None:
        """End the current wait (if any) as if a descriptor were readable."""
        waiter = self._waiter
        if waiter is not None:
            self._loop.run_callback(waiter.switch, True)


class FdWait(_Parking):
    """Parks the calling greenlet until a file descriptor is readable.

    Cheaper than ``gevent.socket.wait_read`` or a ``Timeout`` per wait: the
    io watcher is made once, a wait costs a ``Waiter`` and, only with a
    timeout, a timer. One greenlet waits at a time. :meth:`wake` (from any
    greenlet of this hub, never from another thread) ends a wait early.
    Level-triggered: a descriptor that stays readable wakes every wait at
    once, so the caller must consume what made it readable.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._io = (self._loop.io(fd, 1),)

    def wait(self, timeout: float | None = None) -> bool:
        """True when the descriptor became readable (or :meth:`wake` was
        called), False when ``timeout`` seconds passed first."""
        return self._park(self._io, timeout)

    def close(self) -> None:
        self._io[0].close()


class FdSet(_Parking):
    """Parks the calling greenlet until any of several descriptors is
    readable, :meth:`wake` is called, or a timeout passes: :class:`FdWait`
    for a set. One io watcher per descriptor, made when it is added and
    started only while a greenlet waits, so a wait makes no watcher and no
    ``epoll_ctl`` call (``zmq.green``'s poller made one of each per socket
    per wait). One greenlet waits at a time; add and discard from the hub's
    thread, and a descriptor added during a wait joins the next one (wake
    the waiter to start it sooner)."""

    def __init__(self) -> None:
        super().__init__()
        self._watchers: dict[Any, Any] = {}

    def add(self, key: Any, fd: int) -> None:
        self._watchers[key] = self._loop.io(fd, 1)

    def discard(self, key: Any) -> None:
        watcher = self._watchers.pop(key, None)
        if watcher is not None:
            watcher.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """True when a descriptor became readable (or :meth:`wake` was
        called), False when ``timeout`` seconds passed first."""
        return self._park(list(self._watchers.values()), timeout)


class HubInbox:
    """Runs in this hub the calls any thread hands to :meth:`call`, in order.

    A deque and a :class:`ThreadWake`: other threads never touch the hub's
    objects themselves. Calls run as hub callbacks, so they must not block
    (set an event, an :class:`AsyncResult`, append to a list). One that
    raises is logged and the others still run. Create and close it in the
    hub's thread.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake = ThreadWake(self._drain)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self._calls.append((fn, args))
        self._wake.wake()

    def _drain(self) -> None:
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("%s: a call from another thread failed", self.name)

    def close(self) -> None:
        self._drain()
        self._wake.close()


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
