"""Heartbeats from a native thread, so a CPU-bound handler that keeps the
gevent hub busy does not make the node declare the worker lost.

The thread has its own plain-pyzmq DEALER per node (from a non-green
:class:`~miyaq.runtime.sockets.SocketFactory`) and sends
``HEARTBEAT {"worker": id, "side": true}``; the node credits it to the worker
with that id. It never touches the worker's greenlet sockets. It is a real
OS thread even when gevent has patched ``threading``; it sleeps in a ZeroMQ
poll on an inproc socket, which is also how :meth:`Pulse.stop` wakes it.

The nodes it beats to follow the worker's links: :meth:`Pulse.add` and
:meth:`Pulse.remove` (called in the hub) each assign a new list, which the
thread reads at its next beat, opening a socket for a node added and
closing the one of a node removed (its sockets are its own: only the
thread touches them). A socket that cannot be made -- the process is out
of file descriptors (its handlers hold them?) -- is logged (a line a
minute) and tried again at the next beat; the thread beats on to the
nodes it has sockets for (before 2026-12-06 one such failure ended the
thread for good).

The thread also watches the hub: :meth:`Pulse.hub_runs` (called by the
worker's watchdog at each look, at least every
:data:`~miyaq.worker.config.HUB_TICK`) marks that it ran.
One that has not run for :data:`~miyaq.worker.config.HUB_STALL_WARN`
seconds is held by a handler that never yields (CPU work in the gevent
pool, a C call such as sqlite3's wait for a lock): the thread says so at WARNING, once for each such stall, naming the
tasks running, and again at INFO once the hub runs. It beats on meanwhile
-- the worker stays registered -- and stops nothing (before 2026-12-06
nothing was logged: such a worker held its tasks and ignored SIGTERM
without a word).
It watches the worker's asyncio loop the same way, when it has one
(:attr:`Pulse.loop_watch`, :mod:`miyaq.worker.loop_watch`).
"""
from __future__ import annotations

import errno
import logging
import time
import uuid
from typing import Callable

from ..logs import LogLimiter
from ..protocol import codec
from ..protocol import commands as c
from ..runtime import green
from ..runtime.open_files import open_files_hint, room_for
from ..runtime.sockets import SocketFactory, SocketSecurity, heartbeat_options, zmq
from .config import HUB_STALL_WARN, HUB_TICK, PULSE_SNDHWM
from .loop_watch import LoopWatch, StallWatch

logger = logging.getLogger(__name__)
_log = LogLimiter(logger, burst=1)     # a socket that cannot be made, tried again each beat: a line a minute

SOCKET_FILES = 4
"""File descriptors a heartbeat socket may need at once (its mailbox, the
TCP connection, libzmq's own), with room to spare."""

STOP_WAIT = 2.0     # seconds stop() waits for the thread to close its sockets


