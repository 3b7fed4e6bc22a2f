"""A replication stream's numbering, and the watch on it: the receiving
half of a stream that knows no socket (:class:`StreamReceiver`; the sending
half, which numbers and stamps, is :class:`~miyaq.cluster.stream_sender.StreamSender`),
so the ZeroMQ streams (:mod:`miyaq.cluster.stream`) and the in-memory
transport of :mod:`miyaq.testing.memtransport` run the same code. The
stream's topics and frames, which both halves follow, are described here.

The source publishes each destination's events under a fixed-width topic
(``topic(dest)``: 16 hex digits of blake2b + ``|``, so one node's topic is
never a prefix of another's), numbered by a per-destination sequence and
stamped with the source's incarnation (a random number drawn at start).
Every ``STREAM_HEARTBEAT`` seconds it also publishes, per destination, a
heartbeat carrying the last sequence number sent.

A receiver tracks (incarnation, last sequence, last heard) per source. A gap,
a heartbeat announcing messages it never got, a silent stream or a new
incarnation make it ask for a resync over the peer link (the Clone pattern,
zguide ch. 5): PUB/SUB drops silently at the high-water mark and loses the
first messages after a connect, so the stream alone is never trusted. At
most one resync per source is under way; the receiver numbers them and says
which completed (:meth:`StreamReceiver.synced_since`). One that failed is
asked again after a backoff of its own (``RESYNC_RETRY`` doubling up to
``RESYNC_RETRY_MAX``), whatever the stream does meanwhile; "silent" means
silent longer than :func:`stream_silence`, which grows with the node's
``peer_heartbeat_timeout``.

Frames: ``[topic, msgpack {"src", "inc", "seq", "epoch", "proto", "ev":
[event...]}]`` (``epoch``: the ring's, as the source saw it; ``proto``: the
peer protocol it is written in, 1 from every build so far:
:data:`~miyaq.cluster.peer_versions.STREAM_PROTOCOL`); a heartbeat has no ``ev``, and has ``"hb": true`` and
``"zk"`` (whether the source has ZooKeeper).

Constraints: nothing here blocks or touches a socket; a subclass hands
each message that came to :meth:`StreamReceiver._handle`.
"""
from __future__ import annotations

import hashlib
import logging

from miyaq.cluster.peer_versions import PEER_PROTOCOL
from miyaq.cluster.transport import Apply, AskResync
from miyaq.constants import RESYNC_RETRY, RESYNC_RETRY_MAX, STREAM_HEARTBEAT, STREAM_SILENCE
from miyaq.logs import LogLimiter
from miyaq.protocol import codec
from miyaq.runtime import monotonic

logger = logging.getLogger("miyaq.cluster.stream")     # the stream's logger on purpose: one name to filter
_log = LogLimiter(logger)     # a flood of bad messages: a few lines a minute


def stream_silence(peer_heartbeat_timeout: float) -> float:
    """Seconds a followed stream may be silent before its source is asked
    for a resync: ``peer_heartbeat_timeout`` plus one ``STREAM_HEARTBEAT``
    (6 s at the default 5 s, 21 s at 20 s), at least ``STREAM_SILENCE``.

    Constraint: longer than any stream message may take to cross. A stream
    message carries up to 1 MiB of payloads and results
    (``PEER_MESSAGE_BYTES``), the heartbeats published behind it arrive
    after it, and an operator sizes ``peer_heartbeat_timeout`` so that any
    message between nodes crosses within it (docs/operations.md, "Slow
    links"): silence up to that long is a message crossing, not loss. Before
    2026-12-07 the silence was ``STREAM_SILENCE`` (3.5 s) whatever the
    setting: on a link under 2.4 Mbit/s each such message asked its sender
    for a resync -- every task they share, in pages of up to 1 MiB over the
    same link, each a longer silence. A failed resync no longer waits for a
    silence to be asked again (:meth:`StreamReceiver.resync_done`), so a
    long one delays nothing but the suspicion of a stream that stopped."""
    return max(STREAM_SILENCE, peer_heartbeat_timeout + STREAM_HEARTBEAT)


def topic(node_id: str) -> bytes:
    return hashlib.blake2b(node_id.encode(), digest_size=8).hexdigest().encode() + b"|"


class _Source:
    __slots__ = ("again", "current", "ended", "failures", "followed", "heard", "inc", "last", "retry_at", "seq",
                 "synced", "syncing", "zk_since")

    def __init__(self) -> None:
        self.inc = 0
        self.seq = 0
        self.followed = monotonic()   # when this node began to follow the stream
        # The silence check's clock: reset when a silence is acted on (so the
        # next resync is asked a silence later), hence not when the
        # stream was last heard: that is ``last``.
        self.heard = self.followed
        self.last = 0.0               # when a message of this stream last arrived (0: none yet)
        self.zk_since: float | None = 0.0   # since when its heartbeats say it has ZooKeeper (None: it has not)
        self.syncing = False
        self.current = 0              # the number of the resync asked last (only its end counts)
        self.synced = 0               # the number of the last resync that completed
        self.ended = 0.0              # when the last resync ended (monotonic; 0: none yet)
        self.failures = 0             # resyncs failed in a row (since the last that completed)
        self.retry_at = 0.0           # when to ask again after the last one failed (monotonic; 0: not due)
        # Why to resync again once the one under way ends: a gap seen meanwhile
        # (its answer may have been made before the lost message was sent).
        self.again: str | None = None


