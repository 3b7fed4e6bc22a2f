"""The peer link over ZeroMQ: node-to-node requests on sockets.

The ZeroMQ :class:`~miyaq.cluster.transport.PeerLink`. Each node binds a
ROUTER on its peer port (requests from other nodes) and keeps two DEALERs
per other member (its requests, and their answers): ``bulk`` for copies and
resyncs, ``control`` for QUERY, so a standby copy's question never waits
behind megabytes of copies (:mod:`miyaq.cluster.peer_channels`). Each
DEALER is watched by a disconnect monitor (a closed connection ends the
requests sent on it that say what it means:
:meth:`~miyaq.cluster.peer_requests.PeerRequests.connection_lost`).
One greenlet reads the ROUTER, one reads every DEALER and monitor through a
poller (both critical: a node that stops reading its peers stops the
process). Numbering, answers, deadlines and versions are
:class:`~miyaq.cluster.peer_requests.PeerRequests`'s. A callback that raises
is logged and counted by the supervisor; it never stops the readers.

With keys, only peer keys complete the handshake on the peer port (ZAP
domain ``miyaq-peer``), and each request's key is looked up again (a
:class:`~miyaq.security.guard.Guard`): a key revoked while connected is
answered ``forbidden`` from its next request on.

Both readers bound what they keep of a message
(:func:`~miyaq.runtime.messages.recv_bounded`): a request over the limit is
answered ``bad_frame`` or ``too_large``, an answer over it is dropped (the
request then ends in silence); senders split what they send to stay under
``max_message`` (:mod:`miyaq.cluster.sizes`). A connection that asks for
large answers (SYNC pages) and does not read them is answered ``busy`` once
it has 32 MiB of them unread, as on the service port
(:mod:`miyaq.core.unread`): without keys anyone may connect here.

Both sides send ZMTP heartbeats (the node's ``peer_heartbeat_timeout``): a peer that stops
answering them -- a frozen process, a host gone -- has its connections
dropped, and what ZeroMQ had queued for it with them (the DEALERs are
IMMEDIATE: nothing queues again until a handshake completes); its
requests that have an ``on_lost`` end then, not at their timeout.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Collection
from typing import Any

from miyaq.cluster.deadlines import ExpiryHold
from miyaq.cluster.peer_channels import CHANNELS, MemberChannels, open_channel, open_channels
from miyaq.cluster.peer_requests import ANSWER, BULK, CONTROL, PEER_COMMANDS, PeerRequests
from miyaq.constants import PEER_HEARTBEAT_TIMEOUT
from miyaq.core.unread import UnreadAnswers
from miyaq.errors import BadFrame, Busy, ConfigError, MiyaqError, TooLarge
from miyaq.logs import LogLimiter
from miyaq.protocol import codec
from miyaq.protocol.commands import FRAMES
from miyaq.runtime import CRITICAL, Supervisor, green, monotonic
from miyaq.runtime.messages import MessageRefused, recv_bounded, send_frames
from miyaq.runtime.open_files import open_files_hint
from miyaq.runtime.connections import connection_events
from miyaq.runtime.socket_monitors import quiet_monitor
from miyaq.runtime.sockets import SocketFactory, heartbeat_options, zmq
from miyaq.security.guard import Guard

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # retried every second while the process has no descriptor left

LOOP_RETRY = 1.0
"""A DEALER that read its own request (its connection looped back to it)
is made anew at most this often per peer (seconds): a peer that echoes is
not a loop."""


class PeerEndpoint(PeerRequests):
    """The peer link over ZeroMQ: a ROUTER bound on ``bind`` (requests from
    the others) and two DEALERs per other member, bulk and control
    (requests to them, and their answers), each side read by one critical
    greenlet."""

    def __init__(self, sockets: SocketFactory, supervisor: Supervisor, node_id: str, bind: str,
                 guard: Guard | None = None,
                 heartbeat_ms: tuple[int, int] = heartbeat_options(PEER_HEARTBEAT_TIMEOUT)) -> None:
        # A peer's body may exceed max_message by the fields a node adds to the
        # records it forwards (a client's largest task plus its holders...).
        super().__init__(supervisor, node_id, sockets.frame_limit, guard)
        self.sockets = sockets
        # With CURVE: other nodes only. Requests are read within FRAMES + 1 frames
        # ([identity, tag, command, body]) and the peer frame limit.
        # Heartbeats on both sides: a frozen peer's connections are dropped,
        # with what was queued for it.
        self.heartbeat_ms = heartbeat_ms
        self.router = sockets.hub_router(bind, audience="peer", users=guard is not None,
                                         max_frames=FRAMES + 1, sources=True, heartbeat_ms=heartbeat_ms)
        self.unread = UnreadAnswers()    # large answers a connection has not read: bounded
        self.links: dict[str, MemberChannels] = {}     # node id -> its endpoint, DEALERs and monitors
        # Each DEALER's disconnect monitor -> (its node id, channel); None once
        # retired (its DEALER's closing says nothing about the node's new link).
        self._watching: dict[Any, tuple[str, str] | None] = {}
        self._retired: list[Any] = []
        self._poller = sockets.hub_poller()
        self._looped_at: dict[str, float] = {}      # node id -> when its DEALER was last made anew for a loop

    def start(self) -> None:
        self.supervisor.spawn("peer requests", self.serve_requests, policy=CRITICAL)
        self.supervisor.spawn("peer answers", self.serve_answers, policy=CRITICAL)

    @property
    def dealers(self) -> dict[str, Any]:
        """Node id -> its bulk DEALER (a new dict)."""
        return {node_id: link.dealers[BULK] for node_id, link in self.links.items()}

    @property
    def controls(self) -> dict[str, Any]:
        """Node id -> its control DEALER (a new dict)."""
        return {node_id: link.dealers[CONTROL] for node_id, link in self.links.items()}

    @property
    def endpoints(self) -> dict[str, str]:
        """Node id -> the peer endpoint its DEALERs connect to (a new dict)."""
        return {node_id: link.endpoint for node_id, link in self.links.items()}

    # -- membership ------------------------------------------------------------------
    def connect(self, members: dict[str, str], fresh: Collection[str] = ()) -> None:
        """Keep two DEALERs (bulk and control) per member id -> peer endpoint
        (others are closed). The nodes in ``fresh`` get new DEALERs even at
        the same endpoint: they connect at once, where the old ones, which
        lost their connection when the node went down, retry on a backoff
        of up to ``PEER_RECONNECT_MS[1]`` -- and with IMMEDIATE, every
        request to the node fails until they do."""
        for node_id in list(self.links):
            if node_id not in members or members[node_id] != self.links[node_id].endpoint or node_id in fresh:
                # The answer reader may be polling them: it closes retired sockets itself.
                link = self.links.pop(node_id)
                # Its connection closes here, its monitor never read: the node
                # may come back as another build (a rollback), written to in
                # version 1 until it answers (peer_versions). Before 2026-12-07
                # the old process's version stayed, and the new one refused
                # what was written for it (bad_version: a submit waited
                # replication_timeout and was rejected).
                self.forget_version(node_id)
                for dealer in link.dealers.values():
                    quiet_monitor(dealer)
                self._retired.extend(link.dealers.values())
                self._poller.wake()          # the answer reader closes them
                for monitor in link.monitors.values():
                    self._watching[monitor] = None
                    self._retired.append(monitor)
        for node_id in [n for n in self._looped_at if n not in members]:
            del self._looped_at[node_id]
        self.unlinked.clear()
        for node_id, endpoint in members.items():
            if node_id == self.node_id or node_id in self.links:
                continue
            # IMMEDIATE: never queue for a peer that is not there.
            try:
                link = open_channels(self.sockets, endpoint, self.heartbeat_ms)
            except ConfigError as err:
                # A member registered an endpoint libzmq refuses: it is unreachable
                # (every request to it fails as to a node not connected); tried
                # again at the next change of the ring.
                logger.warning("peer link: member %s cannot be reached: %s", node_id, err.message)
                continue
            except zmq.ZMQError as exc:
                # No socket can be made now (no file descriptor left): the role
                # links again a second later (ClusterRole._ticker).
                self.unlinked.add(node_id)
                _log.warning("no socket", "peer link: no socket to member %s now: %s%s; trying again",
                             node_id, exc, open_files_hint(exc))
                continue
            self.links[node_id] = link
            for channel in CHANNELS:
                self._poller.register(link.dealers[channel], zmq.POLLIN)
                monitor = link.monitors[channel]
                self._watching[monitor] = (node_id, channel)
                self._poller.register(monitor, zmq.POLLIN)

    # -- the wire ----------------------------------------------------------------------------
    def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
        return self._send_on(node_id, BULK, frames)

    def _send_control(self, node_id: str, frames: list[bytes]) -> bool:
        return self._send_on(node_id, CONTROL, frames)

    def _send_on(self, node_id: str, channel: str, frames: list[bytes]) -> bool:
        """Send a request's frames on ``node_id``'s DEALER of ``channel``; False
        if there is none now or it cannot take them (IMMEDIATE: not connected)."""
        link = self.links.get(node_id)
        if link is None:
            return False
        sock = link.dealers[channel]
        try:
            send_frames(sock, frames)
            return True
        except zmq.Again:
            return False
        finally:
            self._poller.recheck(sock)    # the send may have taken the edge of an answer

    def _answer_frames(self, identity: Any, req: Any, answer: dict[str, Any]) -> list[bytes]:
        """An answer's frames -- or, when it is large and the asking connection
        has not read the large answers it was sent, ``busy``'s
        (:mod:`miyaq.core.unread`)."""
        frames = codec.encode(ANSWER, answer)
        if not self.unread.may_send(identity, len(frames[-1])):
            self.errors[Busy.code] += 1
            refusal = self.unread.refusal(identity).to_wire()
            refusal["req"] = req
            refusal["speaks"] = self.versions.speaks      # as every answer: else the asker writes version 1
            frames = codec.encode(ANSWER, refusal)
        return frames

    def _expiry_moved(self) -> None:
        self._poller.wake()       # the answer reader waits until the new deadline at most

    def _send_answer(self, identity: Any, frames: list[bytes]) -> None:
        try:
            self.router.send([identity, *frames])
        except (zmq.Again, zmq.ZMQError):
            pass   # the asker is gone; it will treat this as silence

    # -- receiving ---------------------------------------------------------------------------
    def serve_requests(self) -> None:
        """Read the ROUTER (requests from peers) and answer each."""
        while not self._closed:
            try:
                self._read_request(wait=True)
                for _ in range(256):
                    if self.router.turn_over() or not self._read_request(wait=False):
                        break
            except zmq.ZMQError:
                if self._closed:
                    return        # closed under the reader
                raise
            for hook in self.after_burst:
                hook()

    def source_address(self) -> object:
        return self.router.sender_address()

    def _read_request(self, wait: bool) -> bool:
        """Handle the next request (waiting for one if ``wait``); False if none was there."""
        try:
            message = self.router.recv() if wait else self.router.recv_nowait()
        except MessageRefused as refused:
            err: MiyaqError
            if refused.reason == "frames":
                err = BadFrame(f"expected {FRAMES} frames [tag, command, body], got {refused.frames - 1}")
            else:
                err = TooLarge(f"message of {refused.size} bytes exceeds the limit of {self.max_message}")
            self.errors[err.code] += 1
            self.refused(err, None)
            self._answer(refused.head, None, err.to_wire())
            return True
        if message is None:
            return False
        frames, user = message
        source = self.router.source
        self.unread.asked(frames[0], source.fd if source is not None else -1)
        self._handle_request(frames, user)
        return True

    def serve_answers(self) -> None:
        """Read every DEALER; expire requests that got no answer. Waits for
        an answer, a monitor's event, a socket registered or retired, or the
        next request's deadline (:meth:`next_expiry`) -- with nothing
        pending, for the next of those. Before 2026-12-07 it looked every
        0.1 s, ten wake-ups a second of an idle node.

        A burst that ends with answers unread (its share of the hub spent,
        or 256 read from one socket) expires nothing: an answer waiting in
        a socket may have come before its request's deadline, and expired
        first it would be silence -- which lets a standby copy run a task a
        live holder holds (the path the code had to the seven tasks a chaos
        run under heavy load ran twice, 2026-12-08, seed 87). The next
        burst reads them, then expires; at most ``EXPIRY_HOLD_MAX`` seconds
        in a row (:class:`~miyaq.cluster.deadlines.ExpiryHold`)."""
        share = green.FairShare()
        hold = ExpiryHold()
        while not self._closed:
            due = self.next_expiry()
            timeout = None if due == math.inf else max(0.0, due - monotonic()) * 1000.0
            events = dict(self._poller.poll(timeout))
            if events:
                share.check()       # answers keep coming: yield now and then
            else:
                share.waited()
            unread = False
            for sock in list(events):
                if sock in self._watching:
                    self._watch(sock)
                    continue
                for _ in range(256):
                    if share.due():
                        unread = True
                        break       # the rest at the next poll, after the others ran
                    try:
                        frames, _ = recv_bounded(sock, FRAMES, self.max_message, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except MessageRefused as refused:
                        self.errors["too_large" if refused.reason == "bytes" else "bad_frame"] += 1
                        continue    # dropped: its request ends in silence
                    except zmq.ZMQError:
                        break   # closed by connect() meanwhile
                    if len(frames) > 1 and frames[1] in PEER_COMMANDS:
                        self._looped(sock)      # our own request came back
                        break
                    self._handle_answer(frames)
                else:
                    unread = True       # 256 read: more may wait
            while self._retired:
                sock = self._retired.pop()
                self._watching.pop(sock, None)
                self._poller.unregister(sock)
                sock.close(linger=0)
            now = monotonic()
            if hold.may_expire(unread, now):
                self._expire(now)
            for hook in self.after_burst:
                hook()

    def _looped(self, sock: Any) -> None:
        """A DEALER read a request, its own: its connection loops back to it
        (a TCP self-connect: the peer's port is in the ephemeral range and
        nothing listened there as ZeroMQ retried). ZeroMQ would keep that
        connection for ever, and the peer, once up, would never hear from
        this node on it: make that channel's DEALER anew, at most every
        LOOP_RETRY seconds per peer. Its requests end in silence, as with a
        peer that is down; the other channel is left alone, and so are its
        requests and the members not linked yet (before 2026-12-06 a loop
        on one channel made both anew, the other's requests ending in
        silence although answered, and dropped the members waiting to be
        linked until the next ring change)."""
        found = next(((n, link, channel) for n, link in self.links.items()
                      if (channel := link.channel_of(sock)) is not None), None)
        if found is None:
            return      # retired meanwhile
        node_id, link, channel = found
        now = monotonic()
        if now - self._looped_at.get(node_id, -LOOP_RETRY) < LOOP_RETRY:
            return
        self._looped_at[node_id] = now
        logger.warning("the %s connection to peer %s (%s) came back to this node (its own request arrived: a "
                       "TCP self-connect while nothing listened there); connecting again",
                       channel, node_id, link.endpoint)
        try:
            new_sock, monitor = open_channel(self.sockets, link.endpoint, self.heartbeat_ms)
        except (ConfigError, zmq.ZMQError) as exc:
            _log.warning("no socket", "peer link: no socket to member %s now: %s; trying again at its next loop",
                         node_id, exc)
            return
        old_monitor = link.monitors[channel]
        self._watching[old_monitor] = None
        quiet_monitor(link.dealers[channel])
        self._retired.extend((link.dealers[channel], old_monitor))      # closed by the answer reader
        self._poller.wake()
        link.dealers[channel], link.monitors[channel] = new_sock, monitor
        self._poller.register(new_sock, zmq.POLLIN)
        self._watching[monitor] = (node_id, channel)
        self._poller.register(monitor, zmq.POLLIN)

    def _watch(self, monitor: Any) -> None:
        """A DEALER's monitor has events: if its connection closed, end the
        requests sent on it that say what to do then."""
        try:
            closed, _, failure = connection_events(monitor)
        except zmq.ZMQError:
            return    # retired by connect() meanwhile
        watched = self._watching.get(monitor)
        if watched is None:
            return
        node_id, channel = watched
        if failure is not None:
            link = self.links.get(node_id)
            _log.warning("handshake",
                         "peer link: the handshake with member %s (%s) failed (%s): do the nodes share one "
                         "cluster key (the same keys directory's node.key_secret)?",
                         node_id, link.endpoint if link is not None else None, failure)
        if closed:
            ended = self.connection_lost(node_id, channel)
            if ended:
                logger.info("the %s connection to peer %s closed with %d request(s) unanswered",
                            channel, node_id, ended)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for link in self.links.values():
                for dealer in link.dealers.values():
                    quiet_monitor(dealer)
                for sock in link.sockets():
                    sock.close(linger=0)
            for sock in self._retired:
                sock.close(linger=0)
            self.links.clear()
            self._watching.clear()
            self._retired.clear()
            self.router.close(linger=0)
        except Exception:
            logger.exception("closing the peer sockets failed")
