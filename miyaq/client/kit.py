"""The one place the client knows whether it runs on threads or greenlets.

:class:`ThreadKit` runs the client's I/O loop in a native thread with plain
pyzmq; :class:`GeventKit` runs it as a greenlet with ``zmq.green`` (used in
worker processes, where handlers are greenlets). Everything else in the
client takes its primitives from a kit (the way kazoo takes them from its
handler), so both run the same code.
"""
from __future__ import annotations

import threading
from types import ModuleType
from typing import Any, Callable

from .futures import BlockingFuture, Future


class ThreadKit:
    name = "thread"
    flavour = "plain"   # of the SocketFactory that makes its sockets

    def __init__(self) -> None:
        import zmq

        # A client is being made: its I/O loop imports the runtime's sockets anyway.
        from ..runtime.messages import recv_frames, send_frames
        self.zmq: ModuleType = zmq
        self._send_frames = send_frames
        self._recv_frames = recv_frames
        self._noblock = int(zmq.NOBLOCK)

    def spawn(self, fn: Callable[[], Any], name: str) -> Any:
        thread = threading.Thread(target=fn, name=name, daemon=True)
        thread.start()
        return thread

    def event(self) -> Any:
        return threading.Event()

    @staticmethod
    def waiter() -> Any:
        """A future for a caller that waits on it at once."""
        return BlockingFuture()

    def lock(self) -> Any:
        return threading.Lock()

    def send(self, sock: Any, frames: list[bytes]) -> None:
        """One message now, or ``zmq.Again`` (plain pyzmq: frame by frame, cheaply)."""
        self._send_frames(sock, frames)

    def recv(self, sock: Any) -> list[bytes]:
        """The next message, or ``zmq.Again`` (plain pyzmq: frame by frame, cheaply)."""
        return self._recv_frames(sock, self._noblock)

    @staticmethod
    def join(handle: Any, timeout: float) -> None:
        handle.join(timeout)

    @staticmethod
    def interrupted(exc: BaseException) -> None:
        """The I/O loop got ``exc`` (``KeyboardInterrupt``, ``SystemExit``):
        never from a signal in a thread of its own (Python raises those in
        the main thread), so it ends the loop."""
        raise exc


class GeventKit:
    """Greenlets and ``zmq.green``, from the runtime. The I/O loop greenlet is
    spawned through a supervisor of its own (policy LOG: the loop fails every
    pending call with a clear error itself before it ends)."""

    name = "gevent"
    flavour = "green"

    def __init__(self) -> None:
        from ..runtime import LOG, Supervisor, green
        from ..runtime.interrupts import shield_from_ctrl_c
        from ..runtime.sockets import green_zmq
        self.zmq: ModuleType = green_zmq
        self._event = green.Event
        self._lock = green.Lock
        self._supervisor = Supervisor("client")
        self._policy = LOG
        self._green = green
        self._shield = shield_from_ctrl_c

    def spawn(self, fn: Callable[[], Any], name: str) -> Any:
        """The I/O loop's greenlet, kept out of Ctrl-C's way: Python would
        raise the interrupt in it, halfway through a turn, whenever it runs
        when the signal comes (:func:`~miyaq.runtime.interrupts.shield_from_ctrl_c`)."""
        greenlet = self._supervisor.spawn(name, fn, policy=self._policy)
        self._shield(greenlet)
        return greenlet

    def event(self) -> Any:
        return self._event()

    def waiter(self) -> Any:
        """A future for a caller that waits on it at once."""
        return Future(self._event)

    def lock(self) -> Any:
        return self._lock()

    def send(self, sock: Any, frames: list[bytes]) -> None:
        """One message now, or ``zmq.Again`` (``zmq.green`` sockets check their
        state once per message only inside their own ``send_multipart``)."""
        sock.send_multipart(frames, self.zmq.NOBLOCK)

    def recv(self, sock: Any) -> list[bytes]:
        """The next message, or ``zmq.Again`` (``zmq.green``'s own recv_multipart)."""
        return sock.recv_multipart(self.zmq.NOBLOCK)

    @staticmethod
    def join(handle: Any, timeout: float) -> None:
        handle.join(timeout)

    def interrupted(self, exc: BaseException) -> None:
        """The I/O loop greenlet got ``exc`` (``KeyboardInterrupt``,
        ``SystemExit``): raised by a signal handler of the program's own
        (Ctrl-C's is kept out: :meth:`spawn`) that ran in it because it was
        running when the signal came. It is meant for the program: raised in
        the main greenlet instead, and the loop goes on, so a ``close()`` in
        the program's handler still flushes the unacknowledged submits
        (before 2026-12-05 the loop ended and they were lost); what the
        interrupted turn was doing may be lost."""
        self._green.raise_in_main(exc)


def choose(green: bool | None) -> ThreadKit | GeventKit:
    """``green=None``: greenlets if gevent has patched threading, else threads."""
    if green is None:
        from ..runtime.green import is_patched
        green = is_patched("threading")
    return GeventKit() if green else ThreadKit()