class StreamReceiver:
    """The receiving side without its socket: per source, the incarnation,
    the last sequence and when it was last heard. A subclass hands each
    message to :meth:`_handle`, calls :meth:`_check_silence` at least every
    ``STREAM_HEARTBEAT``, and follows the ring with :meth:`_follow` /
    :meth:`_unfollow`. The node sets :attr:`silence` from its
    ``peer_heartbeat_timeout`` (:func:`stream_silence`)."""

    def __init__(self, node_id: str, apply: Apply, resync: AskResync) -> None:
        self.node_id = node_id
        self.sources: dict[str, _Source] = {}
        self.apply = apply
        self.resync = resync
        self.gaps = 0
        self.foreign = 0      # messages dropped: a peer protocol this node does not speak
        self.refused = 0      # messages dropped: over the limit, or not a stream message
        self.resyncs = 0
        #: Seconds a stream may be silent before its source is asked for a
        #: resync (:func:`stream_silence`; its floor until the node sets it).
        self.silence = STREAM_SILENCE
        # Does a silent stream mean loss? Not while this node is outside the
        # ring: the members heartbeat to the ring's members only.
        self.heartbeats_expected = True
        # Sources that left the ring, followed for DEPARTED_GRACE: their silence asks for no resync.
        self.departed: frozenset[str] = frozenset()

    def expect_heartbeats(self, expected: bool) -> None:
        """Whether the sources heartbeat to this node (it is in their ring).
        While they do not, a silent stream is asked for no resync: before
        2026-12-06 a node outside the ring (``--no-auto-join``, taken out,
        refused) asked every member for one every ``STREAM_SILENCE`` (21 in
        35 s), each a pass over that member's tasks for none. Back in the
        ring, silence counts from then."""
        if expected and not self.heartbeats_expected:
            now = monotonic()
            for source in self.sources.values():
                source.heard = now
        self.heartbeats_expected = expected

    def set_departed(self, departed: frozenset[str]) -> None:
        """The sources that left the ring (followed for ``DEPARTED_GRACE``
        to hear how the tasks they ran ended). Their silence asks for no
        resync: a node that left alive still heartbeats to this one (a gap
        or a new incarnation still asks for one), so silence means it is
        dead or frozen, and a resync would wait ``RESYNC_TIMEOUT`` for no
        answer. Before 2026-12-06 every survivor asked a killed member for
        one every ``STREAM_SILENCE`` for the whole grace. A source back in
        the ring counts its silence from then."""
        now = monotonic()
        for src in self.departed - departed:
            source = self.sources.get(src)
            if source is not None:
                source.heard = now
        self.departed = departed

    def _follow(self, src: str) -> None:
        # A new subscription misses what was sent before it joined
        # (slow joiner): start with a resync.
        self.sources[src] = _Source()
        self._ask_resync(src, "new subscription")

    def _unfollow(self, src: str) -> None:
        self.sources.pop(src, None)

    def _handle(self, frames: list[bytes]) -> None:
        """One message as it came off the wire: ``[topic, msgpack body]``."""
        if len(frames) != 2:
            return
        try:
            body = codec.unpack(frames[1], strict_keys=True)
            src, inc, seq = body["src"], body["inc"], body["seq"]
            if type(src) is not str or type(inc) is not int or type(seq) is not int or seq < 0:
                raise TypeError("src, inc, seq")
        except Exception:
            self.refused += 1
            _log.warning("malformed", "malformed replication message dropped")
            return
        source = self.sources.get(src)
        if source is None:
            return
        proto = body.get("proto", 1)
        if isinstance(proto, bool) or not isinstance(proto, int) or not 1 <= proto <= PEER_PROTOCOL:
            # A newer node's stream is never half-applied: to this node it stays silent.
            self.foreign += 1
            if self.foreign == 1 or self.foreign % 10_000 == 0:
                logger.error("stream from %s is in peer protocol %r; this node speaks 1 to %d: its messages "
                             "are dropped (%d so far); upgrade this node", src, proto, PEER_PROTOCOL, self.foreign)
            return
        source.heard = source.last = monotonic()
        if body.get("hb"):
            if body.get("zk") is False:
                source.zk_since = None
            elif source.zk_since is None:
                source.zk_since = source.last
        if inc != source.inc:
            source.inc = inc
            source.seq = seq if body.get("hb") else seq - 1
            self._ask_resync(src, "new incarnation")
            if body.get("hb"):
                return
        if body.get("hb"):
            if seq > source.seq:
                self.gaps += 1
                got, source.seq = source.seq, seq
                self._ask_resync(src, f"heartbeat says {seq}, got up to {got}")
            return
        if seq != source.seq + 1:
            self.gaps += 1
            self._ask_resync(src, f"gap: expected {source.seq + 1}, got {seq}")
        source.seq = seq
        self.apply(src, body.get("ev") or [])

    def _check_silence(self, now: float) -> None:
        """Ask for a resync each source whose stream was silent longer than
        :attr:`silence`, and each whose last resync failed and is due again
        (:meth:`resync_done`) -- neither while this node is outside the
        ring, nor of a departed source."""
        if not self.heartbeats_expected:
            return
        departed = self.departed
        for src, source in self.sources.items():
            if source.syncing or src in departed:
                continue
            if source.retry_at and now >= source.retry_at:
                self._ask_resync(src, f"its last resync failed ({source.failures} in a row)")
            elif now - source.heard > self.silence:
                source.heard = now
                self._ask_resync(src, "silent stream")

    def _ask_resync(self, src: str, why: str) -> None:
        """Resync from ``src``; if one is under way, once it ends (its answer
        may have been made before what this one is for was lost)."""
        source = self.sources.get(src)
        if source is None:
            return
        if source.syncing:
            source.again = source.again or why
            return
        source.syncing = True
        source.retry_at = 0.0       # this one's end decides whether another is due
        self.resyncs += 1
        source.current = self.resyncs      # numbered across sources: a source followed anew counts up from there
        logger.info("stream from %s: %s; resyncing", src, why)
        self.resync(src, source.current)

    def resync_all(self, why: str) -> dict[str, int]:
        """Ask every source for its state again (this node missed time), at
        once: a resync under way supersedes none of what it asks, so it is
        superseded (its end no longer counts, :meth:`resync_done`). Returns
        each source's new resync number: :meth:`synced_since` says when all
        of them completed."""
        for src, source in self.sources.items():
            source.syncing = False
            source.again = None
            self._ask_resync(src, why)
        return {src: source.current for src, source in self.sources.items()}

    def resync_done(self, src: str, number: int, complete: bool) -> None:
        """Resync ``number`` from ``src`` ended (``complete``: applied to its
        end; else failed -- no answer within its wait, an error, the peer
        not connected). A failed one is asked again by :meth:`_check_silence`
        ``RESYNC_RETRY`` after it failed, each further failure in a row
        twice as long after, up to ``RESYNC_RETRY_MAX``, whether the stream
        is silent or not (or sooner, on a gap or a silence). A gap seen
        while it ran starts the next one at once. The end of a resync a
        later one superseded changes nothing: the later one is still under
        way. Before 2026-12-07 a failed resync was asked again only on a gap
        or a silence: a node whose first resync failed while its source's
        heartbeats came never asked again, and with a silence grown with
        ``peer_heartbeat_timeout`` the retry would have waited that long."""
        source = self.sources.get(src)
        if source is not None and number == source.current:
            source.syncing = False
            source.ended = monotonic()
            if complete:
                source.synced = number
                source.failures = 0
            else:
                source.failures += 1
                source.retry_at = source.ended + min(RESYNC_RETRY_MAX,
                                                     RESYNC_RETRY * 2 ** min(source.failures - 1, 16))
            again, source.again = source.again, None
            if again is not None:
                self._ask_resync(src, f"{again} (during the last resync)")

    def resync_unsynced(self, marks: dict[str, int], sources: list[str], why: str) -> None:
        """Ask again each of ``sources`` whose resync since its mark failed
        (none under way, none completed) ``RESYNC_RETRY`` ago or more."""
        now = monotonic()
        for src in sources:
            source = self.sources.get(src)
            if (source is not None and not source.syncing and source.synced < marks.get(src, 1)
                    and now - source.ended >= RESYNC_RETRY):
                self._ask_resync(src, why)

    def synced_since(self, marks: dict[str, int], sources: list[str]) -> bool:
        """Every one of ``sources`` completed a resync numbered at least its
        mark since (a source without a mark: any resync)."""
        for src in sources:
            source = self.sources.get(src)
            if source is None or source.synced < marks.get(src, 1):
                return False
        return True

    def caught_up(self, src: str) -> bool:
        source = self.sources.get(src)
        return source is not None and bool(source.inc) and not source.syncing

    def last_heard(self) -> dict[str, float]:
        """Per source: when a message of its stream last arrived (monotonic),
        or, none yet, when this node began to follow it. Never the silence
        check's clock (``_Source.heard``), which is reset every
        :attr:`silence` of silence: before 2026-12-06 this read it, and
        the replication lag of a peer frozen for 14 s went 0.6, 3.7, 0.6,
        5.7, 0.7 s."""
        return {src: source.last or source.followed for src, source in self.sources.items()}

    def heard_from(self, within: float) -> dict[str, float | None]:
        now = monotonic()
        return {src: source.zk_since for src, source in self.sources.items() if now - source.last <= within}
