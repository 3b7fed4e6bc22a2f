"""Handshakes that failed on a node's bound ports before its ZAP handler was
asked: counted by port and reason for STATUS (``security.handshakes_failed``)
and logged at most every :data:`LOG_EVERY` seconds.

A ZAP handler (:mod:`miyaq.security.zap`) counts the keys it refuses. What
fails before it is asked never reached it: a client or worker without keys
to a node with ``--keys`` (or with keys to one without), one given another
node key than this node's, something that is not a ZeroMQ peer. Before
2026-12-05 none of these was counted or logged, so an operator whose
clients could not connect saw nothing on the node.

Constraints: the counts are a fixed set (three ports × five reasons); the
monitors are the socket factory's
(:meth:`~miyaq.runtime.sockets.SocketFactory.watch_handshakes`), one plain
PAIR per bound socket, read by one greenlet. libzmq does not drop events
past a monitor's high-water mark (about 1,000): its I/O thread waits for
the reader, so a flood of bad handshakes costs the node a bounded queue
and a count, never memory without bound -- and, while this reader is
behind by that many, a stall of the node's sockets until it catches up
(it runs as the node's other readers do).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import zmq

from miyaq.runtime import RESTART, Supervisor, monotonic
from miyaq.runtime.connections import (
    CLOSED_IN_HANDSHAKE, CRYPTOGRAPHIC_ERROR, MECHANISM_MISMATCH, PROTOCOL_ERROR, handshake_failure,
)
from miyaq.runtime.hub_socket import HubPoller
from miyaq.runtime.sockets import SocketFactory

logger = logging.getLogger(__name__)

LOG_EVERY = 60.0
"""Seconds between two warnings about failed handshakes (the count in
between is in the next, logged with the next failure after the minute)."""
READ_BURST = 1000
"""Most events read from one monitor before the others get their turn."""

REASONS = (MECHANISM_MISMATCH, CRYPTOGRAPHIC_ERROR, CLOSED_IN_HANDSHAKE, PROTOCOL_ERROR)
"""Every reason a handshake watched here fails for (a key refused is the
ZAP handler's count): ``/metrics`` has a series of each for each port, zero
until one fails, so a rate sees the first."""

#: What each reason most likely is, seen from the node.
LIKELY: dict[str, str] = {
    MECHANISM_MISMATCH: "keys on one side only: a client, worker or node without keys while this node has "
                        "--keys, or with keys while it has none",
    CRYPTOGRAPHIC_ERROR: "a client, worker or node given another node key (--server-key) than this node's",
    CLOSED_IN_HANDSHAKE: "something that is not a ZeroMQ peer (an HTTP client, a port scanner, a load "
                         "balancer's TCP check: wrong port?), or peers that closed or stopped in the middle of "
                         "their handshake",
}


class HandshakeFailures:
    """Counts, by port and reason, the handshakes that failed on the bound
    sockets of ``factory`` (those made after its ``watch_handshakes()``)."""

    def __init__(self, factory: SocketFactory, supervisor: Supervisor) -> None:
        self.factory = factory
        self.supervisor = supervisor
        self.counts: Counter[tuple[str, str]] = Counter()
        self._poller = HubPoller()
        self._ports: dict[Any, str] = {}
        self._since_log = 0
        self._last_log = -LOG_EVERY
        self._latest = ("", "")

    def start(self) -> None:
        for port, monitor in self.factory.handshake_monitors or ():
            self._adopt(port, monitor)
        self.factory.on_handshake_monitor = self._adopt     # sockets bound later (a waiting poll wakes)
        self.supervisor.spawn("handshakes", self._serve, policy=RESTART)

    def stats(self) -> dict[str, dict[str, int]]:
        """``{port: {reason: count}}`` of the ports with a failed handshake."""
        section: dict[str, dict[str, int]] = {}
        for (port, reason), count in sorted(self.counts.items()):
            section.setdefault(port, {})[reason] = count
        return section

    def ports(self) -> list[str]:
        """The ports watched (``service``; ``peer`` and ``stream`` in a cluster)."""
        return sorted(set(self._ports.values()))

    def _serve(self) -> None:
        """Waits without a timeout: an idle node pays nothing for this reader."""
        while True:
            for monitor, _ in self._poller.poll(None):
                self._read(monitor)
            self._log_due()

    def _adopt(self, port: str, monitor: Any) -> None:
        """Watch one more socket's monitor."""
        if monitor not in self._ports:
            self._ports[monitor] = port
            self._poller.register(monitor)

    def _read(self, monitor: Any) -> None:
        port = self._ports[monitor]
        for _ in range(READ_BURST):
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reason = handshake_failure(frames)
            if reason is not None:
                self.counts[(port, reason)] += 1
                self._since_log += 1
                self._latest = (port, reason)

    def _log_due(self) -> None:
        now = monotonic()
        if not self._since_log or now - self._last_log < LOG_EVERY:
            return
        port, reason = self._latest
        logger.warning("%d handshake(s) failed before any key was checked (latest on the %s port: %s%s)",
                       self._since_log, port, reason,
                       f" -- likely {LIKELY[reason]}" if reason in LIKELY else "")
        self._since_log = 0
        self._last_log = now
