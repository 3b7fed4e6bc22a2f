"""What a worker's link to a node (:class:`~miyaq.worker.link.NodeLink`)
learns of its connection below the protocol, and says about it
(:class:`LinkWatch`, one per link).

Until the node first answers on a socket, the link says every few seconds,
at WARNING, why it cannot reach it (nothing listening, a name that does not
resolve, the handshake refused...): the link's reader calls
:meth:`LinkWatch.diagnose` once :attr:`LinkWatch.next_diagnosis` is past.

A second greenlet of the link (:meth:`LinkWatch.run`) reads the socket's
connection monitor (libzmq's, one message per connection closed, nothing
per message). When a connection the node had answered on closes -- the
node exited or was killed, the network dropped it, or it answered no ZMTP
heartbeat for ``node_timeout`` (its process frozen, its host gone; or a
message from it took longer to arrive: libzmq hears the answer behind it,
so a link too slow for the timeout has its connection dropped again and
again, docs/configuration.md) -- the node is **lost** at once: the worker
tells the tasks' other holders (:meth:`~miyaq.worker.routing.Routes.link_lost`)
and the link opens a fresh socket (:meth:`~miyaq.worker.link.NodeLink.lose`).
A connection that never got an answer is left to ZeroMQ's own reconnecting
(and to the diagnosis above), so a node that refuses the handshake does not
make the link churn sockets; the refusal is what the diagnosis says from
then on. But one whose handshake succeeded took the READY queued on the
socket with it: the link queues another for the next connection. Before
2026-12-06 a node killed after it read the READY and before it answered
(or anything else listening on its port that reads and closes) left the
worker unregistered for ever with the node restarted on that port (review,
2026-12-06: 518 acknowledged tasks of its queue never ran).

A peer that never sent a miyaq message on the socket and sends bytes that
are none -- something else listening on the port, most often a node's HTTP
port: libzmq takes its HTTP answer for a message of an old ZeroMQ peer --
is named for what it is (:meth:`LinkWatch.not_a_node`): said at once the
first time, at WARNING, quoting the start of what it sent; from then on the
diagnosis says it at its growing intervals, and the handshake failure that
comes with each of its answers (it closes the connection) is not said
apart -- vague failures (a close, a protocol error) with none of its
bytes read between, up to :data:`PEER_CLOSES` of them or for
:data:`PEER_GONE` seconds: past both, something else answers there now
(a node in its place, refusing this worker's keys), the peer is no
longer named, and each failure is said again as it comes
(before review36, 2026-12-07, a vague failure read while the peer was
named was never said, and the diagnosis kept calling a node with a wrong
``--server-key`` "not a miyaq node"). Before 2026-12-06 the diagnosis's right hint ("the HTTP port?") gave
way, after the HTTP server's first answer (10 s: its request timeout), to
``malformed message from node ...: expected 3 frames, got 1`` and a
handshake line guessing at keys, each every 10 s.

Nothing here runs per message: the monitor carries connection events only,
the reader asks for a diagnosis only while its node has not answered, and
a message that is no miyaq one is looked at only before it has.
Its lines are the link's (logger ``miyaq.worker.link``).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..logs import LogLimiter
from ..protocol.reach import explain, unreachable
from ..runtime import green, monotonic
from ..runtime.connections import (
    CONNECTION_CLOSED, CONNECTION_READY, SPECIFIC_FAILURES, explain_handshake, handshake_failure, monitor_event,
)
from ..runtime.sockets import zmq
from .config import FIRST_CONTACT, FIRST_CONTACT_REPEAT_MAX, PROBE_TIMEOUT

#: A handshake failure this soon after a peer sent bytes that are no miyaq
#: message is that peer closing its connection (seconds). A vague one (a
#: close, a protocol error: no sign of a miyaq node) is so whenever it is
#: read, while the socket's peer is named not a node: a worker stalled
#: between reading the bytes and reading the close (a loaded host) must not
#: say the close apart.
SAME_PEER = 1.0
#: Vague handshake failures in a row, with none of its bytes read between,
#: that are still the closes of a peer named not a node (one per connection,
#: read after its bytes or, the monitor and the reader racing, before them) ...
PEER_CLOSES = 3
#: ... and for how long they are read (seconds). Past both, something else
#: answers at the endpoint.
PEER_GONE = 2.0
#: Seconds between two reads of such failures for the second to count
#: towards PEER_CLOSES: a worker stalled (a loaded host) reads the closes of
#: the connections made meanwhile in one burst, before their bytes, and a
#: burst counts once (libzmq reconnects every 100 ms).
VAGUE_GAP = 0.05
#: Bytes of what such a peer sent quoted in the line that names it.
QUOTED_BYTES = 48

if TYPE_CHECKING:
    from .link import NodeLink

logger = logging.getLogger("miyaq.worker.link")     # the link's lines: one logger to follow it
_log = LogLimiter(logger)     # what a node sends may repeat (a buggy or hostile one): a few lines a minute


class LinkWatch:
    """The connection of one :class:`~miyaq.worker.link.NodeLink`: its
    monitor's reader and the first contact's diagnosis. Runs in the
    worker's hub."""

    def __init__(self, link: NodeLink) -> None:
        self.link = link
        self.opened_at = monotonic()    # when the first contact's clock started (:meth:`opened`)
        self.next_diagnosis = 0.0       # monotonic time of the next diagnosis, while the node has not answered
        # Why the node refused this worker's last handshake (explain_handshake), and when.
        self._handshake_refused: tuple[float, str] | None = None
        # A connection's handshake succeeded since the last one closed: the READY left on it.
        self._connected = False
        # What answered sends bytes that are no miyaq message: when it last did, and what to say of it.
        self._not_a_node: tuple[float, str] | None = None
        # Vague handshake failures read since such bytes last were (PEER_CLOSES, a burst
        # counted once: VAGUE_GAP), from when (PEER_GONE), and when the last was read.
        self._vague_failures = 0
        self._vague_from = 0.0
        self._vague_last = 0.0

    def opened(self, now: float) -> None:
        """The first contact's clock starts again at ``now`` (a fresh socket,
        or the reader's start): the first diagnosis is ``FIRST_CONTACT``
        later."""
        self.opened_at = now
        self.next_diagnosis = now + FIRST_CONTACT
        self._not_a_node = None
        self._vague_failures = 0

    def not_a_node(self, frames: list[bytes], now: float) -> None:
        """What answered on the socket, before any miyaq message, sent
        ``frames`` that are no miyaq message (read at ``now``): it is not a
        node. Said at once the first time since the socket opened, then by
        the diagnosis (:meth:`diagnose`)."""
        link = self.link
        first = self._not_a_node is None
        start = frames[0] if frames else b""
        quoted = repr(start[:QUOTED_BYTES]) + ("..." if len(start) > QUOTED_BYTES else "")
        why = (f"what answers there is not a miyaq node: what it sent is no miyaq message (part of it: "
               f"{quoted}) -- its HTTP port? A worker connects to a node's service port (`miyaq node "
               f"--port`, 7450 by default), not its --http-port")
        self._not_a_node = (now, why)
        self._vague_failures = 0
        if first:
            _log.warning("not a node", "cannot connect to node %s: %s; still trying", link.endpoint, why)

    def diagnose(self, now: float) -> None:
        """Nothing heard since the socket opened: say why, at growing
        intervals. The socket stays: ZeroMQ reconnects by itself, and the
        READY queued on it leaves when the node is there."""
        link = self.link
        waited = now - self.opened_at
        refused = self._handshake_refused
        if self._not_a_node is not None:
            logger.warning("cannot connect to node %s: %s (no answer for %.0fs; still trying)", link.endpoint,
                           self._not_a_node[1], waited)
        elif refused is not None and refused[0] >= self.opened_at:
            # A handshake failed since the socket opened: that is why, not what a
            # bare TCP connect finds (a node that accepts connections).
            logger.warning("cannot connect to node %s: %s (no answer for %.0fs; still trying)",
                           link.endpoint, refused[1], waited)
        else:
            why = green.run_in_thread(explain, link.endpoint, PROBE_TIMEOUT)
            if link.answered:       # the answer came while we probed
                return
            logger.warning("%s (no answer for %.0fs; still trying)", unreachable(link.endpoint, why), waited)
        self.next_diagnosis = now + min(FIRST_CONTACT_REPEAT_MAX, max(FIRST_CONTACT, 2 * waited))

    def run(self) -> None:
        """Read the current socket's connection monitor until the worker
        stops or the link is retired. A monitor closed under it (the socket
        was replaced) is left for the new one; any other error raises, for
        the supervisor."""
        link = self.link
        while not link.worker.stopping_hard and not link.retired:
            monitor = link.monitor
            if monitor is None:
                green.sleep(link.heartbeat)    # no socket open now: the reader opens one
                continue
            try:
                frames = monitor.recv_multipart()
            except zmq.ZMQError:
                if link.worker.stopping_hard or monitor is not link.monitor:
                    continue
                raise
            if monitor is not link.monitor:
                continue
            event = monitor_event(frames)
            if event == CONNECTION_CLOSED:
                self._connection_closed()
            elif event == CONNECTION_READY:
                self._connected = True
            else:
                failure = handshake_failure(frames)     # None for any other event
                if failure is not None:
                    self.handshake_failed(failure)

    def handshake_failed(self, failure: str) -> None:
        """A handshake failed (``failure``: :func:`handshake_failure`): said,
        and what the diagnosis says from then on -- unless it is the close
        of the peer named not a node: a vague failure (not in
        ``SPECIFIC_FAILURES``) while at most :data:`PEER_CLOSES` of them
        (those read in one burst, :data:`VAGUE_GAP`, counted once), or for
        less than :data:`PEER_GONE`, were read since its bytes last were,
        however late it is read (before 2026-12-07 only
        within ``SAME_PEER``: a worker stalled between the two reads, a
        test under load, guessed at keys), or any failure within
        ``SAME_PEER`` of them. Past that the peer is no longer named: what
        fails now is something else at the endpoint (a node refusing
        this worker's keys)."""
        link = self.link
        peer = self._not_a_node
        if peer is not None:
            if failure not in SPECIFIC_FAILURES:
                now = monotonic()
                if not self._vague_failures:
                    self._vague_from = now
                    self._vague_failures = 1
                elif now - self._vague_last >= VAGUE_GAP:
                    self._vague_failures += 1
                self._vague_last = now
                if self._vague_failures <= PEER_CLOSES or now - self._vague_from < PEER_GONE:
                    return     # that peer closing its connection: named already
            elif monotonic() - peer[0] < SAME_PEER:
                return
            self._not_a_node = None
        why = explain_handshake(failure, link.endpoint, link.factory.security is not None, "this worker")
        self._handshake_refused = (monotonic(), why)      # what diagnose says from now on
        _log.warning("handshake", "cannot connect to node %s: %s", link.endpoint, why)

    def _connection_closed(self) -> None:
        link = self.link
        connected, self._connected = self._connected, False
        if link.worker.stopping_hard:
            return
        if not link.answered:
            # ZeroMQ reconnects by itself. A READY that left on the connection is
            # gone with it: queue another for the next one (see the module's docstring).
            if connected and link.sock is not None:
                logger.info("connection to node %s closed before it answered this worker's READY; READY again "
                            "when it is back", link.endpoint)
                link.register()
            return
        logger.warning("connection to node %s closed; reconnecting", link.endpoint)
        link.lose()
