"""An in-memory :class:`~miyaq.cluster.transport.Transport`: the peer link
and the replication streams of in-process nodes, over a
:class:`~miyaq.testing.memnet.Network`.

The bookkeeping is the production code's -- requests numbered and matched
to answers with deadlines (:class:`~miyaq.cluster.peer_requests.PeerRequests`),
stream messages numbered, stamped and watched for gaps, silence and new
incarnations (:class:`~miyaq.cluster.stream_sender.StreamSender`,
:class:`~miyaq.cluster.stream_numbering.StreamReceiver`) -- and the frames are
encoded and decoded as on ZeroMQ; only the sockets are replaced by the
network, which a test controls. The promises of the transport seam hold:
handlers and callbacks run in the hub, one message at a time per node; a
request gets exactly one callback; ``close`` is idempotent and never raises.

Endpoints are names: a node's peer endpoint is ``mem://<id>/peer`` and its
stream ``mem://<id>/pub`` (:func:`endpoints`), so a
:class:`~miyaq.cluster.ring_view.Member` can carry them.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from miyaq.cluster.peer_requests import PeerRequests
from miyaq.cluster.stream_numbering import StreamReceiver, topic
from miyaq.cluster.stream_sender import StreamSender
from miyaq.cluster.transport import Apply, AskResync
from miyaq.protocol import codec
from miyaq.runtime import Supervisor
from miyaq.testing.memnet import Network
from miyaq.testing.memnet_message import ANSWER, EVENTS, HEARTBEAT, PEER, STREAM, Message, stream_body

logger = logging.getLogger(__name__)

#: The largest message a peer accepts (as ``NodeConfig.max_message``'s default).
MAX_MESSAGE = 16 * 1024 * 1024


def endpoints(node_id: str) -> tuple[str, str]:
    """The (peer, pub) endpoints of ``node_id`` on an in-memory network."""
    return f"mem://{node_id}/peer", f"mem://{node_id}/pub"


def _node_of(endpoint: str) -> str | None:
    if endpoint.startswith("mem://") and endpoint.count("/") == 3:
        return endpoint[len("mem://"):].split("/", 1)[0]
    return None


class MemoryPeerLink(PeerRequests):
    """Requests to, and answers from, the nodes it is connected to (:meth:`connect`)."""

    def __init__(self, network: Network, supervisor: Supervisor, node_id: str, max_message: int,
                 on_close: Callable[[], None] | None = None) -> None:
        super().__init__(supervisor, node_id, max_message)
        self.network = network
        self.peers: dict[str, str] = {}      # node id -> the node its endpoint names
        self.on_close = on_close
        self.relinked: Counter[str] = Counter()   # node id -> links made anew (``fresh``)

    def start(self) -> None:
        """Delivery is the network's; nothing to spawn."""

    def connect(self, members: dict[str, str], fresh: Collection[str] = ()) -> None:
        """``fresh`` nodes are only counted (:attr:`relinked`): the network
        has no connections to make anew."""
        peers = {n: _node_of(e) or n for n, e in members.items() if n != self.node_id}
        for node_id, dst in self.peers.items():
            if peers.get(node_id) != dst or node_id in fresh:
                self.forget_version(node_id)     # its link made anew, as the ZeroMQ link's (peer.py)
        self.peers = peers
        self.relinked.update(n for n in fresh if n in self.peers)

    def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
        dst = self.peers.get(node_id)
        if self._closed or dst is None or not self.network.up(dst):
            return False
        command, body = codec.decode(frames, frozenset({frames[1]}), self.max_message)
        return self.network.send(Message(PEER, command.decode(), self.node_id, dst, frames, body))

    def _send_answer(self, identity: Any, frames: list[bytes]) -> None:
        if self._closed:
            return
        _, body = codec.decode(frames, frozenset({frames[1]}), self.max_message)
        self.network.send(Message(PEER, ANSWER, self.node_id, bytes(identity).decode(), frames, body))

    def receive(self, msg: Message) -> None:
        if self._closed:
            return
        if msg.kind == ANSWER:
            self._handle_answer(msg.frames)
        else:
            self._handle_request([msg.src.encode(), *msg.frames])

    def run_after_burst(self) -> None:
        for hook in self.after_burst:
            hook()

    def close(self) -> None:
        """Pending requests get no callback; the node leaves the network (the role closes its link last)."""
        if not self._closed:
            self._closed = True
            self.pending.clear()
            if self.on_close is not None:
                self.on_close()


