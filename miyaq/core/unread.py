"""Connections that do not read their answers.

ZeroMQ queues what a connection has not read yet, up to a count of
messages (``HWM``, 100,000), not of bytes. A request of a few bytes can have
a large answer -- a TASKS listing, a STATUS of thousands of queues, a
RESULT -- and small answers add up: 100,000 answers of 60 KB are 6 GB. So a
connection that sends requests and never reads would grow the node by every
answer (measured: 200 TASKS listings of 10,000 tasks held 300 MiB; 8,000
RESULTs of 60 KB, 458 MB; 2,000 SUBMITs of 1,024 known ids, 355 MB).

ZeroMQ does not say what waits for one connection, but the kernel says what
left it. Over TCP it counts the bytes the peer acknowledged
(``tcpi_bytes_acked``): what the node sent a connection less that is what
still waits for it, in libzmq or in the socket. Over a unix socket it only
says whether bytes wait in the socket (``SIOCOUTQ``); libzmq moves a
connection's messages into its socket whenever the socket has room, so a
socket found empty means nothing of that connection waits in the node either.

So every message a followed connection is sent counts its bytes as they go
on the wire (:func:`wire_bytes`, what TCP acknowledges) -- answers (REPLY,
SUBMITTED, ERROR) and anything else (a DISPATCH to a pull consumer). The
kernel is asked (one system call) before a request once ``LOOK_EVERY`` bytes
were counted since it was last asked, and before every answer of
``LARGE_ANSWER`` bytes or more: over TCP what the peer acknowledged since is
taken off the count; over a unix socket one found empty sets it to 0. A
connection whose count reached ``UNREAD_BUDGET`` is refused: its requests
(SUBMIT included) are answered ``busy`` before they are handled, and a large
answer due to it (a long-poll's) is replaced by ``busy``, until it has taken
what it was sent. The refusals count too: once a connection over budget was
sent ``REFUSALS_BUDGET`` bytes of ERRORs, it is sent none until it reads. A
client that reads its answers is never refused, however far away (what is
in flight is at most what TCP's window holds); the common case costs a
counter update per message, a comparison per request and one system call per
64 KiB.

What libzmq holds for each queued message besides its bytes (about 200
bytes) is not counted: the count has to be in the bytes TCP acknowledges,
and ZeroMQ's count of messages bounds the rest (100,000: about 20 MB).
Not counted either, so slightly in the connection's favour: a liveness
probe every couple of seconds and ZMTP's heartbeats.

Bounded: the connections followed are the ``MAX_FOLLOWED`` that asked
something last (the least recent forgotten first); a connection is followed
from its first request (or SUBMIT) on.

All connections together are bounded too, by ``TOTAL_BUDGET``: a large
answer that would bring what every followed connection was sent and has
not taken past it is replaced by ``busy`` ("the node holds N bytes of
answers its clients have not read"), once the kernel was asked again what
each connection that owes something took (at most every
``TOTAL_LOOK_EVERY`` seconds: a reading client's count goes down only
when it is looked at). Before 2026-12-07 only each connection was bounded:
1,000 connections each long-polling the RESULT of one task and reading
nothing grew a node from 73 to 942 MB when the task finished with a 1 MiB
result -- each was sent its own copy, far under its own 32 MiB -- and
``max_waiters`` (10,000) of them would have held 10 GB.

A fair share of the total: once all followed connections together owe
more than half of ``TOTAL_BUDGET`` (the pressure), each connection's budget
is its fair share, 1/``FAIR_SHARE_PARTS`` of the total (1 MiB), instead of
``UNREAD_BUDGET``: a connection that owes that much has its requests and
large answers refused ``busy`` (its ERRORs bounded as past its own budget)
until it reads, or the pressure is gone. So the half under pressure goes
to connections in pieces of at most the fair share, the answer that
reached it and ``REFUSALS_BUDGET``, while a connection that reads owes
next to nothing whenever it is looked at (before each large answer) and
is served as long as the total has room for its answer -- the total stays
a hard bound for large answers. Before 2026-12-07 eight connections that
never read, each owing its own 32 MiB, held the whole total, and from then
on every other client's answer of ``LARGE_ANSWER`` or more was refused
until they went; now those eight hold 132-137 MiB, and it takes 67 such
connections to starve a reader of 1 MiB answers (131 that send no more
requests than their answers; ZeroMQ has no limit of connections per
address: bounding their number is the deployment's -- keys, a firewall).
A share that shrinks as more connections owe (the total over their
number) was not taken: every connection sent anything since it was last
looked at owes something, so on a busy node it is the floor anyway, and
under attack the first connections past the half take the larger shares
(128/5 + 128/6 + ... MiB, each with its answer on top: about a dozen
connections starve a reader). Whether the pressure is on is decided at
a look -- before a large answer, and once ``LOOK_EVERY`` bytes were
counted for the connection since the last -- so the common path is
unchanged, and a connection notices the pressure within ``LOOK_EVERY``
bytes of its own. Before one is refused for it,
every connection owing bytes is looked at again (at most every
``TOTAL_LOOK_EVERY``): the counts of those that read fall only when
looked at.
"""
from __future__ import annotations

