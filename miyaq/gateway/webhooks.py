"""Webhook delivery: the consumer of every ``@http/<queue>`` lane.

Each webhook queue gets one :class:`~miyaq.gateway.webhook_lane.WebhookLane`
(its module keeps the books of a lane's deliveries), a dispatcher consumer
that the dispatcher leases at most ``webhook_concurrency`` tasks at once,
and queue limits (rate, max_concurrent) apply as for any consumer. Each
leased task is delivered in its own supervised greenlet (policy LOG); the
outcome is reported to the engine (``complete``, or ``fail`` retryable or
not) and the slot is given back.

Over all lanes, at most ``webhook_max_in_flight`` deliveries are in flight
(each may hold a connection: a file descriptor). A lane's credit is not
kept as a count the dispatcher adds to and takes from: it is read when the
dispatcher decides what to lease, as the lane's free slots capped by the
node's (:meth:`WebhookDeliverer.room`). A task takes a node-wide slot (a
:class:`~miyaq.runtime.green.Semaphore`) when it is leased, before its
delivery opens or reuses a connection, and gives it back when its greenlet
ends, however it ends (an answer, a failure, a timeout, its lease running
out, a cancel, the node stopping, killed before it started). While the
node is full, further tasks stay ready in their lanes (not leased); a lane
turned away then waits its turn and is offered the dispatcher again, in
order, when a slot frees.

A lane is opened by its queue's first ready webhook task and offered the
dispatcher while its queue has ready tasks (it leaves the dispatcher's
hungry consumers when none is ready, and each ready task grants it again).
It is closed -- forgotten by the deliverer and the dispatcher, its queue's
webhook series dropped from ``/metrics`` -- when the engine forgets its
queue (past 100 queues, an empty one: :meth:`Engine.compact_lanes
<miyaq.core.engine.Engine.compact_lanes>`), or, if a delivery of it is
still in flight then (a cancelled one whose greenlet has not ended yet),
when its last delivery ends. A lane with a delivery in flight is never
dropped, so its slots are never counted twice: a task of the queue ready
again meanwhile is delivered by the same lane. So queue names producers
make up hold no lanes once used.

When a delivery's lease (the task's ``timeout``) runs out while its
request is in flight
(:meth:`~miyaq.gateway.webhook_lane.WebhookLane.lease_expired`), the
request is abandoned (its greenlet killed, its connection closed) and the
attempt fails as a ``Timeout``, retried with backoff like any other timeout
-- not put back at once as ``Lost``. A task has one request in flight at
a time: a later attempt waits for the earlier one's greenlet to end before
it connects.

When the node itself cannot make an attempt (no file descriptor left:
:class:`~miyaq.gateway.outbound.LocalShortage`) the task is given back
unstarted, no attempt spent, and no task is leased to any lane for a pause
(:class:`~miyaq.gateway.webhook_shortage.ShortagePause`); its lanes wait
as when the node's slots are all taken.

Constraints: ``deliver`` never blocks (it only spawns); a delivery greenlet
never raises (a bug is logged and the attempt failed retryably); cancelling
a task mid-delivery kills its greenlet (best effort: the request may already
have reached the worker).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from miyaq.config import NodeConfig
from miyaq.constants import DRAIN_POLL, WEBHOOK_CONNECT_TIMEOUT
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.attempts import retry_delay
from miyaq.core.engine import Engine
from miyaq.core.gate import SHUTTING_DOWN, Gate
from miyaq.core.listener import EngineListener
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.metrics import NodeMetrics
from miyaq.gateway.outbound import LocalShortage, Outbound, Outcome
from miyaq.gateway.signing import WebhookSigner
from miyaq.gateway.webhook_lane import WebhookLane
from miyaq.gateway.webhook_shortage import ShortagePause
from miyaq.logs import LogLimiter
from miyaq.protocol.urls import url_for_logs
from miyaq.runtime import Supervisor, green, monotonic, wall
from miyaq.store.spec import WEBHOOK_LANE_PREFIX
from miyaq.store.task import Task

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a bug met by every delivery would repeat for each: a few lines a minute


class StopHurry(Protocol):
    """Set when the node is asked again to stop (a second SIGTERM or SIGINT):
    a wait of its stop that ``shutdown_grace`` bounds ends at once. Only read
    here (the node sets it)."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class WebhookDeliverer(EngineListener):
    def __init__(self, config: NodeConfig, engine: Engine, dispatcher: Dispatcher, gate: Gate,
                 supervisor: Supervisor, destinations: Destinations, metrics: NodeMetrics | None,
                 kick: Callable[[], None], signer: WebhookSigner | None = None) -> None:
        """``signer``: the node's webhook signing secrets (None: deliveries go unsigned)."""
        self.engine = engine
        self.dispatcher = dispatcher
        self.gate = gate
        self.supervisor = supervisor
        self.allow_list = destinations.allow_list
        self.metrics = metrics
        self.kick = kick
        self.concurrency = config.webhook_concurrency
        self.max_in_flight = config.webhook_max_in_flight
        self.slots = green.Semaphore(self.max_in_flight)   # node-wide: one per delivery in flight
        # Lanes with room of their own that the node had no slot for when the
        # dispatcher asked, in the order they were turned away.
        self.waiting: dict[WebhookLane, None] = {}
        self.timeout = config.webhook_timeout
        self.outbound = Outbound(config.webhook_pool_size, WEBHOOK_CONNECT_TIMEOUT, destinations, signer)
        self.lanes: dict[str, WebhookLane] = {}
        self.stopping = False
        # A shortage of the node's own (no descriptor left): no task is leased while it pauses.
        self.shortage_pause = ShortagePause(self._pause_over)

    # -- lanes -----------------------------------------------------------------------
    def start(self) -> None:
        """Open a lane for every webhook queue that already holds ready tasks."""
        for name, lane in list(self.engine.ready.lanes.items()):
            if name.startswith(WEBHOOK_LANE_PREFIX) and lane.count:
                self._open(name[len(WEBHOOK_LANE_PREFIX):])

    def task_ready(self, task: Task) -> None:
        if task.url is None or self.stopping:
            return
        lane = self.lanes.get(task.queue)
        if lane is None:
            self._open(task.queue)
        else:
            lane.forgotten = False
            self._grant(lane)   # hungry again if it has room (a lane turned away waits for a slot)

    def _grant(self, lane: WebhookLane) -> None:
        """Offer ``lane`` the dispatcher until it finds nothing ready (its next ready task grants it again)."""
        self.dispatcher.grant(lane, 0, until_idle=True)

    def _open(self, queue: str) -> None:
        lane = self.lanes[queue] = WebhookLane(self, queue)
        self._grant(lane)
        # A few lines a minute: producers may make up a queue name per task,
        # and a forgotten queue's lane is opened again by its next task.
        _log.log(logging.INFO, "webhook queue", "webhook queue %s: delivering with %d slots", queue,
                 self.concurrency)

    def queue_forgotten(self, queue: str) -> None:
        """The engine forgot ``queue`` (it holds no task): its lane closes now,
        or when its last delivery in flight ends."""
        lane = self.lanes.get(queue)
        if lane is None:
            return
        if lane.busy():
            lane.forgotten = True
        else:
            self._close(lane)

    def _close(self, lane: WebhookLane) -> None:
        """Forget ``lane`` (nothing of it in flight): the dispatcher no longer
        offers it tasks and its queue's webhook series end. Its queue's next
        ready webhook task opens a new one."""
        del self.lanes[lane.queue]
        self.waiting.pop(lane, None)
        self.dispatcher.forget(lane)
        if self.metrics is not None:
            self.metrics.webhook_queue_closed(lane.queue)

    def task_started(self, task: Task) -> None:
        """A task was leased to one of the lanes: it takes a node-wide slot
        now, before the dispatcher asks the next lane what it may take."""
        lane = task.consumer
        if isinstance(lane, WebhookLane) and lane.deliverer is self:
            lane.slots[(task.id, task.attempt)] = bool(self.slots.acquire(blocking=False))

    def room(self, lane: WebhookLane) -> int:
        """How many more tasks ``lane`` may be leased now: its free slots,
        capped by the node's. A lane with room of its own that the node
        has none for waits its turn for a slot (see :meth:`ended`)."""
        if self.stopping:
            return 0
        own = self.concurrency - len(lane.slots)
        if own <= 0:
            return 0          # one of its own deliveries ending grants it again
        free = self.slots.counter
        if free <= 0 or self.shortage_pause.paused():   # no slot, or paused for a shortage of the node's
            self.waiting[lane] = None
            return 0
        return min(own, free)

    def in_flight(self) -> dict[str, int]:
        """Deliveries in flight (each holding a node-wide slot), per queue."""
        return {q: len(lane.slots) for q, lane in self.lanes.items()}

    def in_flight_total(self) -> int:
        """Deliveries in flight on this node, over all queues (at most ``max_in_flight``)."""
        return self.max_in_flight - self.slots.counter

    def ended(self, lane: WebhookLane, key: tuple[str, int]) -> None:
        """The greenlet of attempt ``key`` (task id, attempt) ended (run as its
        link, from the hub; never blocks): its slot goes back and the lanes
        waiting for one, this one last, are offered the dispatcher again."""
        task_id, attempt = key
        lane.reported.discard(key)
        attempts = lane.greenlets.get(task_id)
        if attempts is not None:
            attempts.pop(attempt, None)
            if not attempts:
                del lane.greenlets[task_id]
        if lane.slots.pop(key, False):
            self.slots.release()
        if self.stopping or self.gate.holds(SHUTTING_DOWN):
            return
        if lane.forgotten and not lane.busy():
            if self.lanes.get(lane.queue) is lane:
                self._close(lane)         # its queue was forgotten while this delivery was in flight
        elif self.waiting:
            self.waiting.pop(lane, None)
            self.waiting[lane] = None     # its turn comes after the lanes that waited
        elif self.engine.ready.has_ready(lane.queues):
            self._grant(lane)
        if self.waiting:
            self._offer_waiting()
        self.kick()

    def _offer_waiting(self) -> None:
        """Make every waiting lane with ready tasks hungry again, in the order
        they waited: the dispatcher leases in that order, and those it finds
        no slot for wait again. (A lane with nothing ready leaves the line:
        its next ready task grants it; one held back by its queue's limits
        stays hungry, where the dispatcher wakes it.)"""
        ready = self.engine.ready.lanes
        waiting, self.waiting = self.waiting, {}
        for lane in waiting:
            entry = ready.get(WEBHOOK_LANE_PREFIX + lane.queue)
            if entry is not None and entry.count:
                self._grant(lane)

    # -- one delivery ----------------------------------------------------------------
    def run(self, lane: WebhookLane, task: Task) -> None:
        attempt = task.attempt
        key = (task.id, attempt)
        earlier = [g for a, g in lane.greenlets.get(task.id, {}).items() if a != attempt]
        if earlier:
            # An earlier attempt, stopped when its lease ran out, has not ended
            # yet: one request per task at a time.
            green.joinall(earlier)
        if lane.slots.get(key) is False:
            # Leased without a slot: the books were wrong. Still no connection without one.
            _log.log(logging.ERROR, "no slot", "webhook %s was leased with no delivery slot free", task.id)
            self.slots.acquire()
            lane.slots[key] = True
        started = wall()
        mark = self.shortage_pause.mark()
        try:
            if not self.allow_list.allows(task.url or ""):
                outcome = Outcome(False, "forbidden", error={
                    "type": "ForbiddenDestination", "failed_at": started,
                    "message": f"host of {task.url!r} is not in webhook_allow_hosts"})
            else:
                outcome = self.outbound.send(task, min(self.timeout, task.timeout))
            if outcome.kind not in ("forbidden", "invalid"):   # those never open a connection
                self.shortage_pause.got_past(mark)
            if key not in lane.reported:     # else its lease ran out, reported as a Timeout already
                self._report(task, attempt, outcome, started)
        except LocalShortage as shortage:
            if key not in lane.reported:
                self._give_back_for_own_shortage(lane, task, attempt, shortage)
        except Exception:   # a bug here must not lose the task: fail the attempt, retryably
            _log.log(logging.ERROR, "delivery bug", "webhook delivery of task %s failed unexpectedly", task.id,
                     exc_info=True)
            self.engine.fail(task.id, attempt, {"type": "InternalError", "message": "delivery failed"},
                             True, None, wall())

    def _give_back_for_own_shortage(self, lane: WebhookLane, task: Task, attempt: int, shortage: LocalShortage) -> None:
        """The node itself could not make attempt ``attempt`` of ``task`` (no
        descriptor left): the task is given back, no attempt spent, and --
        unless a pause already runs -- no task is leased for the next pause
        (:meth:`ShortagePause.met`). The pause starts before the task is
        ready again, so it is not leased at once."""
        self.shortage_pause.met(shortage, may_pause=not self.stopping)
        self.engine.give_back(task.id, attempt, lane.principal, wall())

    def _pause_over(self) -> None:
        """A shortage's pause ended (a hub callback: never blocks): the lanes
        that waited are offered the dispatcher again."""
        if self.stopping or self.gate.holds(SHUTTING_DOWN):
            return
        if self.waiting:
            self._offer_waiting()
            self.kick()

    def lease_ran_out(self, task: Task) -> None:
        """The lease of a delivery in flight ran out (its lane stopped the
        request): the attempt fails as a Timeout, retried with backoff."""
        now = wall()
        outcome = Outcome(False, "timeout", True, error={
            "type": "Timeout", "failed_at": now,
            "message": f"no complete answer within {task.timeout:g}s (the task's timeout: its lease ran out)"})
        self._report(task, task.attempt, outcome, task.lease_end - task.timeout)

    def _report(self, task: Task, attempt: int, outcome: Outcome, started: float) -> None:
        now = wall()
        if self.metrics is not None:
            self.metrics.webhook_delivered(task.queue, outcome.kind, now - started)
        if outcome.ok:
            self.engine.complete(task.id, attempt, outcome.result, now)
            return
        error: dict[str, Any] = outcome.error
        delay = outcome.delay
        will_retry = outcome.retryable and not task.at_most_once and task.attempt <= task.max_retries
        if will_retry:
            if delay is None:
                delay = retry_delay(task)   # the engine's backoff, computed here to report retry_at
            error["retry_at"] = now + delay
        logger.debug("webhook %s attempt %d to %s: %s", task.id, attempt, url_for_logs(task.url or ""),
                     error.get("message"))
        self.engine.fail(task.id, attempt, error, outcome.retryable, delay, now)

    # -- lifecycle ---------------------------------------------------------------------
    def stop(self, timeout: float, hurry: StopHurry | None = None) -> None:
        """Let deliveries in flight finish for up to ``timeout`` s -- less if
        ``hurry`` is set meanwhile or already: then no longer -- and kill the
        rest (their tasks run again after their lease: at-least-once). Before
        2026-12-05 a second signal to the node did not cut this wait short."""
        self.stopping = True
        self.waiting.clear()
        self.shortage_pause.close()
        for lane in self.lanes.values():
            self.dispatcher.forget(lane)
        in_flight = [g for lane in self.lanes.values() for attempts in lane.greenlets.values()
                     for g in attempts.values()]
        deadline = monotonic() + timeout
        while (pending := [g for g in in_flight if not g.dead]) and not (hurry is not None and hurry.is_set()):
            left = deadline - monotonic()
            if left <= 0:
                break
            if hurry is None:
                green.joinall(pending, timeout=left)
            else:
                hurry.wait(min(left, DRAIN_POLL))
        if pending:
            logger.info("webhooks: %d delivery(ies) in flight cut short by the stop; their tasks run again "
                        "after their lease", len(pending))
        green.killall(pending, block=True, timeout=1.0)
        self.outbound.close()
