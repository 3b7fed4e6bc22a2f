"""Connections whose messages a node drops unread.

A body that decodes to more values than any message of the protocol holds
(:data:`miyaq.protocol.codec.MAX_VALUES`) is sent by no client, worker or
node: only by a program that means to make the node spend its time and
memory. Refusing that body is cheap now, but not free -- up to about a
tenth of a second -- and ZeroMQ reads a connection ahead of the node up to
a count of messages, so a connection sending such bodies faster than the
node refuses them filled the node with them (2.4 GB in 5 s, measured; a
lower receive high-water mark would hold it back but makes libzmq abort:
see ``miyaq.runtime.sockets.HWM``).

So the first such body marks its connection (its routing id): it is
answered ``too_large`` once, saying so, and everything else it sends is
dropped as it is read, without being decoded -- a few microseconds a
message, faster than it can send. A client that reconnects gets a new
routing id and is served again.

Bounded: the ``MAX_IGNORED`` connections marked last (the oldest
forgotten first).
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from miyaq.logs import LogLimiter

_log = LogLimiter(logging.getLogger(__name__))   # a flood from many connections: a few lines a minute

#: Connections remembered at once.
MAX_IGNORED = 4096

#: Said to the connection in its last answer.
WHY = "; this connection's later messages are dropped unread (open a new connection)"


class IgnoredConnections:
    """The routing ids whose messages are dropped unread (each one dropped is
    counted by its port under the error ``ignored``)."""

    def __init__(self, max_ignored: int = MAX_IGNORED) -> None:
        #: The routing ids ignored, oldest first. Ports ask ``identity in ids``
        #: for every message: a lookup in C, no method call.
        self.ids: OrderedDict[bytes, None] = OrderedDict()
        self.max_ignored = max_ignored

    def ignore(self, identity: bytes, port: str, why: str) -> None:
        """Drop ``identity``'s later messages; ``why`` goes to the log."""
        self.ids[identity] = None
        self.ids.move_to_end(identity)
        while len(self.ids) > self.max_ignored:
            self.ids.popitem(last=False)
        _log.warning("ignored", "dropping every later message of a %s connection unread: %s", port, why)
