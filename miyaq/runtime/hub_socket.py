"""The socket the gevent hub drives: :class:`HubSocket`, a plain ZeroMQ
socket whose one reader waits in the hub on the socket's descriptor, and
:class:`HubPoller`, one reader's wait on several plain sockets.

Both read and send through :mod:`.messages` (one multipart message on a
plain socket: cheap sends, bounded reads); sockets are made by
:class:`miyaq.runtime.sockets.SocketFactory` (its ``hub_*`` methods).
"""
from __future__ import annotations

from typing import Any, overload

import zmq

from . import clock, green
from .waits import forked_since, forks, park_for_good
from .connections import use_family_of
from .messages import MessageSource, SenderAddress, has_message, recv_bounded, recv_frames, recv_with_user, send_frames

# As in .messages: libzmq's poll through the Cython backend, and the flags as plain ints.
_zmq_poll = zmq.backend.zmq_poll
_POLLIN = int(zmq.POLLIN)
_NOW = int(zmq.NOBLOCK)


#: A message's frames and the User-Id its connection authenticated as.
Message = tuple[list[bytes], str | None]


#: A timed :meth:`HubSocket.recv` may return None this long (seconds) before
#: its timeout: more than a wait's timer may end it early
#: (:class:`~miyaq.runtime.waits.FdWait` arms it 1 ms early), so a wait that
#: timed out is not followed by another of a millisecond.
EARLY_END = 0.002


