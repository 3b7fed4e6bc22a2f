"""Connections that do not read their answers.

ZeroMQ queues what a connection has not read yet, up to a count of
messages (``HWM``, 100,000), not of bytes. A request of a few bytes can have
a large answer -- a TASKS listing, a STATUS of thousands of queues, a
RESULT -- and even small answers add up: 100,000 answers of 60 KB are 6 GB.
So a connection that sends requests and never reads would grow the node by
every answer (measured: 200 TASKS listings of 10,000 tasks held 300 MiB;
8,000 RESULTs of 60 KB, 458 MB; 2,000 SUBMITs of 1,024 known ids, 355 MB).

ZeroMQ does not say what waits for one connection, but the kernel says what
waits in its socket: the bytes libzmq wrote there that the peer has not
taken (``SIOCOUTQ``). libzmq moves a connection's messages into its socket
whenever the socket has room, so a socket found empty means nothing of that
connection waits in the node either.

So every answer a followed connection is sent is counted -- its bytes plus
``ANSWER_OVERHEAD`` for what libzmq holds with it -- since its socket was
last found empty. Its socket is looked at (one ``ioctl``) before a request
once ``LOOK_EVERY`` bytes were counted since the last look, and before every
answer of ``LARGE_ANSWER`` bytes or more; a look that finds it empty sets
the count back to 0. A connection whose count reached ``UNREAD_BUDGET``
(and whose socket is not empty) is refused: its requests (SUBMIT included)
are answered ``busy`` before they are handled, and a large answer due to it
(a long-poll's) is replaced by ``busy``, until it has read what it was
sent. The refusals count too: once a connection over budget was sent
``REFUSALS_BUDGET`` bytes of ERRORs, it is sent no more until it reads. A client that reads its
answers finds its socket empty at the next look and is never refused; the
common case costs a counter update per answer and a comparison per request.

Bounded: the connections followed are the ``MAX_FOLLOWED`` that asked
something last (the least recent forgotten first); a connection is followed
from its first request (or SUBMIT) on.
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

#: Before an answer this large or larger its connection's socket is looked
#: at, and the answer replaced by ``busy`` if the connection is over budget
#: (a smaller one is always sent: its request was let in).
LARGE_ANSWER = 64 * 1024
#: Bytes of answers a connection may have unread (one answer more than this
#: is never refused after its socket was found empty).
UNREAD_BUDGET = 32 * 1024 * 1024
#: Counted with each answer besides its bytes: what libzmq holds for a queued
#: message of 3 frames (measured: 150 to 220 bytes), so that 100,000 small
#: answers count for what they hold.
ANSWER_OVERHEAD = 256
#: Bytes counted between two looks at a connection's socket.
LOOK_EVERY = 64 * 1024
#: Bytes of ERRORs (refusals) a connection over budget is sent; past them
#: it is sent no ERROR until it reads.
REFUSALS_BUDGET = 1024 * 1024
#: Connections followed at once: more than a node has descriptors for.
MAX_FOLLOWED = 65_536

_INT = struct.Struct("i")


def unsent_bytes(fd: int) -> int:
    """Bytes written to the socket ``fd`` that its peer has not taken (for
    TCP: not yet acknowledged), by ``SIOCOUTQ``; raises OSError."""
    return int(_INT.unpack(fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])


class UnreadAnswers:
    """Per connection (its routing id): the descriptor it last asked by, the
    bytes of answers counted since its socket was last found empty, and the
    count at which its socket is looked at next."""

    def __init__(self, budget: int = UNREAD_BUDGET, large: int = LARGE_ANSWER,
                 max_followed: int = MAX_FOLLOWED, unsent: Callable[[int], int] = unsent_bytes,
                 overhead: int = ANSWER_OVERHEAD, look_every: int = LOOK_EVERY,
                 refusals: int = REFUSALS_BUDGET) -> None:
        self.budget = budget
        self.large = large
        self.max_followed = max_followed
        self.unsent = unsent
        self.overhead = overhead
        self.look_every = min(look_every, budget)
        self.refusals = refusals
        # id -> [descriptor, bytes unread, bytes at which to look next, bytes of ERRORs sent over budget]
        self._followed: OrderedDict[bytes, list[int]] = OrderedDict()
        self.refused = 0       # requests and large answers refused busy
        self.unsent_errors = 0   # ERRORs not sent: their connection was past its budget and its refusals'

    def asked(self, identity: bytes, fd: int) -> bool:
        """``identity`` sent a request by the connection on descriptor ``fd``
        (-1: not known, and nothing is measured for it). False: that
        connection has ``budget`` bytes of answers unread; refuse the
        request (:meth:`refusal`) instead of handling it."""
        entry = self._followed.get(identity)
        if entry is None:
            if fd >= 0:
                self._followed[identity] = [fd, 0, self.look_every, 0]
                if len(self._followed) > self.max_followed:
                    self._followed.popitem(last=False)
            return True
        self._followed.move_to_end(identity)
        if entry[0] != fd and fd >= 0:        # the same routing id on a new connection
            entry[:] = fd, 0, self.look_every, 0
            return True
        return entry[1] < entry[2] or self._look(entry)

    def _look(self, entry: list[int]) -> bool:
        """Look at the connection's socket: found empty, its count goes back
        to 0. True if it is under budget then."""
        try:
            if self.unsent(entry[0]) == 0:
                entry[1] = entry[3] = 0
        except OSError:
            entry[1] = entry[3] = 0     # its descriptor is closed: the connection is gone, and its queue with it
        entry[2] = min(entry[1] + self.look_every, self.budget)
        return entry[1] < self.budget

    def may_send(self, identity: bytes, size: int) -> bool:
        """May an answer of ``size`` bytes go to ``identity`` now? Counts it if
        so. False only for a large answer (``large`` bytes or more) to a
        connection with ``budget`` bytes of answers unread: answer ``busy``
        instead."""
        entry = self._followed.get(identity)
        if entry is None:
            return True        # not followed (it never asked by a socket): nothing to measure
        if size >= self.large and not self._look(entry):
            return False
        entry[1] += size + self.overhead
        return True

    def sent(self, identity: bytes, size: int) -> None:
        """An answer of ``size`` bytes that is sent whatever the count (a
        SUBMITTED: its tasks were stored) went to ``identity``: counted."""
        entry = self._followed.get(identity)
        if entry is not None:
            entry[1] += size + self.overhead

    def may_send_error(self, identity: bytes, size: int) -> bool:
        """May an ERROR of ``size`` bytes go to ``identity``? Counts it if so.
        False once the connection, over budget, was sent ``refusals`` bytes
        of ERRORs: it reads nothing, and more would only pile up."""
        entry = self._followed.get(identity)
        if entry is None:
            return True
        size += self.overhead
        if entry[1] >= self.budget:
            if entry[3] >= self.refusals:
                self.unsent_errors += 1
                return False
            entry[3] += size
        entry[1] += size
        return True

    def refusal(self, identity: bytes) -> Busy:
        """The ``busy`` a request of ``identity`` gets when :meth:`asked` or
        :meth:`may_send` said no (counted; logged, a few lines a minute)."""
        self.refused += 1
        unread = self.unread(identity)
        _log.warning("unread", "a connection has not read %d bytes of answers; its requests are answered busy "
                     "until it does (%d refused so far, %d errors not sent)", unread, self.refused,
                     self.unsent_errors)
        return Busy(f"this connection has not read {unread} bytes of answers it was sent; "
                    "read them before asking for more")

    def unread(self, identity: bytes) -> int:
        """Bytes of answers counted against ``identity`` (0: none, or not followed)."""
        entry = self._followed.get(identity)
        return 0 if entry is None else entry[1]
