"""A threaded client's life: open, closed, or inherited through a fork;
its close, safe from any thread; and what the process does with the clients
left at a fork and at its exit. The base of :class:`~miyaq.client.client.Client`,
which holds its state (set up in ``Client.__init__``) and its ``flush``.

- :meth:`ClientLifecycle.close` flushes and stops the I/O loop, once: a
  second ``close()`` while the first flushes waits for it (see its docstring).
- A forked child has its parent's clients without their I/O loops: each is
  closed there, untouched, and says so when called (:data:`FORKED`).
- At exit every client still referenced is closed with a flush; one dropped
  without ``close()`` ends its I/O loop once its submits are resolved
  (``Client.__init__``'s finalizer).
"""
from __future__ import annotations

import atexit
import logging
import os
import weakref
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Self

from ..errors import MiyaqError, Timeout
from .arguments import seconds

if TYPE_CHECKING:
    from .io import IOLoop
    from .kit import GeventKit, ThreadKit

logger = logging.getLogger("miyaq.client.client")     # the Client's logger: its line at exit reads as before the move

_clients: "weakref.WeakSet[ClientLifecycle]" = weakref.WeakSet()
"""Every client made in this process and still referenced (``Client.__init__`` adds it)."""

FORKED = ("this miyaq.Client was made before the process forked: its I/O loop and sockets stayed with the "
          "parent process; make a new Client in the child")


class ClientLifecycle:
    """How a client ends (see the module's docstring); ``Client`` sets the state up.

    A plain class, not an ``abc.ABC``: ``Client``'s metaclass stays ``type``,
    so a user's subclass may mix in a class with a metaclass of its own (with
    ``ABCMeta``, as from its split out of client.py until review39, that was
    a TypeError, metaclass conflict). ``abstractmethod`` marks for mypy only."""

    kit: ThreadKit | GeventKit
    _io: IOLoop
    _closed: bool
    _forked: bool
    _closing: Any
    _close_lock: Any
    _abandoned: weakref.finalize

    @abstractmethod
    def flush(self, timeout: float | None = None) -> None:
        """Block until every submit so far is acknowledged (``Client.flush``):
        :meth:`close` waits with it."""

    @property
    def forked(self) -> bool:
        """True in a forked child of the process that made this client: it
        cannot be used there (every call raises MiyaqError)."""
        return self._forked

    def _check_open(self) -> None:
        """Raise MiyaqError if the client is closed, or was inherited through a fork."""
        if self._closed:
            raise MiyaqError(FORKED if self._forked else "client is closed")

    def close(self, flush: bool = True, timeout: float = 10.0) -> None:
        """Flush (unless ``flush`` is False, up to ``timeout`` seconds) and
        stop the I/O loop; idempotent. Calls still waiting in other threads,
        and every later call, raise MiyaqError at once. A ``close()`` while
        another thread's is flushing waits for that one, up to ``timeout``
        (then closes, raising Timeout); ``close(flush=False)`` closes at once,
        failing the submits the other still waits for. Either waits, up to
        ``timeout`` (then Timeout), for the other's end once it has closed
        the client and still joins the I/O loop. Before 2026-12-07 a second
        close closed the client under the first's flush: every submit not yet
        acknowledged failed, and the second returned without a word; and one
        arriving while the first joined the I/O loop returned at once, up to
        a second before the first's end. In a forked child it returns at once
        (a close under way in the parent never ends there)."""
        timeout = seconds(timeout, "timeout")
        if self._closed:
            under_way = self._closing
            if under_way is not None and not self._forked and not under_way.wait(timeout):
                raise Timeout(f"a close() under way in another thread did not end within {timeout:g}s")
            return
        with self._close_lock:
            under_way = self._closing
            if under_way is None:
                mine = self._closing = self.kit.event()
        if under_way is not None and flush:
            if under_way.wait(timeout):
                return
            self._closed = True
            self._io.room.freed()
            self._io.close()
            raise Timeout(f"a close() under way in another thread did not end within {timeout:g}s: "
                          "the client is closed now, its submits not yet acknowledged failed")
        self._abandoned.detach()
        try:
            if flush:
                self.flush(timeout)
        finally:
            self._closed = True
            self._io.room.freed()       # the submits waiting for room: to raise "client is closed"
            try:
                self._io.close()
            finally:
                if under_way is None:
                    mine.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(flush=exc[0] is None)


def _after_fork_in_child() -> None:
    """A forked child has its parent's clients without their I/O loops (only
    the forking thread is copied), their sockets belonging to the parent's
    ZeroMQ context: each is closed here, untouched (no flush, no socket, no
    wake-up of the parent's loop through the pipe they share), and says so
    when called."""
    for client in list(_clients):
        client._forked = True
        client._closed = True
        client._abandoned.detach()    # the loop and its pipe are the parent's


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _flush_at_exit() -> None:
    for client in list(_clients):
        try:
            client.close(flush=True, timeout=10.0)
        except MiyaqError as err:
            logger.error("miyaq: unflushed submits at exit: %s", err.message)
