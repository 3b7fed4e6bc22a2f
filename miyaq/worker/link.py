"""A worker's connection to one node: READY, credit, heartbeats, results.

One greenlet reads the link's DEALER, a
:class:`~miyaq.runtime.hub_socket.HubSocket` (it waits on the socket's
descriptor only when nothing can be read, with a timer for the heartbeat
check, and drains bursts without waiting); results go through an
:class:`~miyaq.worker.outbox.Outbox` and leave from any greenlet. Until the node
first answers, the link says every few seconds, at WARNING, why it cannot
reach it (:mod:`~miyaq.worker.link_watch`). A node that
answers RECONNECT is sent READY again, once the tasks it had sent here that
have not started are dropped (it leases them anew).

A node that falls silent while its connection stays up is alive -- its
libzmq answers the ZMTP heartbeats the link's socket sends (the worker's
``node_timeout``, :data:`~miyaq.worker.config.NODE_TIMEOUT_RANGE`) -- and only
stalled (a burst of work, swapping): after ``heartbeat × LIVENESS`` the link
says so once and keeps waiting, beating and reporting on the same socket,
and the node reads it all when it runs again (it drops no worker for its
own stall: docs/semantics.md). Before 2026-12-05 the link reopened its
socket then: the results queued on the old one were dropped with it, and
its READY had the node put back every task the worker held, which then ran
twice. Only a node silent for ``HUNG_NODE_LIVENESS`` times that long (30 s
by default) is taken for hung: a fresh socket registers again.

A second greenlet reads the socket's connection monitor
(:class:`~miyaq.worker.link_watch.LinkWatch`): a connection the node had
answered on that closes has the node **lost** at once -- the worker tells
the tasks' other holders and the link opens a fresh socket (:meth:`NodeLink.lose`).

The link's socket, its greenlets and what is sent on it are its base's,
:class:`~miyaq.worker.link_socket.LinkSocket`; here are registering, the
reader, and what each message from the node does (which tasks of a
DISPATCH read late run: :mod:`~miyaq.worker.late_dispatch`).

A link to a node that left the ring is **retired** by the worker
(:meth:`NodeLink.retire`, :mod:`~miyaq.worker.ring`):
its socket and monitor are closed and its greenlets end; it never opens
another socket.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import BadFrame, MiyaqError, UnknownCommand
from ..logs import LogLimiter
from ..protocol import codec
from ..protocol import commands as c
from ..runtime import green, monotonic
from ..runtime.sockets import SocketFactory, zmq
from .config import (BEAT_EARLY, HUNG_NODE_LIVENESS, LIVENESS, MAX_INBOUND_MESSAGE, MAX_NODE_LIVENESS, MAX_RESULT_BYTES,
                     NODE_HEARTBEAT_RANGE, RESULT_MESSAGE_SLACK)
from .jobs import returnable_ids
from .key_refusal import KeyRefusal
from .late_dispatch import LateDispatches
from .link_socket import LinkSocket
from .link_watch import LinkWatch
from .outbox import Outbox
from .prefetch import ExtraCredit
from .transit import Transit

if TYPE_CHECKING:
    from .runner import Worker

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # what a node sends may repeat (a buggy or hostile one): a few lines a minute


class NodeLink(LinkSocket):
    def __init__(self, worker: "Worker", factory: SocketFactory, endpoint: str) -> None:
        self.worker = worker
        self.factory = factory
        self.endpoint = endpoint
        self.sock: Any = None
        self.monitor: Any = None    # the current socket's connection monitor (a green PAIR)
        self.heartbeat = worker.config.heartbeat
        self.node_timeout = worker.config.node_timeout    # the ZMTP heartbeats' timeout on its socket
        self.liveness = LIVENESS
        # After how long a silence the node takes this worker for lost and
        # leases its tasks again (its WELCOME's heartbeat × liveness).
        self.node_drop_after = self.heartbeat * LIVENESS
        self.transit = Transit()    # how late the node's stamped messages come (a DISPATCH sent long ago)
        self.silence_ended = float("-inf")    # when the last silence past node_drop_after ended (monotonic)
        self.late = LateDispatches()    # the tasks of DISPATCHes sent before that silence: given back, or run
        # Monotonic time until which a RECONNECT answers a message sent before
        # our last READY (None: no READY awaits its WELCOME): see _on_reconnect.
        self.welcome_due: float | None = None
        self.last_heard = monotonic()
        self.answered = False       # anything from the node on the current socket
        self.heard = False          # a WELCOME from this node, ever
        self.advertised: str | None = None   # the node's endpoint in the ring (WELCOME "service")
        # The largest result one DONE to this node may carry (WELCOME "max_message").
        self.max_result = MAX_RESULT_BYTES
        self.lost = False           # the node's connection closed (or it hung); its tasks may report elsewhere
        self.slow = False           # silent past heartbeat × liveness on a connection still up (said once)
        self.reconnects = 0
        self.send_errors = 0
        self.watch = LinkWatch(self)    # its connection monitor's reader, and the first contact's diagnosis
        self.open_error: str | None = None    # why the last socket could not be opened (None: it was)
        # The ring's lists (WELCOME, HEARTBEAT ``nodes``): since when they no
        # longer name this node (None: the last one heard did). The worker's.
        self.absent_since: float | None = None
        self.retired = False        # the node left the ring: this link is closed for good (retire)
        self.key_refusal = KeyRefusal(endpoint)    # the node refuses this worker's key (forbidden)
        self._parts: set[Any] = set()     # this link's greenlets now running (reader, watcher, flusher)
        self.outbox = Outbox(self.post, self.spawn, f"flush {endpoint}")
        self.extra = ExtraCredit(worker.concurrency, worker.base_credit, worker.capacity)
        self._open()

    # -- registering ---------------------------------------------------------------
    def register(self) -> None:
        w = self.worker
        held = w.busy_count(self)
        body = {"worker": w.wid, "queues": w.queues, "names": sorted(w.app.tasks), "names_only": True,
                "capacity": w.capacity, "pid": w.pid, "host": w.host, "concurrency": w.concurrency,
                "pool": w.config.pool,
                # after a reconnect, slots held by running tasks are not free; nor
                # those whose runner retired (its pool could not start a thread);
                # a stopping worker (its link lost meanwhile) has none to offer
                "credit": 0 if w.stopping else max(0, w.base_credit - w.slots_lost - held)}
        if w.app.schedules:
            body["periodic"] = list(w.app.schedules.values())   # docs/periodic.md
        self.send(c.READY, body)
        if w.stopping:
            self.say_stopping([])
        self.welcome_due = monotonic() + max(1.0, self.heartbeat * self.liveness)
        self.extra.registered(held)

    def say_stopping(self, ids: list[str]) -> None:
        """Tell the node this worker is stopping: RETURN ``ids`` (tasks it
        sent that will not start; may be empty) with ``"stopping": true``
        (added 2026-12-06), after which the node leases this registration
        nothing more -- the tasks running here still report, and BYE
        follows (docs/protocol.md, 7.9). A node of before then ignores the
        field, and its DISPATCHes come back as RETURNs, as they always did."""
        self.send(c.RETURN, {"ids": ids, "credit": False, "stopping": True})

    # -- the reader ------------------------------------------------------------------
    def serve(self) -> None:
        """Read the node until the worker stops; heartbeat every interval;
        reconnect when a node that answered stays silent long enough to be
        taken for hung (a closed connection is the watcher's:
        :meth:`LinkWatch.run <miyaq.worker.link_watch.LinkWatch.run>`).
        The first contact's clock starts here, not when the socket opened:
        a worker registers only once its pool is ready."""
        self.last_heard = monotonic()
        self.watch.opened(self.last_heard)
        self.register()
        last_beat = now = monotonic()
        while not self.worker.stopping_hard and not self.retired:
            sock = self.sock
            if sock is None:
                # No socket could be opened (out of file descriptors): try again
                # a heartbeat later, and register on the socket that opens.
                green.sleep(self.heartbeat)
                now = monotonic()
                if not self.worker.stopping_hard and self.sock is None and self._open():
                    self.register()
                    last_beat = now
                continue
            try:
                # The wait is bounded for the heartbeat check: until the next beat
                # is due, so no two beats are more than `heartbeat` apart
                # (docs/protocol.md, 7.2). ``now`` was read at the end of the
                # last pass, which did nothing since that waits.
                due = last_beat + self.heartbeat - now
                # One message a pass: the next pass's recv asks whether another
                # waits (and reads it without waiting) -- the one ask of a lone
                # message's wake-up; a burst yields when its HubSocket's fair
                # share is spent. (Before 2026-12-06 a pass read up to 256
                # messages with recv_nowait, whose last ask, finding none, the
                # next recv made again.)
                message = sock.recv(min(self.heartbeat, max(due, 0.001)))
                if message is not None:
                    self._handle(message[0])
            except zmq.ZMQError:
                if self.worker.stopping_hard:
                    return
                if sock is not self.sock:
                    now = monotonic()
                    continue        # the connection closed and the watcher opened a fresh socket (or retired)
                raise
            now = monotonic()
            beat_due = now - last_beat >= self.heartbeat - BEAT_EARLY
            if not self.answered:
                if now >= self.watch.next_diagnosis:
                    self.watch.diagnose(now)
                if beat_due:
                    # Nothing to beat for until the node answers: wait a heartbeat
                    # again (the READY queued on the socket leaves when it is
                    # there), not the 1 ms floor of a beat that is overdue.
                    last_beat = now
            elif now - self.last_heard > self.heartbeat * self.liveness * HUNG_NODE_LIVENESS:
                self._reconnect(now)
            else:
                if not self.slow and now - self.last_heard > self.heartbeat * self.liveness:
                    self._slowed(now)
                if beat_due:
                    # Beats go on while the node is slow: it reads them when it
                    # runs again, and finds this worker alive.
                    last_beat = now
                    self.send(c.HEARTBEAT, {"worker": self.worker.wid})

    def _slowed(self, now: float) -> None:
        """Silent past heartbeat × liveness, its connection still up: the node
        is alive and stalled. Said once; the link keeps its socket, its
        registration and what it queued (see the module's docstring)."""
        self.slow = True
        logger.warning("node %s silent for %.1fs, its connection still up: waiting for it (a node silent for "
                       "%.0fs is taken for hung and registered with again)", self.endpoint,
                       now - self.last_heard, self.heartbeat * self.liveness * HUNG_NODE_LIVENESS)

    def _reconnect(self, now: float) -> None:
        logger.warning("node %s silent for %.1fs although its connection is up: taking it for hung; "
                       "reconnecting", self.endpoint, now - self.last_heard)
        self.lose()

    def lose(self) -> None:
        """The node is lost: its tasks' other holders hear of them, and a
        fresh socket registers again (the node may come back)."""
        self.reconnects += 1
        self.lost = True
        self.worker.link_lost(self)
        self._open()
        self.register()

    def _handle(self, frames: list[bytes]) -> None:
        """Act on one message. Only a well-formed one counts as hearing from
        the node: a socket that reads garbage, or its own READY, is not
        talking to a node. A retired link acts on nothing more."""
        if self.retired:
            return
        try:
            command, body = codec.decode(frames, c.WORKER_INBOUND, MAX_INBOUND_MESSAGE)
        except MiyaqError as err:
            if isinstance(err, UnknownCommand) and frames[1] == c.READY:
                self._talking_to_itself()
                return
            if isinstance(err, BadFrame) and not self.answered:
                # Not even a miyaq message's frames, and never one on this socket: not a node (its HTTP port?)
                self.watch.not_a_node(frames, monotonic())
                return
            _log.warning("malformed", "malformed message from node %s: %s", self.endpoint, err.message)
            return
        now = monotonic()
        if now - self.last_heard > self.node_drop_after:
            self.silence_ended = now        # a silence the node may have taken this worker for lost in
        self.last_heard = now
        lag = self.transit.lag(body.get("sent"), now)
        if self.slow:
            self.slow = False
            logger.info("node %s answers again", self.endpoint)
        self.lost = False
        self.answered = True
        if command == c.DISPATCH:
            tasks = body.get("tasks")
            if not isinstance(tasks, list):
                _log.warning("malformed", "node %s: ignoring a DISPATCH whose tasks are not a list", self.endpoint)
            elif lag > self.node_drop_after and now - lag < self.silence_ended:
                self._stale_dispatch(tasks, lag)     # sent before that silence, and as late
            else:
                self.worker.accept(self, tasks, self.last_heard)     # read just now
        elif command == c.WELCOME:
            self._welcome(body)
        elif command == c.HEARTBEAT:
            if isinstance(body.get("nodes"), list):
                self.worker.ring.follow(body["nodes"])
        elif command == c.ABORT:
            ids = body.get("ids")
            if isinstance(ids, list):
                self.worker.abort([i for i in ids if isinstance(i, str)])
        elif command == c.RECONNECT:
            self._on_reconnect()
        elif command == c.ERROR:
            self.welcome_due = None     # a READY refused gets no WELCOME: a later RECONNECT is heeded
            if body.get("code") == "forbidden":
                self.key_refusal.refused(body.get("message"))
            else:
                _log.warning("error", "node %s: %s: %s", self.endpoint, body.get("code"), body.get("message"))

    def _stale_dispatch(self, deliveries: list[Any], lag: float) -> None:
        """A DISPATCH the node sent before a silence longer than it waits for
        a worker (``heartbeat × liveness``), that reached this worker only
        now: its tasks are given back unstarted (RETURN), but for those this
        link gave back as late already, which run (:mod:`.late_dispatch`)."""
        again, late = self.late.sort(deliveries)
        if again:
            self.worker.accept(self, again, self.last_heard)     # each checked there (twice in it: reported)
            self.late.ran(again)
        if not late:
            return
        ids = returnable_ids(late)
        self.late.gave_back(late, ids)
        _log.warning("stale dispatch", "node %s: a DISPATCH of %d task(s) came %.1fs late, after a silence longer "
                     "than the %.1fs the node waits for a worker: it may have leased them again; given back "
                     "unstarted (%d so far)", self.endpoint, len(late), lag, self.node_drop_after,
                     self.late.given_back)
        if ids:
            self.send(c.RETURN, {"ids": ids})

    def _talking_to_itself(self) -> None:
        """Our own READY came back: the connection loops to this socket (a
        TCP self-connect -- the node's port is in the ephemeral range and
        nothing listened there when ZeroMQ retried -- or a peer that echoes).
        ZeroMQ would keep that connection for ever and the node, once up,
        would never hear of this worker: open a fresh socket and register
        again, a heartbeat later (at most 1 s: nothing else comes on this
        socket meanwhile), so that a peer that echoes costs one attempt a
        heartbeat, not a loop."""
        logger.warning("the connection to %s came back to this worker (its own READY arrived: a TCP "
                       "self-connect while nothing listened there); connecting again", self.endpoint)
        self.reconnects += 1
        green.sleep(min(self.heartbeat, 1.0))
        if self.worker.stopping:
            return      # it says BYE (or is about to): registering again would take new tasks
        self._open()
        self.register()

    def _on_reconnect(self) -> None:
        """The node does not know this worker: drop what it sent that has not
        started (it leases those anew) and register again -- unless a READY
        already awaits its WELCOME: the node answers every message of an
        unknown connection with RECONNECT, so a worker that sent several
        (results, heartbeats) while it was taken for lost gets several, all
        sent before our READY reached the node. Heeding each, it registered
        again and again, and each READY made the node drop the registration
        before it and count the tasks it had just leased there as lost (an
        attempt each; review of 2026-12-06)."""
        if self.worker.stopping:
            return      # it said BYE (or is about to): registering again would take new tasks
        if self.welcome_due is not None and monotonic() < self.welcome_due:
            logger.debug("node %s: a RECONNECT sent before our READY reached it; ignored", self.endpoint)
            return
        logger.info("node %s does not know this worker; registering again", self.endpoint)
        self.worker.forget_unstarted(self)     # no longer leased here: the node sends them again
        self.register()

    def _welcome(self, body: dict[str, Any]) -> None:
        self.welcome_due = None
        if self.key_refusal.welcomed():
            logger.info("worker %s: node %s accepts this worker's key now; registered", self.worker.wid,
                        self.endpoint)
        elif not self.heard or self.reconnects:
            logger.info("worker %s: registered with node %s", self.worker.wid, self.endpoint)
        self.heard = True
        service = body.get("service")
        if isinstance(service, str) and len(service) <= c.MAX_ENDPOINT_CHARS:
            self.advertised = service
        if isinstance(body.get("nodes"), list):
            self.worker.ring.follow(body["nodes"])
        limit = body.get("max_message")
        if type(limit) is int and 2 * RESULT_MESSAGE_SLACK <= limit <= 2**31:
            self.max_result = min(MAX_RESULT_BYTES, limit - RESULT_MESSAGE_SLACK)
        hb = body.get("heartbeat")
        if isinstance(hb, (int, float)) and not isinstance(hb, bool) and hb == hb:     # a number, not NaN
            low, high = NODE_HEARTBEAT_RANGE
            if not low <= hb <= high:
                _log.warning("heartbeat", "node %s: its heartbeat of %r s is taken as %g s", self.endpoint, hb,
                             min(max(hb, low), high))
            self.heartbeat = float(min(max(hb, low), high))
        liveness = body.get("liveness")
        beats = min(liveness, MAX_NODE_LIVENESS) if type(liveness) is int and liveness >= 1 else LIVENESS
        self.node_drop_after = self.heartbeat * beats
        self.transit.reset()        # a node welcoming this worker again may be another process
        self.late.welcomed()        # it dropped this worker (RECONNECT) or is another: those leases are gone
