"""Connections that do not read their answers.

ZeroMQ queues what a connection has not read yet, up to a count of
messages (``HWM``), not of bytes. A request of a few bytes can have a large
answer -- a TASKS listing, a STATUS of thousands of queues, a RESULT -- so a
connection that sends such requests and never reads would grow the node by
every answer (measured: 200 TASKS listings of 10,000 tasks, 300 MiB held).

ZeroMQ does not say what waits for one connection, but the kernel says what
waits in its socket: the bytes libzmq wrote there that the peer has not
taken (``SIOCOUTQ``). libzmq moves a connection's messages into its socket
whenever the socket has room, so a socket found empty means nothing of that
connection waits in the node either.

So a large answer (``LARGE_ANSWER`` bytes or more) is sent only while the
connection took less than ``UNREAD_BUDGET`` bytes of large answers since its
socket was last found empty; past that, the request is refused ``busy``
until the connection has read what it was sent. A client that reads its
answers finds its socket empty again at its next request and is never
refused; one that asks for many large answers at once without reading any
gets the budget's worth and ``busy`` for the rest. Small answers are never
held back: they are what every request gets, and ZeroMQ's count bounds them.

Bounded: the connections followed are the ``MAX_FOLLOWED`` that asked
something last (the least recent forgotten first).
"""
from __future__ import annotations

import fcntl
import logging
import struct
import termios
from collections import OrderedDict
from collections.abc import Callable

from miyaq.errors import Busy
from miyaq.logs import LogLimiter

_log = LogLimiter(logging.getLogger(__name__))   # a client that never reads asks again and again

#: An answer this large or larger counts against its connection's budget.
LARGE_ANSWER = 64 * 1024
#: Bytes of large answers a connection may have unread (one answer more
#: than this is never refused after its socket was found empty).
UNREAD_BUDGET = 32 * 1024 * 1024
#: Connections followed at once: more than a node has descriptors for.
MAX_FOLLOWED = 65_536

_INT = struct.Struct("i")


def unsent_bytes(fd: int) -> int:
    """Bytes written to the socket ``fd`` that its peer has not taken (for
    TCP: not yet acknowledged), by ``SIOCOUTQ``; raises OSError."""
    return int(_INT.unpack(fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])


class UnreadAnswers:
    """Per connection (its routing id): the descriptor it last asked by, and
    the bytes of large answers sent since its socket was last found empty."""

    def __init__(self, budget: int = UNREAD_BUDGET, large: int = LARGE_ANSWER,
                 max_followed: int = MAX_FOLLOWED, unsent: Callable[[int], int] = unsent_bytes) -> None:
        self.budget = budget
        self.large = large
        self.max_followed = max_followed
        self.unsent = unsent
        self._followed: OrderedDict[bytes, list[int]] = OrderedDict()    # id -> [descriptor, bytes unread]
        self.refused = 0

    def asked(self, identity: bytes, fd: int) -> None:
        """``identity`` sent a request by the connection on descriptor ``fd``
        (-1: not known, and nothing is measured for it)."""
        entry = self._followed.get(identity)
        if entry is None:
            if fd < 0:
                return
            self._followed[identity] = [fd, 0]
            if len(self._followed) > self.max_followed:
                self._followed.popitem(last=False)
            return
        self._followed.move_to_end(identity)
        if entry[0] != fd and fd >= 0:
            entry[0], entry[1] = fd, 0        # the same routing id on a new connection

    def may_send(self, identity: bytes, size: int) -> bool:
        """May an answer of ``size`` bytes go to ``identity`` now? Counts it if
        so. False: that connection has ``budget`` bytes of large answers
        unread; answer ``busy`` instead."""
        if size < self.large:
            return True
        entry = self._followed.get(identity)
        if entry is None:
            return True        # not followed (it never asked by a socket): nothing to measure
        try:
            if self.unsent(entry[0]) == 0:
                entry[1] = 0
        except OSError:
            entry[1] = 0       # its descriptor is closed: the connection is gone, and its queue with it
        if entry[1] >= self.budget:
            self.refused += 1
            return False
        entry[1] += size
        return True

    def refusal(self, identity: bytes) -> Busy:
        """The ``busy`` a request of ``identity`` gets when :meth:`may_send`
        said no (logged, a few lines a minute)."""
        unread = self.unread(identity)
        _log.warning("unread", "a connection has not read %d bytes of answers; its requests for more are "
                     "answered busy until it does (%d so far)", unread, self.refused)
        return Busy(f"this connection has not read {unread} bytes of answers it was sent; "
                    "read them before asking for more")

    def unread(self, identity: bytes) -> int:
        """Bytes of large answers counted against ``identity`` (0: none, or not followed)."""
        entry = self._followed.get(identity)
        return 0 if entry is None else entry[1]