class MemoryStreamPublisher(StreamSender):
    """Publishes each destination's messages on the network."""

    def __init__(self, network: Network, node_id: str) -> None:
        super().__init__(node_id)
        self.network = network
        self._closed = False

    def _publish(self, dest: str, body: dict[str, Any]) -> None:
        if self._closed:
            return
        frames = [topic(dest), codec.pack(body)]
        kind = HEARTBEAT if body.get("hb") else EVENTS
        self.network.send(Message(STREAM, kind, self.node_id, dest, frames, stream_body(frames)))
        self.sent += 1

    def close(self) -> None:
        self._closed = True


class MemoryStreamSubscriber(StreamReceiver):
    """Receives the streams of the nodes it follows (:meth:`connect`)."""

    def __init__(self, node_id: str, apply: Apply, resync: AskResync) -> None:
        super().__init__(node_id, apply, resync)
        self.followed: dict[str, str] = {}
        self._closed = False

    def start(self) -> None:
        """Delivery is the network's; nothing to spawn."""

    def connect(self, pubs: dict[str, str]) -> None:
        for node_id, endpoint in list(self.followed.items()):
            if pubs.get(node_id) != endpoint:
                del self.followed[node_id]
                self._unfollow(node_id)
        for node_id, endpoint in pubs.items():
            if node_id != self.node_id and node_id not in self.followed:
                self.followed[node_id] = endpoint
                self._follow(node_id)

    def receive(self, msg: Message) -> None:
        if not self._closed and msg.frames[0] == topic(self.node_id):
            self._handle(msg.frames)

    def check_silence(self, now: float) -> None:
        if not self._closed:
            self._check_silence(now)

    def close(self) -> None:
        self._closed = True


class _NodeEnd:
    """What the network delivers a node's messages to: its link and its subscriber."""

    def __init__(self) -> None:
        self.link: MemoryPeerLink | None = None
        self.subscriber: MemoryStreamSubscriber | None = None

    def receive(self, msg: Message) -> bool:
        if msg.channel == PEER:
            if self.link is not None:
                self.link.receive(msg)
                return True
            return False
        if self.subscriber is not None:
            self.subscriber.receive(msg)
        return False

    def after_burst(self) -> None:
        if self.link is not None:
            self.link.run_after_burst()

    def peer_down(self, node_id: str) -> None:
        """Its connections to ``node_id`` closed, as a ZeroMQ link sees its
        peer stop: it may come back as another build (peer_versions). Only
        the version is forgotten: the requests waiting on it wait for their
        deadline, as before."""
        if self.link is not None:
            self.link.forget_version(node_id)

    def tick(self, now: float) -> None:
        if self.link is not None and self.link.pending:
            before = len(self.link.pending)
            self.link._expire(now)
            if len(self.link.pending) != before:
                self.link.run_after_burst()
        if self.subscriber is not None:
            self.subscriber.check_silence(now)


class MemoryTransport:
    """The :class:`~miyaq.cluster.transport.Transport` of one node on ``network``.

    Its callbacks and handler failures are reported to :attr:`supervisor`
    (``memnet <node>``; crashes are counted there, as a node's supervisor
    counts them). The node is attached to the network when its peer link is
    made, and detached when the link closes.
    """

    def __init__(self, network: Network, node_id: str, max_message: int = MAX_MESSAGE) -> None:
        self.network = network
        self.node_id = node_id
        self.max_message = max_message
        self.supervisor = Supervisor(f"memnet {node_id}")
        self._end = _NodeEnd()

    def peer_link(self, node_id: str) -> MemoryPeerLink:
        self._check(node_id)
        link = MemoryPeerLink(self.network, self.supervisor, node_id, self.max_message, on_close=self.close)
        self._end.link = link
        self.network.attach(node_id, self._end)
        return link

    def publisher(self, node_id: str) -> MemoryStreamPublisher:
        self._check(node_id)
        return MemoryStreamPublisher(self.network, node_id)

    def subscriber(self, node_id: str, apply: Apply, resync: AskResync) -> MemoryStreamSubscriber:
        self._check(node_id)
        sub = MemoryStreamSubscriber(node_id, apply, resync)
        self._end.subscriber = sub
        return sub

    def _check(self, node_id: str) -> None:
        if node_id != self.node_id:
            raise ValueError(f"this transport is node {self.node_id}'s, not {node_id}'s")

    def close(self) -> None:
        """Detach the node (what is queued for it is lost) and stop its callbacks. Never raises."""
        try:
            if self.network.nodes.get(self.node_id) is self._end:
                self.network.detach(self.node_id)
            self.supervisor.kill()
        except Exception:
            logger.exception("closing the in-memory transport of %s failed", self.node_id)