import _socket
import fcntl
import logging
import socket
import struct
import termios
from collections import OrderedDict
from collections.abc import Callable

from miyaq.errors import Busy
from miyaq.logs import LogLimiter
from miyaq.runtime import monotonic

_log = LogLimiter(logging.getLogger(__name__))   # a client that never reads asks again and again

#: Before an answer this large or larger the kernel is asked what its
#: connection took, and the answer replaced by ``busy`` if the connection is
#: over budget (a smaller one is always sent: its request was let in).
LARGE_ANSWER = 64 * 1024
#: Bytes a connection may have been sent and not taken (one answer more
#: than this is never refused after the kernel said it took everything).
UNREAD_BUDGET = 32 * 1024 * 1024
#: Bytes all the followed connections together may have been sent and not
#: taken before a large answer is refused ``busy``.
TOTAL_BUDGET = 256 * 1024 * 1024
#: Past half of ``TOTAL_BUDGET`` owed (the pressure), each connection may
#: owe 1/this of it (its fair share: 1 MiB) instead of ``UNREAD_BUDGET``.
FAIR_SHARE_PARTS = 256
#: Seconds at least between two looks at every connection that owes bytes
#: (made only when a large answer would pass ``TOTAL_BUDGET``, or a
#: connection past its fair share would be refused for the pressure).
TOTAL_LOOK_EVERY = 0.5
#: Bytes counted between two questions to the kernel.
LOOK_EVERY = 64 * 1024
#: Bytes of ERRORs (refusals) a connection over budget is sent; past them
#: it is sent no ERROR until it reads.
REFUSALS_BUDGET = 1024 * 1024
#: Connections followed at once: more than a node has descriptors for.
MAX_FOLLOWED = 65_536
#: What CURVE adds to each frame on the wire: it travels as a MESSAGE
#: command (the command's name, a nonce, the box's MAC and the frame's flags).
CURVE_FRAME = 33

_INT = struct.Struct("i")
_TCP_INFO = getattr(socket, "TCP_INFO", None)       # Linux
_BYTES_ACKED = 120          # offset of tcpi_bytes_acked (u64) in struct tcp_info, Linux 4.2 and later


def wire_bytes(command: bytes, body: int, curve: bool = False) -> int:
    """Bytes a message ``[MQ1, command, body of this size]`` takes on a ZMTP
    3 connection -- what its peer acknowledges: each frame with a flags byte
    and a size of 1 byte (up to 255) or 8, and with ``curve`` in its box."""
    extra = CURVE_FRAME if curve else 0
    body += extra
    return 7 + len(command) + 2 * extra + body + (2 if body <= 255 else 9)


def unsent_bytes(fd: int) -> int:
    """Bytes written to the socket ``fd`` that its peer has not taken (for
    TCP: not yet acknowledged), by ``SIOCOUTQ``; raises OSError."""
    return int(_INT.unpack(fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])


def acked_bytes(fd: int) -> int | None:
    """Bytes the peer of the TCP socket ``fd`` acknowledged since it
    connected (``tcpi_bytes_acked``); None if ``fd`` is no TCP socket (a
    unix socket, closed) or the kernel does not say. ``fd`` stays open and
    unchanged (the plain ``_socket``: a patched one would watch it)."""
    if _TCP_INFO is None:
        return None
    try:
        # The connection may be gone: its descriptor closed (EBADF) or taken
        # since by a file (ENOTSOCK). Making the socket object can fail so too.
        sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    except OSError:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return None
    finally:
        sock.detach()
    if len(info) < _BYTES_ACKED + 8:
        return None
    return int(struct.unpack_from("Q", info, _BYTES_ACKED)[0])


