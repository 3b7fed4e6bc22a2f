"""Which peer protocol each peer reads, and the version this node speaks.

A node speaks peer protocol versions 1 to :data:`PEER_PROTOCOL`; a request
says the version it is written in (``proto``; absent: 1), and a node
refuses one in a version it does not speak (:func:`check_version`,
``bad_version``). So a node writes to a peer in the highest version both
speak, and it learns the peer's from the peer itself: every answer says
the highest version its sender speaks (``speaks``; absent: 1, as every
answer of a build before version 2). Until a peer answered, and after its
connection closed or the ring made its link anew (:meth:`PeerVersions.forget`:
it may come back as another build), this node writes to it in version 1,
which every node speaks (docs/cluster.md, "Versions") -- until it answers
a request sent since: an answer to one sent before, read later (off the
old connection), is the old process's and teaches nothing.

Answers, not stream heartbeats: an answer comes back on the connection
the request went on, from the process that read it, matched by ``req`` to
the node asked -- a stranger cannot claim it for another node id -- and
the first one about a peer comes with the first request's answer. A peer
that restarted as an older build between two answers refuses what was
written for the newer one (``bad_version``, an answer without ``speaks``):
that request counts as silence, and the next one is in version 1.

The stream's messages are the same in every version so far: written in
:data:`STREAM_PROTOCOL`, which every node reads, whatever each subscriber
speaks.
"""
from __future__ import annotations

from typing import Any

from miyaq.errors import BadVersion
from miyaq.logs import clipped

PEER_PROTOCOL = 2
"""The highest peer protocol version this node speaks (it speaks every one from 1).
Version 2 (2026-12-07): a REPLICATE's records may be rows (:mod:`miyaq.protocol.recordrow`)."""
STREAM_PROTOCOL = 1
"""The version a stream message is written in: the same in versions 1 and 2."""
ROWS = 2
"""The first version whose REPLICATE may carry rows."""
MAX_PEERS_KNOWN = 4096
"""Most peers whose version is remembered (the ring's members; more: forgotten, and written to in version 1)."""


class PeerVersions:
    """The version each peer speaks, as its answers said: ``speaks`` is the
    highest this node speaks (:data:`PEER_PROTOCOL`; a test sets 1 to play a
    node of a build before version 2)."""

    def __init__(self, speaks: int = PEER_PROTOCOL) -> None:
        self.speaks = speaks
        self._heard: dict[str, int] = {}
        # Node id -> the last request sent to it before it was forgotten: the
        # answers to those came from its old process (or connection).
        self._forgotten: dict[str, int] = {}

    def heard(self, node_id: str, speaks: Any, req: int | None = None) -> None:
        """``node_id`` answered saying it speaks up to ``speaks`` (None: the
        answer said nothing, a build before version 2; anything but a
        version number counts as 1). ``req``: the request answered; one sent
        before ``node_id`` was last forgotten (:meth:`forget`) was answered
        by what it was then, and teaches nothing of what it is now."""
        if req is not None and req <= self._forgotten.get(node_id, 0):
            return
        version = min(speaks, self.speaks) if type(speaks) is int and speaks > 1 else 1
        heard = self._heard
        if version == 1:
            heard.pop(node_id, None)
        elif heard.get(node_id) != version:
            if len(heard) >= MAX_PEERS_KNOWN and node_id not in heard:
                heard.clear()
            heard[node_id] = version

    def forget(self, node_id: str, asked_up_to: int = 0) -> None:
        """``node_id``'s connection closed, or the ring made its link anew (it
        left, moved, or restarted): it may come back as another build,
        written to in version 1 until it answers a request sent after this
        one -- numbered above ``asked_up_to``, the last request sent so far.
        An answer to an earlier one, read later (it waited unread on the old
        connection, or was in flight), is its old process's: before
        2026-12-07 (review35) it taught the old version again, and the new
        process, a rolled-back build, was written to in version 2 and
        refused it (``bad_version``)."""
        self._heard.pop(node_id, None)
        forgotten = self._forgotten
        if asked_up_to > forgotten.get(node_id, 0):
            if len(forgotten) >= MAX_PEERS_KNOWN and node_id not in forgotten:
                forgotten.clear()       # bounded: an answer still in flight from an old process may teach again
            forgotten[node_id] = asked_up_to

    def version_for(self, node_id: str) -> int:
        """The version to write a request to ``node_id`` in: the highest both speak, as far as this node knows."""
        return self._heard.get(node_id, 1)


def check_version(proto: Any, sender: str, me: str, speaks: int = PEER_PROTOCOL) -> None:
    """Raise ``BadVersion`` unless ``proto`` is a peer protocol this node
    speaks (1 to ``speaks``)."""
    if isinstance(proto, bool) or not isinstance(proto, int) or not 1 <= proto <= speaks:
        shown = clipped(repr(proto), 32) if isinstance(proto, (int, float, str, bytes)) else f"a {type(proto).__name__}"
        raise BadVersion(f"peer {clipped(sender, 64)} speaks peer protocol {shown}; node {me} "
                         f"speaks 1 to {speaks}: "
                         "upgrade every node to one version before using what the new one adds")