class Pulse:
    """``running()`` names the tasks running (for the stalled-hub warning):
    called in the thread while the hub is held, it must only read."""

    def __init__(self, wid: str, endpoints: list[str], interval: float,
                 security: SocketSecurity | None = None, running: Callable[[], list[str]] | None = None,
                 node_timeout: float | None = None) -> None:
        """``node_timeout`` (the worker's ``--node-timeout``): ZMTP heartbeats
        on each socket to a node, as on the worker's link: a connection the
        node leaves silent that long is dropped, and a connect attempt given
        up after it (:meth:`~miyaq.runtime.sockets.SocketFactory.dealer`), so
        the beats cross again within seconds of a partition's heal rather than
        at TCP's next retransmission (docs/operations.md, "After a partition
        heals"). None: no heartbeats (the kernel's timeouts)."""
        self.wid = wid
        self.running = running
        #: The (interval, timeout) ms of each socket's ZMTP heartbeats (None: none).
        self.heartbeat_ms = heartbeat_options(node_timeout) if node_timeout is not None else None
        # When the hub last ran (real time: a test's clock.advance is no stall); set by hub_runs(),
        # None while nothing says so (not started, or the worker stops): not watched.
        self.hub_seen: float | None = None
        self.stall = StallWatch()       # the hub's
        self._last_look = time.monotonic()         # the thread's own last look
        # The worker's asyncio loop, looked at with the hub (set before start(); None: no loop).
        self.loop_watch: LoopWatch | None = None
        self.endpoints = list(endpoints)
        self.interval = interval
        self.beats = 0
        self.sockets = 0        # the thread's sockets to nodes (set by the thread; for tests and status)
        # With keys, the same key as the worker's link: the node counts a side
        # heartbeat only from the key that registered the worker.
        self.factory = SocketFactory(green=False, security=security)
        self._control = f"inproc://miyaq-pulse-{uuid.uuid4().hex}"
        self._exited = green.Event()
        self._wake: green.ThreadWake | None = None
        self._started = False

    def start(self) -> None:
        self._wake = green.ThreadWake(self._exited.set)
        self._started = True
        green.start_native_thread(self._run)

    def hub_runs(self, running: bool) -> None:
        """In the hub: True, it runs now (the worker's watchdog says so at
        each of its looks, at least every ``HUB_TICK``); False, no one will
        say so any more (the worker stops: not watched)."""
        self.hub_seen = time.monotonic() if running else None

    def add(self, endpoint: str) -> None:
        """Beat to one more node. A new list is assigned, never one the
        thread reads changed in place: it picks it up at its next beat."""
        self.endpoints = [*self.endpoints, endpoint]

    def remove(self, endpoint: str) -> None:
        """Beat no more to ``endpoint`` (its socket is closed by the thread,
        at its next beat). As :meth:`add`: a new list is assigned."""
        self.endpoints = [e for e in self.endpoints if e != endpoint]

    def stop(self) -> None:
        """Wake the thread, wait (cooperatively, bounded) for it to close its
        sockets, then close the context. Idempotent."""
        if self._started:
            self._started = False
            sock = self.factory.pair(connect=self._control)
            try:
                sock.send(b"stop", zmq.NOBLOCK)
            except zmq.Again:
                pass
            sock.close(linger=0)
            if not self._exited.wait(STOP_WAIT):
                logger.warning("worker %s: heartbeat thread did not stop within %.0fs", self.wid, STOP_WAIT)
            if self._wake is not None:
                self._wake.close()
        self.factory.close()

    def _run(self) -> None:
        control = self.factory.pair(bind=self._control)
        socks: dict[str, zmq.Socket] = {}
        followed: list[str] | None = None      # the list of endpoints ``socks`` was made for
        frames = codec.encode(c.HEARTBEAT, {"worker": self.wid, "side": True})
        interval_ms = max(1, int(self.interval * 1000))
        try:
            while not control.poll(interval_ms):
                endpoints = self.endpoints      # one read: add() and remove() assign a new list
                if endpoints is not followed:
                    if self._follow(socks, endpoints):
                        followed = endpoints    # else the missing sockets are tried again next beat
                    self.sockets = len(socks)
                for sock in socks.values():
                    try:
                        sock.send_multipart(frames, zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                self.beats += 1
                self._watch_hub()
        except Exception:
            logger.exception("worker %s: the heartbeat thread failed; a handler that holds the CPU may now "
                             "get this worker declared lost", self.wid)
        finally:
            for sock in socks.values():
                sock.close(linger=0)
            control.close(linger=0)
            if self._wake is not None:
                self._wake.wake()

    def _watch_hub(self) -> None:
        """In the thread, at each beat: warn once if the hub has not run for
        :data:`HUB_STALL_WARN` seconds, and say when it runs again. Not after
        a pause of the thread's own (SIGSTOP, a VM paused: the whole process
        stood still, the hub's tick is late with no handler to blame)."""
        seen = self.hub_seen
        now = time.monotonic()
        paused = now - self._last_look > self.interval + HUB_STALL_WARN     # the whole process stood still
        self._last_look = now
        if self.loop_watch is not None and not paused:
            self.loop_watch.look(now)
        if seen is None or paused:
            return
        said = self.stall.look(seen, now, HUB_STALL_WARN + HUB_TICK)
        if said is None:
            return
        stalled, seconds = said
        if not stalled:
            logger.info("worker %s: the hub runs again, after %.0fs held by a handler", self.wid, seconds)
            return
        try:
            running = ", ".join(self.running()) if self.running is not None else ""
        except Exception:   # noqa: BLE001 - the hub may change what it reads as it resumes
            running = ""
        logger.warning("worker %s: its hub has not run for %.0fs: a handler holds it without yielding (CPU "
                       "work in the gevent pool, or a C call gevent cannot make yield -- sqlite3 or another C "
                       "database driver, waiting for a lock a suspended handler holds?; running: %s). "
                       "Heartbeats go on, but no other handler, "
                       "result, cancel, timeout or stop signal is handled until it yields; run such code in "
                       "the threads or processes pool", self.wid, seconds, running or "none known")

    def _follow(self, socks: dict[str, zmq.Socket], endpoints: list[str]) -> bool:
        """In the thread: a socket for each of ``endpoints`` and no other
        (a node's endpoint named twice gets one). False if some could not be
        made (logged): the caller tries again at the next beat."""
        wanted = set(endpoints)
        for endpoint in [e for e in socks if e not in wanted]:
            socks.pop(endpoint).close(linger=0)
        complete = True
        for endpoint in endpoints:
            if endpoint not in socks:
                try:
                    if not room_for(SOCKET_FILES):
                        # Asked first: a socket libzmq fails to make halfway leaves a
                        # half-built object whose finalizer prints a traceback.
                        raise zmq.ZMQError(errno.EMFILE)
                    # immediate: never queue beats for a node that is not there
                    socks[endpoint] = self.factory.dealer(endpoint, immediate=True, sndhwm=PULSE_SNDHWM,
                                                          heartbeat_ms=self.heartbeat_ms)
                except zmq.ZMQError as exc:
                    complete = False
                    _log.warning("socket", "worker %s: the heartbeat thread cannot open a socket to node %s: %s%s; "
                                 "trying again every %gs (meanwhile a handler that holds the CPU may get this "
                                 "worker declared lost)", self.wid, endpoint, exc, open_files_hint(exc), self.interval)
        return complete