# An entry, per routing id: [descriptor it last asked by, bytes sent and not
# taken, the count at which the kernel is asked next, bytes of ERRORs sent
# while over budget, what TCP said it acknowledged when last asked (-1: not
# TCP), its budget when last looked at (``budget``, or the fair share under pressure)].
_FD, _UNREAD, _NEXT, _REFUSALS, _ACKED, _LIMIT = range(6)


class UnreadAnswers:
    """What each followed connection was sent and has not taken.
    ``fair_share`` (at most ``budget``; default ``total_budget //
    FAIR_SHARE_PARTS``) is each connection's budget while all together owe
    more than half of ``total_budget``."""

    def __init__(self, budget: int = UNREAD_BUDGET, large: int = LARGE_ANSWER,
                 max_followed: int = MAX_FOLLOWED, unsent: Callable[[int], int] = unsent_bytes,
                 acked: Callable[[int], int | None] = acked_bytes, look_every: int = LOOK_EVERY,
                 refusals: int = REFUSALS_BUDGET, total_budget: int = TOTAL_BUDGET,
                 clock: Callable[[], float] = monotonic, fair_share: int | None = None) -> None:
        self.budget = budget
        self.total_budget = total_budget
        self.pressure = total_budget // 2      # owed past this, every connection has its fair share
        share = total_budget // FAIR_SHARE_PARTS if fair_share is None else fair_share
        self.fair_share = max(1, min(budget, share))
        self.clock = clock
        self.total = 0           # bytes counted against every followed connection together
        self._looked_all = -TOTAL_LOOK_EVERY    # when every connection owing bytes was last looked at
        self.large = large
        self.max_followed = max_followed
        self.unsent = unsent
        self.acked = acked
        self.look_every = min(look_every, budget)
        self.refusals = refusals
        self._followed: OrderedDict[bytes, list[int]] = OrderedDict()
        self.refused = 0         # requests and large answers refused busy
        self.unsent_errors = 0   # ERRORs not sent: their connection was past its budget and its refusals'

    def _entry(self, fd: int) -> list[int]:
        acked = self.acked(fd)
        return [fd, 0, self.look_every, 0, -1 if acked is None else acked, self.budget]

    def asked(self, identity: bytes, fd: int) -> bool:
        """``identity`` sent a request by the connection on descriptor ``fd``
        (-1: not known, and nothing is measured for it). False: that
        connection has ``budget`` bytes it was sent and has not taken (its
        fair share under pressure, noticed at its next look); refuse the
        request (:meth:`refusal`) instead of handling it."""
        entry = self._followed.get(identity)
        if entry is None:
            if fd >= 0:
                self._followed[identity] = self._entry(fd)
                if len(self._followed) > self.max_followed:
                    self.total -= self._followed.popitem(last=False)[1][_UNREAD]
            return True
        self._followed.move_to_end(identity)
        if entry[_FD] != fd and fd >= 0:        # the same routing id on a new connection
            self.total -= entry[_UNREAD]
            entry[:] = self._entry(fd)
            return True
        return entry[_UNREAD] < entry[_NEXT] or self._look(entry)

    def _look(self, entry: list[int]) -> bool:
        """Ask the kernel what the connection took since it was last asked,
        take it off, and set its budget: its fair share under pressure.
        True if the connection is under it then."""
        self._take(entry)
        unread = entry[_UNREAD]
        limit = self.budget
        if self.total > self.pressure:
            if unread >= self.fair_share:
                self._look_all()          # those that read owe less once looked at
            if self.total > self.pressure:
                limit = self.fair_share
        entry[_LIMIT] = limit
        if unread < limit:
            entry[_REFUSALS] = 0
        entry[_NEXT] = min(unread + self.look_every, limit)
        return unread < limit

    def _take(self, entry: list[int]) -> None:
        """Ask the kernel what the connection took since it was last asked,
        and take it off its count and the total."""
        before = entry[_UNREAD]
        if entry[_ACKED] >= 0:
            acked = self.acked(entry[_FD])
            if acked is None:
                entry[_UNREAD] = 0        # its descriptor is closed: the connection is gone, and its queue with it
            elif acked >= entry[_ACKED]:
                entry[_UNREAD] = max(entry[_UNREAD] - (acked - entry[_ACKED]), 0)
                entry[_ACKED] = acked
            else:
                entry[_ACKED] = acked     # another connection on that descriptor
        else:
            try:
                if self.unsent(entry[_FD]) == 0:
                    entry[_UNREAD] = 0
            except OSError:
                entry[_UNREAD] = 0        # closed: gone
        self.total += entry[_UNREAD] - before

    def _look_all(self) -> None:
        """Ask the kernel about every followed connection that owes bytes
        (at most every ``TOTAL_LOOK_EVERY`` seconds), so that :attr:`total`
        drops what was taken since."""
        now = self.clock()
        if now - self._looked_all < TOTAL_LOOK_EVERY:
            return
        self._looked_all = now
        for entry in self._followed.values():
            if entry[_UNREAD]:
                self._take(entry)

    def may_send(self, identity: bytes, size: int) -> bool:
        """May an answer of ``size`` bytes go to ``identity`` now? Counts it if
        so. False only for a large answer (``large`` bytes or more) to a
        connection with ``budget`` bytes not taken (its fair share under
        pressure), or that would take the total past ``total_budget``:
        answer ``busy`` instead."""
        entry = self._followed.get(identity)
        if entry is None:
            return True        # not followed (it never asked by a socket): nothing to measure
        if size >= self.large:
            if not self._look(entry):
                return False
            if self.total + size > self.total_budget:
                self._look_all()
                if self.total + size > self.total_budget:
                    return False
        entry[_UNREAD] += size
        self.total += size
        return True

    def sent(self, identity: bytes, size: int) -> None:
        """``size`` bytes that go whatever the count (a SUBMITTED: its tasks
        were stored; a DISPATCH) were sent to ``identity``: counted. A
        negative ``size`` takes back what was counted and then not sent."""
        entry = self._followed.get(identity)
        if entry is not None:
            entry[_UNREAD] += size
            self.total += size

    def may_send_error(self, identity: bytes, size: int) -> bool:
        """May an ERROR of ``size`` bytes go to ``identity``? Counts it if so.
        False once the connection, over budget (its fair share under
        pressure), was sent ``refusals`` bytes of ERRORs: it reads nothing,
        and more would only pile up."""
        entry = self._followed.get(identity)
        if entry is None:
            return True
        if entry[_UNREAD] >= entry[_LIMIT]:
            if entry[_REFUSALS] >= self.refusals:
                self.unsent_errors += 1
                return False
            entry[_REFUSALS] += size
        entry[_UNREAD] += size
        self.total += size
        return True

    def refusal(self, identity: bytes) -> Busy:
        """The ``busy`` a request of ``identity`` gets when :meth:`asked` or
        :meth:`may_send` said no (counted; logged, a few lines a minute)."""
        self.refused += 1
        entry = self._followed.get(identity)
        unread, limit = (0, self.budget) if entry is None else (entry[_UNREAD], entry[_LIMIT])
        if unread >= self.budget:
            _log.warning("unread", "a connection has not read %d bytes it was sent; its requests are answered busy "
                         "until it does (%d refused so far, %d errors not sent)", unread, self.refused,
                         self.unsent_errors)
            return Busy(f"this connection has not read {unread} bytes of answers it was sent; "
                        "read them before asking for more")
        if unread >= limit:         # under its own budget, over its fair share: the pressure is on
            _log.warning("unread share", "connections have not read %d bytes they were sent, all together; those "
                         "that owe their fair share (%d) are answered busy until they do (%d refused so far)",
                         self.total, self.fair_share, self.refused)
            return Busy(f"this connection has not read {unread} bytes of answers it was sent, more than its fair "
                        f"share ({self.fair_share}) while the node's clients have not read {self.total}, all "
                        f"connections together (over half of the {self.total_budget} they may); read them, "
                        "or retry shortly")
        # its own count is under its budget: all of them together are not
        _log.warning("unread total", "connections have not read %d bytes they were sent, all together; large "
                     "answers are answered busy until they do (%d refused so far)", self.total, self.refused)
        return Busy(f"the node's clients have not read {self.total} bytes of answers they were sent, all "
                    f"connections together (at most {self.total_budget}); retry shortly")

    def unread(self, identity: bytes) -> int:
        """Bytes counted against ``identity``: sent and not taken (0: none, or not followed)."""
        entry = self._followed.get(identity)
        return 0 if entry is None else entry[_UNREAD]
