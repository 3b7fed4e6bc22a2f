"""The task record a node holds, and the task states.

A :class:`Task` is a plain slotted object: the node reads a small header
(queue, priority, times, limits) and never decodes ``body``, the producer's
opaque msgpack payload. One object per live task, so its size is the node's
memory per task (docs/semantics.md, "Capacity").
"""
from __future__ import annotations

from typing import Any

SCHEDULED = "scheduled"   # waiting for its eta
READY = "ready"           # in its queue, waiting for a consumer
RUNNING = "running"       # leased to a consumer
RETRYING = "retrying"     # failed; waiting for the backoff to pass
DONE = "done"
DEAD = "dead"             # retries exhausted or rejected; in the dead-letter queue
CANCELLED = "cancelled"
EXPIRED = "expired"       # ttl passed before it started

WEBHOOK_LANE_PREFIX = "@http/"   # '@' is not allowed in queue names

LIVE_STATES = (SCHEDULED, READY, RUNNING, RETRYING)
FINAL_STATES = (DONE, CANCELLED, EXPIRED)
ALL_STATES = LIVE_STATES + (DEAD,) + FINAL_STATES


class Task:
    """One task as a node holds it. ``attempt`` counts starts, from 0."""

    __slots__ = (
        "id", "queue", "name", "url", "method", "body", "priority", "eta", "created",
        "expires", "max_retries", "backoff", "backoff_max", "timeout", "key",
        "replicas", "at_most_once", "state", "attempt", "seq", "lease_end",
        "consumer", "error", "timer_gen", "ready_gen", "rank", "holders", "meta", "lane",
        "standby", "lessees",
    )

    def __init__(self, id: str, queue: str, name: str | None, body: bytes, *,
                 url: str | None = None, method: str = "POST", priority: int = 0,
                 eta: float = 0.0, created: float = 0.0, expires: float = 0.0,
                 max_retries: int = 3, backoff: float = 1.0, backoff_max: float = 300.0,
                 timeout: float = 300.0, key: str | None = None, replicas: int = 1,
                 at_most_once: bool = False, meta: dict[str, Any] | None = None) -> None:
        self.id = id
        self.queue = queue
        self.name = name
        self.url = url
        self.method = method
        self.body = body
        self.priority = priority
        self.eta = eta
        self.created = created
        self.expires = expires          # 0: never
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.key = key
        self.replicas = replicas
        self.at_most_once = at_most_once
        self.state = SCHEDULED
        self.attempt = 0
        self.seq = 0                    # FIFO order within a priority
        self.lease_end = 0.0
        self.consumer: Any = None       # who runs it while RUNNING
        self.error: dict[str, Any] | None = None
        self.timer_gen = 0              # invalidates stale timer entries
        self.ready_gen = 0              # invalidates stale ready-queue entries
        self.rank = 0                   # this node's rank among the holders
        # A standby copy asks the earlier holders before it runs (cluster).
        self.standby = False
        self.holders: tuple[str, ...] = ()
        # (attempt, who it was leased to) of the last few attempts: only they
        # may report on the task (miyaq.core.engine, "Who may report").
        self.lessees: list[tuple[int, str]] | None = None
        self.meta = meta                # webhook headers and other rare extras
        # The ready lane: named tasks wait in their queue's lane, webhook tasks
        # in a lane of their own that only the webhook deliverer consumes.
        self.lane = queue if url is None else WEBHOOK_LANE_PREFIX + queue

    def header(self) -> dict[str, Any]:
        """Everything but the payload, as the protocol and the HTTP API show it."""
        info: dict[str, Any] = {
            "id": self.id, "queue": self.queue, "state": self.state, "priority": self.priority,
            "eta": self.eta, "created": self.created, "attempt": self.attempt,
            "max_retries": self.max_retries, "timeout": self.timeout,
        }
        if self.name is not None:
            info["name"] = self.name
        if self.url is not None:
            info["url"] = self.url
        if self.key is not None:
            info["key"] = self.key
        if self.expires:
            info["expires"] = self.expires
        if self.state == RUNNING:
            info["lease_end"] = self.lease_end
        if self.error is not None:
            info["error"] = self.error
        if self.holders:
            info["holders"] = list(self.holders)
        return info

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.queue}/{self.name or self.url} {self.state} attempt={self.attempt}>"
