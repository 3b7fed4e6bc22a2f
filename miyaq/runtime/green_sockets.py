"""pyzmq's gevent sockets (``zmq.green``), kept out of a forked copy's way:
the context a green :class:`~miyaq.runtime.sockets.SocketFactory` makes.

A ``zmq.green`` socket keeps an io watcher on its descriptor started for
its whole life, and its callback asks libzmq for the socket's state. In a
copy of the process made by ``os.fork()`` (a gevent-pool handler's) the
copied sockets share their descriptors with the parent's, and every libzmq
call on one fails or never returns (libzmq is not fork-safe: 4.3.5 spun in
``zmq_poll``, ``ZMQ_EVENTS`` and ``recv`` alike). So in a copy the watchers
of the sockets made before the fork are stopped, and a greenlet that would
wait on or use one parks for good (:func:`~miyaq.runtime.waits.park_for_good`),
as :class:`~miyaq.runtime.hub_socket.HubSocket`'s reader does: a worker's
link monitors (review43, 2026-12-08).
"""
from __future__ import annotations

import os
import weakref
from typing import Any

import zmq.green

from . import waits
from .waits import forked_since, forks, park_for_good

_live: weakref.WeakSet[Any] = weakref.WeakSet()

# Typed as Any: pyzmq's stubs describe the plain socket, not gevent's hooks (_wait_read).
_GreenSocket: Any = zmq.green.Socket
_GreenContext: Any = zmq.green.Context
_send = zmq.green.Socket.send
_recv = zmq.green.Socket.recv


class Socket(_GreenSocket):
    """A ``zmq.green`` socket that parks, rather than touches the socket,
    in a forked copy of the process that made it (see the module)."""

    _miyaq_forks = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._miyaq_forks = forks()
        _live.add(self)

    def _in_copy(self) -> None:
        if forked_since(self._miyaq_forks):
            park_for_good()

    def _wait_read(self) -> None:
        self._in_copy()
        super()._wait_read()
        self._in_copy()     # parked at the fork, its wait ended in the copy

    def _wait_write(self) -> None:
        self._in_copy()
        super()._wait_write()
        self._in_copy()

    # send and recv: the hot path of a gevent client's sockets, so the check is
    # inline (a call of _in_copy and super() cost 1 us a send and recv, 7%).
    def send(self, data: Any, flags: int = 0, copy: bool = True, track: bool = False, **kwargs: Any) -> Any:
        if self._miyaq_forks != waits._forks:
            park_for_good()
        return _send(self, data, flags, copy, track, **kwargs)

    def recv(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
        if self._miyaq_forks != waits._forks:
            park_for_good()
        return _recv(self, flags, copy, track)

    def close(self, linger: int | None = None) -> None:
        """In a forked copy only forgotten (closing posts to the parent's ZeroMQ threads)."""
        if forked_since(self._miyaq_forks):
            return
        super().close(linger)


class Context(_GreenContext):
    """A ``zmq.green`` context whose sockets are :class:`Socket`."""

    _socket_class = Socket


def _stop_watchers() -> None:
    """In a forked copy: stop the io watcher of every green socket made
    before the fork (its callback would ask libzmq for the copied socket's
    state whenever the shared descriptor is readable)."""
    for sock in list(_live):
        watcher = getattr(sock, "_state_event", None)
        if watcher is not None:
            try:
                watcher.stop()
            except Exception:  # noqa: BLE001 - a copy's cleanup must not fail its fork
                pass


os.register_at_fork(after_in_child=_stop_watchers)