class HubSocket:
    """A plain (not ``zmq.green``) ZeroMQ socket driven by the gevent hub.

    ``zmq.green`` pays for every operation in Python: a receive that has to
    wait raises ``Again``, makes an ``AsyncResult`` and a ``Timeout``, and
    every send and receive re-reads the socket's state to wake waiters. A
    socket with one reader loop that drains bursts needs none of that, so
    this one waits on the socket's descriptor only when ``ZMQ_EVENTS`` says
    nothing can be read, and never blocks anywhere else:

    * one greenlet receives (:meth:`recv` waits, :meth:`recv_nowait` does
      not); any greenlet of the hub sends, without blocking (:meth:`send`
      raises ``zmq.Again`` like ``send_multipart(..., NOBLOCK)``);
    * ZeroMQ's descriptor is edge-triggered and any operation on the socket
      may consume its signal, so a send while the reader waits re-checks
      ``ZMQ_EVENTS`` and wakes the reader if a message is there;
    * not thread-safe, like every ZeroMQ socket: the hub's thread only;
    * the process's own: in a forked copy of it (a gevent-pool handler's
      ``os.fork()``) a greenlet that would receive or send parks for good
      (:func:`~miyaq.runtime.waits.park_for_good`) without touching the
      socket, and :meth:`close` only forgets it -- libzmq is not fork-safe,
      and the copy's socket shares its descriptor with the parent's.
    """

    def __init__(self, sock: Any, users: bool = False, limits: tuple[int, int] | None = None,
                 routed: bool = False, sources: bool = False) -> None:
        self.sock = sock
        self._forks = forks()        # the process's: a forked copy must not touch the socket
        self._routed = routed       # a ROUTER: its first frame, the routing id, always has more
        #: With ``sources`` (and ``limits``): where the last message read came
        #: from (:class:`MessageSource`, filled by :func:`recv_bounded`), else None.
        self.source: MessageSource | None = MessageSource() if sources else None
        self._fd = green.FdWait(sock.getsockopt(zmq.FD))
        self._share = green.FairShare()
        self._users = users
        self._limits = limits
        if limits is not None:
            self._take = self._take_bounded
        else:
            self._take = self._take_with_user if users else self._take_plain

    def sender_address(self) -> SenderAddress:
        """The IP address the last message read came from, for a line about
        a refused message (:class:`SenderAddress`: read when the line is
        written, not before); unknown without ``sources``."""
        return SenderAddress(self.source.frame if self.source is not None else None)

    def readable(self) -> bool:
        """A message can be received now (:func:`has_message`)."""
        self._check_process()
        return has_message(self.sock)

    @overload
    def recv(self) -> Message: ...
    @overload
    def recv(self, timeout: float) -> Message | None: ...

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message and the User-Id its connection authenticated as
        (None without keys, or unless made with ``users``), waiting at most
        ``timeout`` seconds (None: for ever); None if none came in time --
        or up to ``EARLY_END`` before it: the wait's timer may end it that
        early, and waiting out the rest cost a second wake-up of the hub for
        each wait that timed out (before 2026-12-07: an idle worker's link
        woke 2.9 times a second, not 2).
        Raises ``zmq.ZMQError`` when the socket is closed, and, made with
        ``limits`` (frames, bytes), :class:`MessageRefused` for a message
        over them (read to its end and not kept: :func:`recv_bounded`)."""
        self._check_process()
        sock = self.sock
        if _zmq_poll([(sock, _POLLIN)], 0):          # has_message, without its call
            self._share.check()     # kept busy: yield now and then (green.FairShare)
            return self._take()
        deadline = None if timeout is None else clock.monotonic() + timeout
        left = timeout         # the first wait's: the clock was just read
        while True:
            if left is not None and left <= 0:
                return None
            woken = self._fd.wait(left)
            self._share.waited()
            if woken:
                # Woken: usually by a message, read without another state check.
                try:
                    return self._take()
                except zmq.Again:
                    pass    # a wake-up for something else: look again
            if _zmq_poll([(sock, _POLLIN)], 0):
                return self._take()
            if deadline is not None:
                left = deadline - clock.monotonic()
                if left <= EARLY_END:
                    return None

    def turn_over(self) -> bool:
        """This socket's reader has run a whole ``green.HUB_SLICE`` without
        waiting: it should end its burst (its next :meth:`recv` yields)."""
        return self._share.due()

    def recv_nowait(self) -> Message | None:
        """A message (as :meth:`recv`) if one is there now, else None."""
        self._check_process()
        if not _zmq_poll([(self.sock, _POLLIN)], 0):     # has_message, without its call
            return None
        return self._take()

    def _check_process(self) -> None:
        """Park for good in a forked copy of the process that made this socket."""
        if forked_since(self._forks):
            park_for_good()

    def _take_plain(self) -> Message:
        return recv_frames(self.sock, _NOW), None

    def _take_with_user(self) -> Message:
        return recv_with_user(self.sock, zmq.NOBLOCK)

    def _take_bounded(self) -> Message:
        assert self._limits is not None
        return recv_bounded(self.sock, self._limits[0], self._limits[1], zmq.NOBLOCK, with_user=self._users,
                            routed=self._routed, source=self.source)

    def bind(self, endpoint: str) -> None:
        """Listen on one more endpoint (a unix socket besides the TCP port):
        the socket's options, CURVE included, apply to it as to the first."""
        use_family_of(self.sock, endpoint)
        self.sock.bind(endpoint)
        self._recheck()

    def connect(self, endpoint: str) -> None:
        """Connect to one more endpoint (from any greenlet of the hub); raises
        ``zmq.ZMQError`` for an endpoint libzmq refuses (nothing changed)."""
        try:
            use_family_of(self.sock, endpoint)
            self.sock.connect(endpoint)
        finally:
            self._recheck()

    def disconnect(self, endpoint: str) -> None:
        """Stop following ``endpoint``; raises ``zmq.ZMQError`` if not connected to it."""
        try:
            self.sock.disconnect(endpoint)
        finally:
            self._recheck()

    def _recheck(self) -> None:
        """After an operation from another greenlet: it may have taken the
        descriptor's edge of a message that came meanwhile, so wake a waiting
        reader if one can be read."""
        if self._fd.waiting and _zmq_poll([(self.sock, _POLLIN)], 0):
            self._fd.wake()

    def send(self, frames: list[bytes]) -> None:
        """Send one message now or raise (``zmq.Again``: no room or, on a
        ROUTER, no such peer yet; ``ZMQError``: EHOSTUNREACH, closed...)."""
        self._check_process()
        try:
            send_frames(self.sock, frames)
        finally:
            self._recheck()

    def close(self, linger: int = 0) -> None:
        """Close the socket; a waiting reader wakes and its next call raises.
        In a forked copy only forgotten (closing would post to the parent's
        ZeroMQ threads, through descriptors the copy shares with it)."""
        if forked_since(self._forks):
            return
        self._fd.wake()
        self._fd.close()
        self.sock.close(linger=linger)


