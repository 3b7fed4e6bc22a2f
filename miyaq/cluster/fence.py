"""Fencing: a node cut off from ZooKeeper stops starting tasks when the
ring may go on without it.

A node that has been without ZooKeeper (connection suspended or session
lost) for ``FENCE_AFTER`` seconds is *fenced* when either

- a peer whose replication stream it hears says, in its heartbeats, that
  it has had ZooKeeper for ``FENCE_PEER_HELD`` seconds at least -- which
  every peer that had it since before this node lost it has, as
  ``FENCE_PEER_HELD`` < ``FENCE_AFTER``: the ring can change without this
  node, and its tasks be handed to other holders (a peer that only just got
  ZooKeeper back, as when a stopped ensemble returns, does not count yet:
  this node is about to reconnect too; but peers whose own connections
  dropped with this node's -- they shared the server that was cut off --
  count once they have kept ZooKeeper that long); or
- it hears fewer than a majority of the ring's members (itself included):
  it may be the minority of a split.

A cluster that lost ZooKeeper as a whole -- every node hears a majority of
the others and none has ZooKeeper -- is not fenced: it keeps serving on the
ring it has. While fenced, the role closes the dispatch gate (``fenced``),
lets no standby copy take over and coordinates no submit; when the fence
lifts it fetches every peer's state again before it dispatches
(docs/cluster.md, "Fencing").
"""
from __future__ import annotations

from collections.abc import Collection

from miyaq.cluster.membership import Coordinator
from miyaq.cluster.transport import StreamSubscriber
from miyaq.constants import FENCE_AFTER, FENCE_PEER_HELD, STREAM_SILENCE
from miyaq.runtime import monotonic


class Fence:
    def __init__(self, node_id: str, coordinator: Coordinator, subscriber: StreamSubscriber) -> None:
        self.node_id = node_id
        self.coordinator = coordinator
        self.subscriber = subscriber
        self.up = False          # as of the last :meth:`changed`

    def fenced(self, members: Collection[str]) -> bool:
        """Is this node fenced now, for a ring of ``members``?"""
        silent = self.coordinator.silent_for()
        if silent < FENCE_AFTER:
            return False
        counts_since = monotonic() - FENCE_PEER_HELD
        heard = {n: since for n, since in self.subscriber.heard_from(STREAM_SILENCE).items()
                 if n in members and n != self.node_id}
        if any(since is not None and since <= counts_since for since in heard.values()):
            return True
        return 2 * (len(heard) + 1) <= len(members)

    def changed(self, members: Collection[str]) -> bool:
        """Re-evaluate; True when the fence went up or came down since last time."""
        now = self.fenced(members)
        if now == self.up:
            return False
        self.up = now
        return True
