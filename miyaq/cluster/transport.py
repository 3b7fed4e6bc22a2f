"""How a clustered node talks to the other nodes: the transport seam.

:class:`~miyaq.cluster.role.ClusterRole` never makes a socket. It is given a
:class:`Transport` by the composition root and asks it for

* a :class:`PeerLink`: requests to other nodes, each answered or -- past its
  deadline -- reported as silence (``None``), which the replica logic relies
  on ("only silence lets a copy run"); and handlers for the requests other
  nodes send;
* a :class:`StreamPublisher` and a :class:`StreamSubscriber`: the
  replication streams, one per (source, destination), whose losses are found
  by sequence numbers and heartbeats and repaired by a resync.

:class:`~miyaq.cluster.zmq_transport.ZmqTransport` is the implementation
over ZeroMQ (:mod:`miyaq.cluster.peer`, :mod:`miyaq.cluster.stream`). Another
implementation (in memory, for in-process cluster tests) only has to keep the
same promises: callbacks and handlers run in the node's event loop and never
concurrently; a request gets exactly one callback; ``start`` begins delivery
and ``close`` ends it (idempotent, never raises).

Endpoints are the strings the ring's :class:`~miyaq.cluster.ring_view.Member`
carries (``peer`` and ``pub``); a transport may use them as plain names.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol

from miyaq.cluster.answer_times import AnswerTimes
from miyaq.cluster.peer_versions import PeerVersions

Body = dict[str, Any]
#: Called once per request: with the answer, or with None (silence or an error answer).
Callback = Callable[[Body | None], None]
#: Handles one request from ``sender``: the answer now, or None to answer later via ``later()``.
Handler = Callable[[str, Body], Body | None]
Reply = Callable[[Body], None]
#: Receives a batch of events published by ``src`` for this node.
Apply = Callable[[str, list[Any]], None]
#: Asks ``src`` for a resync (its stream showed a gap, went silent or restarted);
#: the second argument numbers it, for :meth:`StreamSubscriber.resync_done`.
AskResync = Callable[[str, int], None]


class PeerLink(Protocol):
    handlers: dict[bytes, Handler]
    #: Members ``connect`` could not link to now (no file descriptor left): it is called again.
    unlinked: set[str]
    #: Run after each burst of requests or answers (the role flushes what they produced).
    after_burst: list[Callable[[], None]]
    #: How long each peer lately took to answer (what a QUERY waits: miyaq.cluster.answer_times).
    answer_times: AnswerTimes
    #: The peer protocol each peer speaks, by its answers; what a request to it is written in (peer_versions).
    versions: PeerVersions

    def start(self) -> None:
        """Begin reading requests and answers."""

    def close(self) -> None:
        """Stop; pending requests get no callback. Idempotent, never raises."""

    def connect(self, members: dict[str, str], fresh: Collection[str] = ()) -> None:
        """Follow the ring: node id -> peer endpoint (others are dropped).
        ``fresh``: nodes back in the ring (restarted): link to them anew, at
        once, rather than wait for a connection to a node that was down to
        retry (it backs off, up to ``PEER_RECONNECT_MS``'s longest wait)."""

    def request(self, node_id: str, command: bytes, body: Body, timeout: float, callback: Callback,
                on_lost: Callable[[], None] | None = None, late: Callback | None = None,
                refused: Callable[[], None] | None = None) -> bool:
        """Send a request; ``callback`` gets the answer, or None past ``timeout`` seconds
        (at once, in another greenlet, when it cannot be sent: then False --
        or ``refused()`` is called instead, if given: the node was not asked).
        ``on_lost`` (optional) is called instead, at once, when the connection
        the request went on closes before it answered (the node may have read
        the request and exited; a link with several connections to a node --
        the ZeroMQ link's bulk and control -- ends only the requests sent on
        the one that closed); without it that request waits its ``timeout``.
        ``late`` (optional) gets an answer that comes after ``callback`` got
        None for silence (for ``LATE_ANSWER_WINDOW``; the oldest such
        requests are forgotten past ``MAX_LATE_ANSWERS``)."""

    def later(self) -> Reply:
        """Inside a handler that returns None: the function that answers the current request."""

    def unanswered(self) -> dict[str, int]:
        """Per node: requests sent to it that await their answer."""


class StreamPublisher(Protocol):
    #: The ring epoch stamped on every message.
    epoch: int
    #: Messages dropped on purpose (fault injection).
    dropped: int
    #: Announced in every heartbeat: whether this node has ZooKeeper now.
    zk_ok: bool

    def start(self) -> None:
        """Begin publishing."""

    def send(self, dest: str, events: list[list[Any]]) -> None:
        """Publish one batch of events for ``dest`` (never blocks; may be lost)."""

    def heartbeat(self, dests: list[str]) -> None:
        """Tell each destination the last sequence number sent to it."""

    def forget(self, dest: str) -> None:
        """``dest`` left the ring for good: forget its sequence number (a
        stream to it later starts again from 1, which it takes as a gap)."""

    def close(self) -> None:
        """Idempotent, never raises."""


class StreamSubscriber(Protocol):
    gaps: int
    resyncs: int
    #: Seconds a followed stream may be silent before its source is asked
    #: for a resync (:func:`~miyaq.cluster.stream_numbering.stream_silence`).
    silence: float

    def start(self) -> None:
        """Begin receiving (and watching for silent streams)."""

    def close(self) -> None:
        """Idempotent, never raises."""

    def connect(self, pubs: dict[str, str]) -> None:
        """Follow the ring: node id -> pub endpoint. A new source starts with a resync."""

    def resync_all(self, why: str) -> dict[str, int]:
        """Ask every source for a resync (this node missed time); returns
        each source's resync number, for :meth:`synced_since`."""

    def resync_done(self, src: str, number: int, complete: bool) -> None:
        """Resync ``number`` from ``src`` ended (``complete``: applied to its
        end; else abandoned, and asked again after a backoff:
        ``RESYNC_RETRY`` doubling up to ``RESYNC_RETRY_MAX``)."""

    def resync_unsynced(self, marks: dict[str, int], sources: list[str], why: str) -> None:
        """Ask again each of ``sources`` whose resync since its mark failed
        (at most once a ``RESYNC_RETRY``)."""

    def synced_since(self, marks: dict[str, int], sources: list[str]) -> bool:
        """Every one of ``sources`` completed a resync numbered at least its
        mark (1 for a source without one) since."""

    def caught_up(self, src: str) -> bool:
        """``src``'s stream was heard and is not being resynced."""

    def expect_heartbeats(self, expected: bool) -> None:
        """Whether the sources heartbeat to this node (it is in the ring):
        while not, a silent stream asks for no resync."""

    def set_departed(self, departed: frozenset[str]) -> None:
        """The sources that left the ring, still followed: their silence
        asks for no resync."""

    def last_heard(self) -> dict[str, float]:
        """Per source: when its stream was last heard (monotonic)."""

    def heard_from(self, within: float) -> dict[str, float | None]:
        """The sources heard within ``within`` seconds, each with since when
        (monotonic) its heartbeats say it has ZooKeeper (None: it has not)."""


class Transport(Protocol):
    """Makes a node's peer link and streams (each made once, at the role's construction)."""

    def peer_link(self, node_id: str) -> PeerLink: ...

    def publisher(self, node_id: str) -> StreamPublisher: ...

    def subscriber(self, node_id: str, apply: Apply, resync: AskResync) -> StreamSubscriber: ...
