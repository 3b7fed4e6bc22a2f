"""Per-queue rate limits: a token bucket (``rate``, ``burst``), a cap on
tasks running at once (``max_concurrent``), and pausing a queue.

The dispatcher asks :meth:`QueueLimits.open` which of a consumer's lanes may
start a task now and calls :meth:`QueueLimits.acquire` for each task it
starts, so ZeroMQ workers, pull consumers and webhook deliveries are limited
alike (a webhook lane ``@http/<queue>`` counts against ``<queue>``).

Constraints:

* Cheap when unused: ``active`` is False while no queue has a limit, and the
  dispatcher then skips this module entirely.
* Never blocks. A queue that is out of tokens is skipped for this pump and
  :attr:`QueueLimits.wake_at` says when its next token arrives; the
  dispatcher arms one timer for it (:meth:`arm_wake`).
* Limits are stored as the *cluster-wide* values. Each node enforces its
  ``share`` of them (``1 / nodes holding the queue``, set by the cluster via
  :meth:`set_share`; 1.0 standalone) with its own bucket. docs/http.md
  ("Rate limits") explains how precise that is.
* Runtime changes apply at once: a changed limit keeps the tokens it had
  (clipped to the new burst); a new limit starts with a full bucket.
* A paused queue (:meth:`pause`) starts nothing until :meth:`resume`; its
  tasks are still accepted and wait, in order. A pause is kept apart from
  the queue's limits: clearing or changing limits leaves it paused.
* What is kept per queue name is bounded: limits (``MAX_LIMITED``), pauses
  (``MAX_PAUSED``), and :attr:`QueueLimits.throttled` by the queues the
  engine keeps -- an engine listener, it drops a queue's count when the
  engine forgets the queue (:meth:`QueueLimits.queue_forgotten`).
* :attr:`QueueLimits.throttled` counts hold-backs, not dispatcher passes: a
  queue its limits hold back is counted once, and again only after a task
  of it started or became ready (docs/http.md, "Metrics").
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from miyaq.constants import MAX_LIMITED, MAX_PAUSED, MAX_RATE
from miyaq.core.engine import Engine
from miyaq.core.listener import EngineListener
from miyaq.errors import ConfigError, InvalidField
from miyaq.runtime import LOG, Supervisor, wall
from miyaq.store.tally import Tally
from miyaq.store.spec import WEBHOOK_LANE_PREFIX
from miyaq.store.task import RUNNING, Task

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Limit:
    """One queue's limits (cluster-wide values). ``None`` means unlimited."""

    rate: float | None = None          # tasks started per second
    burst: float | None = None         # bucket size; default max(1, rate)
    max_concurrent: int | None = None  # tasks running at once

    def __post_init__(self) -> None:
        for name in ("rate", "burst"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or math.isnan(value) or not 0 <= value <= MAX_RATE):
                raise InvalidField(f"field {name!r} must be a number between 0 and {MAX_RATE:g}", field=name)
        mc = self.max_concurrent
        if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or not 0 <= mc <= 10**9):
            raise InvalidField("field 'max_concurrent' must be an integer >= 0", field="max_concurrent")
        if self.burst is not None and self.rate is None:
            raise InvalidField("field 'burst' needs a 'rate'", field="burst")
        if self.burst is not None and self.rate and self.burst < 1:
            # A bucket that never holds a whole token starts nothing: the queue
            # would stop for good while its rate says it runs.
            raise InvalidField("field 'burst' must be at least 1 when 'rate' is above 0 (use 'rate': 0, "
                               "or pause the queue, to stop it)", field="burst")

    @property
    def bucket_size(self) -> float:
        if self.rate is None:
            return math.inf
        if self.burst is not None:
            return self.burst
        return max(1.0, self.rate) if self.rate > 0 else 0.0   # rate 0 alone pauses the queue

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "burst": None if self.rate is None else self.bucket_size,
                "max_concurrent": self.max_concurrent}


