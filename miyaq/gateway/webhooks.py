"""Webhook delivery: the consumer of every ``@http/<queue>`` lane.

Each webhook queue gets one :class:`WebhookLane`, a dispatcher consumer
whose credit is ``webhook_concurrency``: the dispatcher leases it at most
that many tasks at once, and queue limits (rate, max_concurrent) apply as
for any consumer. Each leased task is delivered in its own supervised
greenlet (policy LOG); the outcome is reported to the engine (``complete``,
or ``fail`` retryable or not) and the slot is given back as credit.

Constraints: ``deliver`` never blocks (it only spawns); a delivery greenlet
never raises (a bug is logged and the attempt failed retryably); cancelling
a task mid-delivery kills its greenlet (best effort: the request may already
have reached the worker).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from miyaq.config import NodeConfig
from miyaq.constants import WEBHOOK_CONNECT_TIMEOUT
from miyaq.core.consumers import Consumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.attempts import retry_delay
from miyaq.core.engine import Engine
from miyaq.core.gate import SHUTTING_DOWN, Gate
from miyaq.core.listener import EngineListener
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.metrics import NodeMetrics
from miyaq.gateway.outbound import Outbound, Outcome
from miyaq.logs import LogLimiter
from miyaq.runtime import LOG, Supervisor, green, wall
from miyaq.store.task import WEBHOOK_LANE_PREFIX, Task

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a bug met by every delivery would repeat for each: a few lines a minute


class WebhookLane(Consumer):
    kind = "webhook"
    principal = "webhook"

    def __init__(self, deliverer: WebhookDeliverer, queue: str) -> None:
        super().__init__([WEBHOOK_LANE_PREFIX + queue])
        self.queue = queue
        self.deliverer = deliverer
        self.greenlets: dict[str, Any] = {}

    def deliver(self, tasks: list[Task]) -> bool:
        spawn = self.deliverer.supervisor.spawn
        for task in tasks:
            self.greenlets[task.id] = spawn("webhook delivery", self.deliverer.run, self, task, policy=LOG)
        return True

    def abort(self, ids: list[str]) -> None:
        for task_id in ids:
            g = self.greenlets.get(task_id)
            if g is not None:
                g.kill(block=False)

    def __repr__(self) -> str:
        return f"<WebhookLane {self.queue} credit={self.credit} in_flight={len(self.greenlets)}>"


class WebhookDeliverer(EngineListener):
    def __init__(self, config: NodeConfig, engine: Engine, dispatcher: Dispatcher, gate: Gate,
                 supervisor: Supervisor, destinations: Destinations, metrics: NodeMetrics | None,
                 kick: Callable[[], None]) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.gate = gate
        self.supervisor = supervisor
        self.allow_list = destinations.allow_list
        self.metrics = metrics
        self.kick = kick
        self.concurrency = config.webhook_concurrency
        self.timeout = config.webhook_timeout
        self.outbound = Outbound(config.webhook_pool_size, WEBHOOK_CONNECT_TIMEOUT, destinations)
        self.lanes: dict[str, WebhookLane] = {}
        self.stopping = False

    # -- lanes -----------------------------------------------------------------------
    def start(self) -> None:
        """Open a lane for every webhook queue that already holds ready tasks."""
        for name, lane in list(self.engine.ready.lanes.items()):
            if name.startswith(WEBHOOK_LANE_PREFIX) and lane.count:
                self._open(name[len(WEBHOOK_LANE_PREFIX):])

    def task_ready(self, task: Task) -> None:
        if task.url is not None and task.queue not in self.lanes and not self.stopping:
            self._open(task.queue)

    def _open(self, queue: str) -> None:
        lane = self.lanes[queue] = WebhookLane(self, queue)
        self.dispatcher.grant(lane, self.concurrency)
        logger.info("webhook queue %s: delivering with %d slots", queue, self.concurrency)

    def in_flight(self) -> dict[str, int]:
        return {q: len(lane.greenlets) for q, lane in self.lanes.items()}

    # -- one delivery ----------------------------------------------------------------
    def run(self, lane: WebhookLane, task: Task) -> None:
        attempt = task.attempt
        started = wall()
        try:
            if not self.allow_list.allows(task.url or ""):
                outcome = Outcome(False, "forbidden", error={
                    "type": "ForbiddenDestination", "failed_at": started,
                    "message": f"host of {task.url!r} is not in webhook_allow_hosts"})
            else:
                outcome = self.outbound.send(task, min(self.timeout, task.timeout))
            self._report(task, attempt, outcome, started)
        except Exception:   # a bug here must not lose the task: fail the attempt, retryably
            _log.log(logging.ERROR, "delivery bug", "webhook delivery of task %s failed unexpectedly", task.id,
                     exc_info=True)
            self.engine.fail(task.id, attempt, {"type": "InternalError", "message": "delivery failed"},
                             True, None, wall())
        finally:
            lane.greenlets.pop(task.id, None)
            if not self.stopping and not self.gate.holds(SHUTTING_DOWN):
                self.dispatcher.grant(lane, 1)
                self.kick()

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
        logger.debug("webhook %s attempt %d to %s: %s", task.id, attempt, task.url, error.get("message"))
        self.engine.fail(task.id, attempt, error, outcome.retryable, delay, now)

    # -- lifecycle ---------------------------------------------------------------------
    def stop(self, timeout: float) -> None:
        """Let deliveries in flight finish for up to ``timeout`` s, then kill them
        (their tasks run again after their lease: at-least-once)."""
        self.stopping = True
        for lane in self.lanes.values():
            self.dispatcher.forget(lane)
        in_flight = [g for lane in self.lanes.values() for g in lane.greenlets.values()]
        green.joinall(in_flight, timeout=timeout)
        green.killall([g for g in in_flight if not g.dead], block=True, timeout=1.0)
        self.outbound.close()