class HubPoller:
    """Which of several plain sockets have a message, for one reader in the
    hub: :meth:`poll` asks them all in one ``zmq_poll`` and, when none has
    one, waits on all their descriptors at once (:class:`~miyaq.runtime.green.FdSet`)
    for at most ``timeout`` milliseconds. The ``zmq.green`` poller it
    replaces made a ``Timeout``, a watcher per socket and an ``epoll_ctl``
    call per socket for every wait.

    As with :class:`HubSocket`, an operation on a socket from another
    greenlet (a send) may take the edge of its descriptor while the reader
    waits: call :meth:`recheck` after it. Sockets registered while the
    reader waits wake it, so the next wait includes them."""

    def __init__(self) -> None:
        self._forks = forks()        # as HubSocket's: a forked copy's poll parks for good
        self._socks: list[Any] = []
        self._fds = green.FdSet()
        self._woken = False       # wake() was called: the poll returns

    def register(self, sock: Any, flags: int = zmq.POLLIN) -> None:
        """Watch ``sock`` for messages (``flags`` must be ``POLLIN``)."""
        if flags != zmq.POLLIN:
            raise ValueError("a HubPoller watches for messages only (POLLIN)")
        if sock not in self._socks:
            self._socks.append(sock)
            self._fds.add(sock, sock.getsockopt(zmq.FD))
            self._fds.wake()

    def unregister(self, sock: Any) -> None:
        if sock in self._socks:
            self._socks.remove(sock)
            self._fds.discard(sock)

    def poll(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        """``[(socket, POLLIN), ...]`` for each socket with a message,
        waiting at most ``timeout`` milliseconds (None: for ever) for one, or
        until :meth:`wake` (then perhaps none). A :meth:`wake` while no poll
        waited ends the next poll at once: it is never lost. In a forked copy
        of the process that made the poller it parks for good (as
        :class:`HubSocket`'s reader)."""
        if forked_since(self._forks):
            park_for_good()
        ready = self._ready()
        if ready or timeout == 0 or self._woken:
            self._woken = False
            return ready
        deadline = None if timeout is None else clock.monotonic() + timeout / 1000.0
        while True:
            left = None if deadline is None else deadline - clock.monotonic()
            if left is not None and left <= 0:
                return self._ready()      # a last look: an edge may have been taken
            self._fds.wait(left)
            ready = self._ready()
            if ready or self._woken:
                self._woken = False
                return ready

    def wake(self) -> None:
        """End the reader's current :meth:`poll`, or its next one if it is
        not waiting now (it returns what is ready, perhaps nothing): its
        caller has something else to do -- a deadline sooner than the poll's
        timeout, sockets to close."""
        self._woken = True
        self._fds.wake()

    def recheck(self, sock: Any) -> None:
        """After an operation on ``sock`` from another greenlet: wake the
        waiting reader if ``sock`` has a message."""
        if forked_since(self._forks):
            park_for_good()
        if self._fds.waiting and has_message(sock):
            self._fds.wake()

    def _ready(self) -> list[tuple[Any, int]]:
        socks = self._socks
        if not socks:
            return []
        return [(sock, _POLLIN) for sock, _ in _zmq_poll([(sock, _POLLIN) for sock in socks], 0)]
