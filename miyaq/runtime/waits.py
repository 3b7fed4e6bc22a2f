"""Parking a greenlet until a descriptor is readable (:class:`FdWait`,
:class:`FdSet`), and waking a hub from other threads (:class:`ThreadWake`,
:class:`HubInbox`). Part of the runtime; take them from
:mod:`miyaq.runtime.green`."""
from __future__ import annotations

import logging
import os
import weakref
from collections import deque
from time import monotonic as _real_monotonic
from typing import Any, Callable, NoReturn

import gevent
import gevent.event
import gevent.hub

logger = logging.getLogger("miyaq.runtime.green")     # the facade's: one logger for the runtime's gevent parts


#: Forks this process is a copy of (counted by Python's fork hook): a waiter
#: made before a fork finds it changed in the copy (:func:`forked_since`).
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


def forks() -> int:
    """How many forks made this process (0 in one not forked: a worker, a
    node, a processes-pool child, which is a fresh interpreter); record it
    when making something tied to a descriptor or socket of this process."""
    return _forks


def forked_since(generation: int) -> bool:
    """This process is a forked copy of the one where :func:`forks` returned
    ``generation``: the descriptors and ZeroMQ sockets made there are the
    parent's, not to be touched here (libzmq is not fork-safe)."""
    return _forks != generation


def park_for_good() -> NoReturn:
    """Never return: the calling greenlet, in a forked copy of a process,
    was about to wait on or use a socket of the parent's (a gevent-pool
    worker's link, pulse or flusher, copied by a handler's ``os.fork()``).
    It waits on an event nobody sets; an exception thrown into it (a
    timeout) is swallowed and it waits again, a kill (``GreenletExit``)
    ends it. The copy ends as its forking handler does. Before (review43,
    2026-12-08) the copied link reader woke on the descriptor it shared
    with its worker and read the copied socket: ``ZMQError`` in a loop, at
    full CPU, in copies that outlived their worker."""
    while True:
        try:
            gevent.event.Event().wait()
        except gevent.GreenletExit:
            raise
        except BaseException:  # noqa: BLE001 - a copy's timeout or stop must not make it touch the socket
            pass


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
    called, or a timeout passes (what :class:`FdWait` and :class:`FdSet` share).

    The parked greenlet itself is what the watchers' callbacks switch to (no
    ``gevent.hub.Waiter`` made a wait: about 500 instructions of a lone
    message's wake-up); each wait has a turn, so a :meth:`wake` meant for
    one wait never ends a later one.

    In a forked copy of the process that made it a wait parks for good
    (:func:`park_for_good`), and so does one parked at the fork when it
    wakes: its descriptors are the parent's, shared with it."""

    def __init__(self) -> None:
        self._forks = _forks        # the process's (see forked_since)
        self._hub = gevent.get_hub()
        self._loop = self._hub.loop
        self._set_ones = _ready_in(self._hub)     # the hub's Wakeups set: one may run at once (see _park)
        self._parked: Any = None    # the greenlet waiting now
        self._turn = 0              # counts the waits: a wake() names the one it ends

    @property
    def waiting(self) -> bool:
        return self._parked is not None

    def _fire(self, value: bool) -> None:
        """A watcher's callback, in the hub: end the wait with ``value``."""
        parked = self._parked
        if parked is not None:
            self._parked = None
            parked.switch(value)

    def _ready(self) -> None:
        self._fire(True)

    def _fire_turn(self, turn: int) -> None:
        if turn == self._turn:
            self._fire(True)

    def _park(self, watchers: Any) -> bool:
        """Start ``watchers`` and park until one fires, :meth:`wake` is
        called, or a timer the caller started with :meth:`_fire` fires
        (True, True, or its value). A kill thrown into the greenlet ends the
        wait as it would a ``Waiter``'s; the watchers are stopped either way."""
        if self._forks != _forks:
            park_for_good()
        if self._parked is not None:
            raise RuntimeError("another greenlet already waits here")
        ready = self._ready
        for watcher in watchers:
            watcher.start(ready)
        self._turn += 1
        self._parked = gevent.getcurrent()
        try:
            set_ones = self._set_ones
            if set_ones.pending and self._parked is not self._hub:
                woken = set_ones.hand_off(self._hub)
            else:
                woken = self._hub.switch()
        finally:
            self._parked = None
            for watcher in watchers:
                watcher.stop()      # in a copy too: a descriptor shared with the parent stays readable
        if self._forks != _forks:
            park_for_good()     # parked at the fork, woken in the copy
        return bool(woken)

    def wake(self) -> None:
        """End the current wait (if any) as if a descriptor were readable."""
        if self._parked is not None:
            self._loop.run_callback(self._fire_turn, self._turn)


# A wait's timer is armed this much (seconds) before the wait's end, so the
# waits that follow toward the same end (a reader bounded by its next
# heartbeat) find it armed early enough and keep it: see FdWait.
_ARMED_EARLY = 0.001


