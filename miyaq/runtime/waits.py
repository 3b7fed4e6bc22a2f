"""Parking a greenlet until a descriptor is readable (:class:`FdWait`,
:class:`FdSet`), and waking a hub from other threads (:class:`ThreadWake`,
:class:`HubInbox`). Part of the runtime; take them from
:mod:`miyaq.runtime.green`."""
from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable

import gevent
import gevent.hub

logger = logging.getLogger("miyaq.runtime.green")     # the facade's: one logger for the runtime's gevent parts


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
