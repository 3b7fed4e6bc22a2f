"""A replication stream's sending half without its socket
(:class:`StreamSender`): it numbers each destination's messages and stamps
them with this node's incarnation and the ring's epoch; the ZeroMQ
publisher (:mod:`miyaq.cluster.stream`) and the in-memory one of
:mod:`miyaq.testing.memtransport` send the bodies. The topics, frames and
the receiving half that watches the numbering are
:mod:`miyaq.cluster.stream_numbering`'s.

Constraints: nothing here blocks or touches a socket; a subclass sends one
body (:meth:`StreamSender._publish`) without blocking.
"""
from __future__ import annotations

import os
import random
from typing import Any

from miyaq.cluster.peer_versions import STREAM_PROTOCOL


class StreamSender:
    """The publishing side without its socket: numbers each destination's
    messages and stamps them; :meth:`_publish` (a subclass's) sends one body."""

    def __init__(self, node_id: str, drop_ratio: float = 0.0) -> None:
        self.node_id = node_id
        self.incarnation = random.getrandbits(62) or 1
        self.seqs: dict[str, int] = {}
        self.epoch = 0
        self.zk_ok = True     # announced in heartbeats: peers fence themselves by it
        # Fault injection for tests and `miyaq chaos`: drop this share of messages.
        self.drop_ratio = drop_ratio
        self._rng = random.Random(os.getpid())
        self.dropped = 0
        self.sent = 0

    def start(self) -> None:
        """Nothing to start: publishing needs no greenlet."""

    def send(self, dest: str, events: list[list[Any]]) -> None:
        seq = self.seqs.get(dest, 0) + 1
        self.seqs[dest] = seq
        if self.drop_ratio and self._rng.random() < self.drop_ratio:
            self.dropped += 1
            return
        body = {"src": self.node_id, "inc": self.incarnation, "seq": seq, "epoch": self.epoch, "ev": events,
                "proto": STREAM_PROTOCOL}
        self._publish(dest, body)

    def forget(self, dest: str) -> None:
        """``dest`` left the ring for good (the role's ``DEPARTED_GRACE`` is
        over): forget its sequence number. A stream to it later starts again
        from 1; a receiver that still follows this node takes that as a gap
        and resyncs, as it does at any restart of this node. Before
        2026-12-05 the number of every destination ever published to was
        kept: 200 join and leave rounds of nodes with new ids left 202."""
        self.seqs.pop(dest, None)

    def heartbeat(self, dests: list[str]) -> None:
        for dest in dests:
            self._publish(dest, {"src": self.node_id, "inc": self.incarnation,
                                 "seq": self.seqs.get(dest, 0), "epoch": self.epoch, "hb": True,
                                 "zk": self.zk_ok, "proto": STREAM_PROTOCOL})

    def _publish(self, dest: str, body: dict[str, Any]) -> None:
        """Send one message to ``dest`` without blocking (it may be lost)."""
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release."""