class FdWait(_Parking):
    """Parks the calling greenlet until a file descriptor is readable.

    Cheaper than ``gevent.socket.wait_read`` or a ``Timeout`` per wait: the
    io watcher is made once and a wait makes nothing. A timed wait keeps the
    timer of the wait before it when that one is still armed to fire no
    later than this wait's end (a reader whose waits are all bounded by its
    next heartbeat arms one timer a heartbeat, not one a message: about
    3,000 instructions of a lone message's wake-up); such a
    timer may end a wait early, never late: the caller looks at its clock
    and waits again, as it must after any wake-up. One greenlet waits at a
    time. :meth:`wake` (from any greenlet of this hub, never from another
    thread) ends a wait early. Level-triggered: a descriptor that stays
    readable wakes every wait at once, so the caller must consume what made
    it readable. :meth:`close` when done (it stops the timer too).
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._io = self._loop.io(fd, 1)
        self._watchers = (self._io,)
        self._timer: Any = None     # the armed timer, kept across waits (unreferenced: the io watcher holds the loop)
        self._due = 0.0             # the latest it fires (time.monotonic)
        self._timed = False         # the current wait has a timeout (the timer ends no other)

    def _expire(self) -> None:
        self._timer = None
        if self._timed:
            self._fire(False)

    def wait(self, timeout: float | None = None) -> bool:
        """True when the descriptor became readable (or :meth:`wake` was
        called), False when ``timeout`` seconds passed first (or sooner:
        see the class)."""
        if timeout is None:
            self._timed = False
        else:
            self._timed = True
            due = _real_monotonic() + timeout
            if self._timer is None or self._due > due:
                self._arm(timeout, due)
        return self._park(self._watchers)

    def _arm(self, timeout: float, due: float) -> None:
        if self._timer is not None:
            self._timer.close()
        after = timeout - _ARMED_EARLY if timeout > 2 * _ARMED_EARLY else max(0.0, timeout)
        timer = self._timer = self._loop.timer(after, ref=False)
        timer.start(self._expire, update=True)
        # Counted from the loop's clock read just now (update=True: the clock
        # of the loop's last iteration may be seconds stale -- a process that
        # ran without yielding to the hub -- and a timer counted from it
        # fires at once, beside a descriptor already readable); read after
        # ``due`` was, so it fires no later than this plus a few microseconds.
        self._due = due - (timeout - after)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._io.close()


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
        timer = None
        if timeout is not None:
            # A timer of this wait's own, holding the loop: a set may have no descriptor.
            timer = self._loop.timer(max(0.0, timeout))
            timer.start(self._fire, False, update=True)     # from now, not the loop's last iteration (FdWait._arm)
        try:
            return self._park(list(self._watchers.values()))
        finally:
            if timer is not None:
                timer.close()


class _Ready:
    """One hub's wakeups (:class:`Wakeup`) set while their greenlet
    waited, in the order they were set: their greenlets run from a hub
    callback, or sooner, when a greenlet parks in :class:`FdWait` or
    :class:`FdSet` (it switches to the first of them instead of to the hub:
    :meth:`hand_off`)."""

    __slots__ = ("pending", "_loop", "_callback")

    def __init__(self, loop: Any) -> None:
        self.pending: deque[Wakeup] = deque()
        self._loop = loop
        self._callback: Any = None

    def add(self, wakeup: Wakeup) -> None:
        self.pending.append(wakeup)
        if self._callback is None:
            self._callback = self._loop.run_callback(self._run)

    def _run(self) -> None:
        """The hub's callback: switch to each greenlet set and still waiting."""
        self._callback = None
        pending = self.pending
        while pending:
            parked = pending.popleft()._parked
            if parked is not None:
                parked.switch()

    def hand_off(self, hub: Any) -> Any:
        """From a greenlet about to park (its watchers started): switch to
        the first greenlet set and still waiting, instead of to the hub; the
        others run from the hub's callback. Returns what this greenlet is
        switched back with."""
        pending = self.pending
        while pending:
            parked = pending.popleft()._parked
            if parked is not None:
                if not pending and self._callback is not None:
                    self._callback.stop()
                    self._callback = None
                return parked.switch()
        return hub.switch()


_readies: weakref.WeakKeyDictionary[Any, _Ready] = weakref.WeakKeyDictionary()


def _ready_in(hub: Any) -> _Ready:
    ready = _readies.get(hub)
    if ready is None:
        ready = _readies[hub] = _Ready(hub.loop)
    return ready


class Wakeup:
    """An event one greenlet waits for and others set: ``green.Event`` for a
    single waiter (a worker's idle runner), at a fraction of its cost.

    :meth:`wait` returns once :meth:`set` was called (at once if it was,
    until :meth:`clear`); a set while its greenlet waits makes it runnable,
    and it runs when the setter next waits in the hub -- at once if the
    setter parks in :class:`FdWait` or :class:`FdSet` (a socket's reader:
    it switches to the woken greenlet instead of to the hub, saving a hub
    callback), else from a hub callback, in the order of the sets. One
    greenlet waits at a time; from this hub's greenlets only (a thread
    uses :class:`ThreadWake`). A wait has no timeout."""

    __slots__ = ("_ready", "_flag", "_parked", "_hub")

    def __init__(self) -> None:
        self._hub = gevent.get_hub()
        self._ready = _ready_in(self._hub)
        self._flag = False
        self._parked: Any = None

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False

    def set(self) -> None:
        if self._flag:
            return
        self._flag = True
        if self._parked is not None:
            self._ready.add(self)

    def wait(self) -> None:
        while not self._flag:
            if self._parked is not None:
                raise RuntimeError("another greenlet already waits for this wakeup")
            self._parked = gevent.getcurrent()
            try:
                self._hub.switch()
            finally:
                self._parked = None


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
