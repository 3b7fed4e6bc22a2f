"""HTTP long-polls whose client hangs up.

A ``GET /tasks/{id}/result?timeout=`` or a ``POST /receive`` long-poll waits
up to ``MAX_LONG_POLL``. Before, a client that closed its connection while
waiting kept its wait to the deadline: a place among the node's
``max_waiters``, and for a receive, the next ready task leased to nobody
until its lease ran out (an attempt spent). A waiting request now also
watches its connection: the client closing or resetting it (the kernel's
``POLLRDHUP``, whatever the client sent before) drops the wait at once.

Only a close or a reset is a hang-up. A client that sends something while
it waits (a pipelined request; with TLS, the close_notify record just
before its close) is not gone for that: its socket stays readable, so from
then on it is looked at every second instead. A client that half-closes
its side after its request (``shutdown(SHUT_WR)``, allowed by HTTP/1.0
and rare) is taken for gone. Behind a proxy, what is watched is the
proxy's connection: whether the proxy closes it when its client goes is
the proxy's (nginx: ``proxy_ignore_client_abort off``, its default).
"""
from __future__ import annotations

from typing import Any

from miyaq.runtime import green, monotonic

__all__ = ["LongPolls", "hung_up", "wait_unless_hung_up"]

#: Seconds between two looks at a connection that sent something while its
#: long-poll waited (its descriptor stays readable: no watcher can tell more).
RECHECK = 1.0


def hung_up(connection: Any | None) -> bool:
    """The client closed (or reset) ``connection``, whatever it sent before
    (:func:`miyaq.runtime.green.peer_closed`; a TLS close included); never
    blocks, reads nothing. False for no connection (a caller not over HTTP)."""
    if connection is None:
        return False
    try:
        fd = connection.fileno()
    except (OSError, ValueError):
        return True          # closed under us
    return fd < 0 or green.peer_closed(fd)


def wait_unless_hung_up(box: Any, timeout: float, connection: Any | None) -> bool:
    """Wait up to ``timeout`` seconds for ``box`` (a :class:`~gevent.event.AsyncResult`)
    while watching ``connection``. True when the box is set or the time
    passed; False as soon as the client hung up with the box still empty.
    One io watcher for the wait; nothing runs while the client is quiet."""
    if connection is None or box.ready():
        box.wait(timeout)
        return True
    try:
        watch = green.FdWait(connection.fileno())
    except (OSError, ValueError):
        return False
    deadline = monotonic() + timeout
    wake = lambda _box: watch.wake()      # noqa: E731 - the box's link, run in the hub
    box.rawlink(wake)
    try:
        while not box.ready():
            remaining = deadline - monotonic()
            if remaining <= 0:
                return True
            if not watch.wait(remaining) or box.ready():
                continue
            if hung_up(connection):
                return False
            break       # it sent something (a pipelined request, a TLS close_notify): look now and then
        while not box.ready():
            remaining = deadline - monotonic()
            if remaining <= 0:
                return True
            box.wait(min(remaining, RECHECK))
            if not box.ready() and hung_up(connection):
                return False
        return True
    finally:
        box.unlink(wake)
        watch.close()


class LongPolls:
    """The HTTP long-polls waiting now (their result boxes), so that a
    stopping gateway answers them ``shutting_down`` (503, ``Retry-After``)
    before its server stops: before 2026-12-05 the server killed them at its
    stop timeout, and gevent answered a bare ``500 Internal Server Error``."""

    def __init__(self) -> None:
        self.boxes: set[Any] = set()

    def add(self, box: Any) -> None:
        self.boxes.add(box)

    def discard(self, box: Any) -> None:
        self.boxes.discard(box)

    def end(self, error: BaseException) -> int:
        """Answer every waiting long-poll with ``error``; how many."""
        ended = 0
        for box in list(self.boxes):
            if not box.ready():
                box.set(error)
                ended += 1
        self.boxes.clear()
        return ended