def parse_limits(spec: str) -> dict[str, Limit]:
    """Parse the ``queue_limits`` setting: ``"emails:rate=50,burst=10;pdf:max_concurrent=2"``."""
    limits: dict[str, Limit] = {}
    for part in spec.replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        queue, sep, body = part.partition(":")
        if not sep or not queue.strip():
            raise ConfigError(f"queue_limits: expected QUEUE:key=value,... in {part!r}")
        values: dict[str, Any] = {}
        for item in body.split(","):
            key, eq, raw = item.strip().partition("=")
            key = key.strip()
            if not eq or key not in ("rate", "burst", "max_concurrent"):
                raise ConfigError(f"queue_limits: unknown or malformed item {item.strip()!r} for {queue}")
            try:
                values[key] = int(raw) if key == "max_concurrent" else float(raw)
            except ValueError:
                raise ConfigError(f"queue_limits: {key} of {queue} must be a number, not {raw!r}") from None
        try:
            limits[queue.strip()] = Limit(**values)
        except InvalidField as err:
            raise ConfigError(f"queue_limits for {queue}: {err.message}") from None
    return limits


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class QueueLimits(EngineListener):
    """Every queue limit of one node, and the buckets that enforce them.
    Listens to the engine (:meth:`queue_forgotten`) once the core adds it."""

    def __init__(self, engine: Engine, supervisor: Supervisor, limits: dict[str, Limit] | None = None) -> None:
        self.engine = engine
        self.supervisor = supervisor
        self.limits: dict[str, Limit] = {}
        self.paused: dict[str, float] = {}         # queue -> when it was paused (unix time)
        self.share = 1.0
        self.nodes = 1
        self.active = False
        self.wake_at: float | None = None
        self.throttled: Tally[str] = Tally()   # times a queue was held back (metrics); queues the engine keeps
        # Queues held back since a task of theirs last started or became ready,
        # already counted in ``throttled`` (at most the limited queues: cleared with their limits).
        self._held: set[str] = set()
        self._buckets: dict[str, _Bucket] = {}
        self._timer: Any = None
        self._timer_at = math.inf
        for queue, limit in (limits or {}).items():
            self.set(queue, limit, 0.0)

    # -- configuration -----------------------------------------------------------
    def set(self, queue: str, limit: Limit, now: float) -> None:
        """Install or change ``queue``'s limit; effective for the next pump.
        At most ``MAX_LIMITED`` queues have limits at once (InvalidField past
        it, nothing changed): each holds a bucket, and an admin script
        looping over queue names must not grow the node without bound."""
        if queue not in self.limits and len(self.limits) >= MAX_LIMITED:
            raise InvalidField(f"{MAX_LIMITED} queues have limits already; clear one first (DELETE "
                               "/queues/{queue}/limits)", field="queue")
        self.limits[queue] = limit
        size = self._size(limit)
        bucket = self._buckets.get(queue)
        if bucket is None:
            self._buckets[queue] = _Bucket(size, now)
        else:
            self._refill(queue, limit, bucket, now)
            bucket.tokens = min(bucket.tokens, size)
        self.active = True
        logger.info("queue %s limits: %s (node share %.3g)", queue, limit.to_dict(), self.share)

    def clear(self, queue: str) -> bool:
        removed = self.limits.pop(queue, None) is not None
        self._buckets.pop(queue, None)
        self._held.discard(queue)
        self.active = bool(self.limits or self.paused)
        return removed

    def pause(self, queue: str, now: float) -> bool:
        """Start no task of ``queue`` until :meth:`resume`. Idempotent; True if
        it was running before. At most ``MAX_PAUSED`` queues are paused at once."""
        if queue in self.paused:
            return False
        if len(self.paused) >= MAX_PAUSED:
            raise InvalidField(f"{MAX_PAUSED} queues are paused already; resume one first", field="queue")
        self.paused[queue] = now
        self.active = True
        logger.info("queue %s paused", queue)
        return True

    def resume(self, queue: str) -> bool:
        """Let ``queue`` start tasks again. Idempotent; True if it was paused."""
        if self.paused.pop(queue, None) is None:
            return False
        self.active = bool(self.limits or self.paused)
        logger.info("queue %s resumed", queue)
        return True

    def get(self, queue: str) -> Limit | None:
        return self.limits.get(queue)

    def queue_forgotten(self, queue: str) -> None:
        """The engine dropped ``queue``'s counters (it holds nothing, and the
        node saw more than 100 queues): its throttled count goes too, and
        with it its ``miyaq_queue_throttled_total`` series, as the queue's
        other series do (before 2026-12-05 it stayed: one series for every
        queue ever throttled). Its limits and pause, if any, stay."""
        self.throttled.pop(queue, None)
        self._held.discard(queue)

    def task_ready(self, task: Task) -> None:
        """A task of ``task.queue`` entered its ready lane: if its limits
        hold the queue back, that is a new hold-back, counted when the
        dispatcher next finds it (:meth:`_hold_back`)."""
        if self._held:
            self._held.discard(task.queue)

    def set_share(self, nodes: int) -> None:
        """Cluster hook: this node enforces 1/``nodes`` of every limit."""
        self.nodes = max(1, nodes)
        self.share = 1.0 / self.nodes
        for queue, bucket in self._buckets.items():
            bucket.tokens = min(bucket.tokens, self._size(self.limits[queue]))

    def describe(self, queue: str) -> dict[str, Any] | None:
        limit = self.limits.get(queue)
        if limit is None:
            return None
        info = limit.to_dict()
        info["node_share"] = self.share
        bucket = self._buckets.get(queue)
        if bucket is not None and limit.rate is not None:
            self._refill(queue, limit, bucket, wall())
            info["tokens"] = round(bucket.tokens, 3)
        return info

    # -- enforcement (called by the dispatcher) ------------------------------------
    def _size(self, limit: Limit) -> float:
        size = limit.bucket_size
        if math.isinf(size) or size == 0:
            return size
        return max(1.0, size * self.share)

    def _refill(self, queue: str, limit: Limit, bucket: _Bucket, now: float) -> None:
        if limit.rate and now > bucket.stamp:
            bucket.tokens = min(self._size(limit), bucket.tokens + (now - bucket.stamp) * limit.rate * self.share)
        bucket.stamp = now

    @staticmethod
    def queue_of(lane: str) -> str:
        """The queue a lane belongs to (no cache: one per lane name ever seen
        grew without bound as producers made up queue names)."""
        return lane.removeprefix(WEBHOOK_LANE_PREFIX)

    def open(self, lanes: list[str], now: float) -> list[str]:
        """The lanes among ``lanes`` that hold ready work and may start one
        more task now. Sets :attr:`wake_at` for a queue held back by its rate."""
        limits = self.limits
        ready = self.engine.ready.lanes
        out = []
        for lane_name in lanes:
            lane = ready.get(lane_name)
            if lane is None or not lane.count:
                continue
            queue = self.queue_of(lane_name)
            if queue in self.paused:
                continue   # resume() marks the dispatcher pending
            limit = limits.get(queue)
            if limit is None:
                out.append(lane_name)
                continue
            if limit.max_concurrent is not None:
                cap = math.ceil(limit.max_concurrent * self.share) if limit.max_concurrent else 0
                counts = self.engine.counts.get(queue)
                if counts is not None and counts[RUNNING] >= cap:
                    self._hold_back(queue)
                    continue   # a task of this queue ending marks the dispatcher pending
            if limit.rate is not None:
                bucket = self._buckets[queue]
                self._refill(queue, limit, bucket, now)
                if bucket.tokens < 1.0:
                    self._hold_back(queue)
                    rate = limit.rate * self.share
                    if rate > 0 and self._size(limit) >= 1.0:
                        at = now + (1.0 - bucket.tokens) / rate
                        if self.wake_at is None or at < self.wake_at:
                            self.wake_at = at
                    continue
            out.append(lane_name)
        return out

    def _hold_back(self, queue: str) -> None:
        """The dispatcher, with a consumer free to take a task of ``queue``,
        found the queue at its rate or ``max_concurrent`` limit: counted in
        :attr:`throttled` once, not again until a task of the queue starts
        (:meth:`acquire`) or becomes ready (:meth:`task_ready`). Before
        2026-12-06 every check counted -- each take of each consumer in each
        pump: a queue held back gained nothing while the node was idle and
        403 while another, unlimited queue ran 400 tasks."""
        if queue not in self._held:
            self._held.add(queue)
            self.throttled[queue] += 1

    def acquire(self, queue: str) -> None:
        """Spend one token of ``queue`` (a task of it was just started); a
        hold-back of it from now on is a new one."""
        self._held.discard(queue)
        limit = self.limits.get(queue)
        if limit is not None and limit.rate is not None:
            self._buckets[queue].tokens -= 1.0

    def limits_running(self, queue: str) -> bool:
        """True if a task of ``queue`` ending may let another start."""
        limit = self.limits.get(queue)
        return limit is not None and limit.max_concurrent is not None

    # -- the refill timer ------------------------------------------------------------
    def arm_wake(self, callback: Callable[[], None], now: float) -> None:
        """Call ``callback`` (in a supervised greenlet: an exception is logged
        and counted) at :attr:`wake_at`, replacing a later timer; one timer at
        most. Clears :attr:`wake_at`."""
        at, self.wake_at = self.wake_at, None
        if at is None or at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.kill(block=False)
        self._timer_at = at
        self._timer = self.supervisor.spawn_later(max(0.0, at - now), "rate-limit refill", self._fire, callback,
                                                  policy=LOG)

    def _fire(self, callback: Callable[[], None]) -> None:
        self._timer, self._timer_at = None, math.inf
        callback()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.kill(block=False)
            self._timer, self._timer_at = None, math.inf
