"""Operating a node over HTTP: status, queues and their limits, the
dead-letter queue, Prometheus metrics and the OpenAPI document.

``GET /status`` is dispenserd-style: the node, the ring (a standalone node
is its own leader, epoch 1), totals and per-queue queued / running / idle
workers. Limits changed with ``PUT /queues/{queue}/limits`` apply at the
next dispatch and are not persisted: put lasting limits in ``queue_limits``.
``POST /queues/{queue}/pause`` stops a queue's dispatch on this node (its
submits are still accepted) until ``POST /queues/{queue}/resume``.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST

from miyaq.constants import HTTP_ACK_WAIT
from miyaq.core.limits import Limit
from miyaq.core.view_rows import json_in_slices
from miyaq.errors import InvalidField
from miyaq.gateway.answers import least_listing
from miyaq.gateway.openapi import build
from miyaq.gateway.permissions import may
from miyaq.gateway.request import Request, Response, json_response
from miyaq.protocol import fields as f
from miyaq.protocol.taskspec import check_queue
from miyaq.runtime import green, wall
from miyaq.security.roles import Role

if TYPE_CHECKING:
    from .server import Gateway

STATES = ("scheduled", "ready", "running", "retrying", "dead")


class AdminApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.core = gateway.core
        self.engine = gateway.core.engine
        self.limits = gateway.core.limits
        self._openapi: bytes | None = None

    # -- status and queues ---------------------------------------------------------
    def status(self, request: Request) -> Response:
        """The node's status; ``workers`` (the list) for an ``admin`` token
        only, as ``GET /workers`` (everyone is admin without tokens): a
        producer or worker token gets their number (``totals.workers``).
        Built and encoded in its turn (:mod:`miyaq.core.view_lane`), a
        slice of queues at a time (:mod:`miyaq.core.view_rows`)."""
        return self.core.views.run(lambda: self._status(request), self._role_of(request))

    def _status(self, request: Request) -> Response:
        now = wall()
        status = self.gateway.status(now)
        caller = self.gateway.auth.caller(request)
        if caller is not None and may(caller, Role.ADMIN):
            status["workers"] = self.core.workers_list()
        else:
            status.pop("workers", None)
        status["ring"] = self.gateway.metrics.cluster.view()
        deliverer = self.gateway.deliverer
        status["webhooks"] = {"in_flight": deliverer.in_flight(), "concurrency": deliverer.concurrency,
                              "in_flight_total": deliverer.in_flight_total(),
                              "max_in_flight": deliverer.max_in_flight,
                              "idle_connections": deliverer.outbound.connections.idle_connections(),
                              "signing_secrets": signer.count if (signer := self.gateway.signer) else 0}
        return _json_view(json_in_slices(status, self.core.views.slices))

    def queue_rows(self, only: str | None = None) -> list[dict[str, Any]]:
        """Every queue's row as ``GET /queues`` shows it (or only ``only``'s),
        in the view's slices (:meth:`ViewLane.slices`): each row read at
        once, two rows maybe a few slices apart; the workers per queue and
        the webhooks in flight as the view began. A row for each queue that
        holds tasks (at most ``MAX_QUEUES``), that a registered worker serves
        (at most ``MAX_SERVED_QUEUES``), that has limits or is paused."""
        counts = self.engine.counts
        workers = self.core.workers.workers_by_queue()
        idle = self.core.workers.idle_by_queue(self.core.views.slices, only)
        in_flight = self.gateway.deliverer.in_flight()
        limits = self.limits
        names = [only] if only else sorted(set(counts) | set(workers) | set(limits.limits) | set(limits.paused))
        rows = []
        for chunk in self.core.views.slices(names):     # the loop's others run between slices
            for queue in chunk:
                row: dict[str, Any] = {"name": queue}
                states = counts.get(queue)
                for state in STATES:
                    row[state] = states[state] if states is not None else 0
                row["workers"] = workers.get(queue, 0)
                row["idle"] = idle.get(queue, 0)
                row["webhooks_in_flight"] = in_flight.get(queue, 0)
                row["limits"] = limits.describe(queue)
                row["paused"] = queue in limits.paused
                rows.append(row)
        return rows

    def queues(self, request: Request) -> Response:
        """Every queue's row, built and encoded in its turn (:mod:`miyaq.core.view_lane`),
        a slice of queues at a time (:mod:`miyaq.core.view_rows`)."""
        return self.core.views.run(lambda: _json_view(json_in_slices({"queues": self.queue_rows()},
                                                                      self.core.views.slices)),
                                   self._role_of(request))

    def _role_of(self, request: Request) -> str:
        """Whose turn a view is (:mod:`miyaq.core.view_lane`): the token's role ("open" without tokens)."""
        role = self.gateway.auth.caller(request)
        return role.value if role is not None else "open"

    def queue(self, request: Request) -> Response:
        return json_response(self.queue_rows(check_queue(request.params["queue"]))[0])

    def workers(self, request: Request) -> Response:
        request.only_args("limit")
        limit = request.arg_integer("limit", 1000, 1, 10_000)
        return json_response({"node": self.gateway.config.id, "workers": self.core.workers.describe(limit)})

    # -- pause -----------------------------------------------------------------------
    def set_paused(self, queue: str, paused: bool) -> dict[str, Any]:
        """Pause or resume ``queue`` on this node: ``{"queue", "paused", "changed"}``."""
        check_queue(queue)
        if paused:
            changed = self.limits.pause(queue, wall())
        else:
            changed = self.limits.resume(queue)
        # Resumed, its waiting tasks may start now; paused, the tasks a blocked
        # worker passed over in it are no longer ahead of its own elsewhere.
        self.core.dispatcher.queue_limits_changed(queue)
        self.gateway.redispatch()
        return {"queue": queue, "paused": paused, "changed": changed}

    def pause(self, request: Request) -> Response:
        return json_response(self.set_paused(request.params["queue"], True))

    def resume(self, request: Request) -> Response:
        return json_response(self.set_paused(request.params["queue"], False))

    # -- limits ----------------------------------------------------------------------
    def get_limits(self, request: Request) -> Response:
        queue = check_queue(request.params["queue"])
        return json_response({"queue": queue, "limits": self.limits.describe(queue)})

    def put_limits(self, request: Request) -> Response:
        queue = check_queue(request.params["queue"])
        body = request.json_object()
        unknown = sorted(set(body) - {"rate", "burst", "max_concurrent"})
        if unknown:
            raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
        limit = Limit(rate=body.get("rate"), burst=body.get("burst"), max_concurrent=body.get("max_concurrent"))
        if limit.rate is None and limit.max_concurrent is None:
            raise InvalidField("give 'rate' and/or 'max_concurrent' (DELETE removes a queue's limits)",
                               field="rate")
        self.limits.set(queue, limit, wall())
        self.core.dispatcher.queue_limits_changed(queue)    # a looser limit may let waiting tasks start now
        self.gateway.redispatch()
        return json_response({"queue": queue, "limits": self.limits.describe(queue)})

    def delete_limits(self, request: Request) -> Response:
        queue = check_queue(request.params["queue"])
        removed = self.limits.clear(queue)
        self.core.dispatcher.queue_limits_changed(queue)
        self.gateway.redispatch()
        return json_response({"queue": queue, "removed": removed})

    # -- dead letters ----------------------------------------------------------------
    def _scope(self, body: dict[str, Any]) -> tuple[str | None, list[str] | None]:
        unknown = sorted(set(body) - {"queue", "ids"})
        if unknown:
            raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
        queue = body.get("queue")
        if queue is not None:
            check_queue(queue)
        return queue, f.string_list(body, "ids", None, max_items=10_000, max_len=64)

    def dead_list(self, request: Request) -> Response:
        request.only_args("queue", "limit")
        queue = request.arg("queue") or None
        if queue is not None:
            check_queue(queue)
        limit = request.arg_integer("limit", 100, 1, 10_000)
        tasks = self.engine.dead_listed(queue, limit)
        self.gateway.room_for(request, least_listing(tasks))     # refused unbuilt if it could not be held
        return json_response({"tasks": [task.header() for task in tasks]})

    def retry_dead(self, queue: str | None, ids: list[str] | None) -> list[str]:
        """Put dead tasks back (``ids``, or every one of ``queue``, or all); the ids retried,
        once the node's log has them (as a ZeroMQ DEAD retry's answer). Refused
        ``busy`` (``storage``), nothing changed, while the log cannot be written."""
        endpoint = self.core.endpoint
        endpoint.check_writable()
        if ids is None:
            ids = self.engine.retryable_dead(queue)     # not those whose arguments were lost
        retried = self.engine.dead_retry(ids, wall(), green.FairShare().check)    # yields to the hub as it goes
        self.gateway.redispatch()
        if retried:
            endpoint.wait_stored(HTTP_ACK_WAIT, f"{len(retried)} dead tasks are retried")
        return retried

    def purge_dead(self, queue: str | None, ids: list[str] | None) -> int:
        """Drop dead tasks for good (same scopes as :meth:`retry_dead`); how many,
        once the node's log has it (refused as :meth:`retry_dead` is)."""
        endpoint = self.core.endpoint
        endpoint.check_writable()
        purged = self.engine.dead_purge(queue, ids, green.FairShare().check)
        if purged:
            endpoint.wait_stored(HTTP_ACK_WAIT, f"{purged} dead tasks are purged")
        return purged

    def dead_retry(self, request: Request) -> Response:
        queue, ids = self._scope(request.json_object(required=False))
        return json_response({"retried": self.retry_dead(queue, ids)})

    def dead_purge(self, request: Request) -> Response:
        queue, ids = self._scope(request.json_object(required=False))
        return json_response({"purged": self.purge_dead(queue, ids)})

    # -- documents -------------------------------------------------------------------
    def metrics(self, request: Request) -> Response:
        return Response(200, self.gateway.metrics.render(), [("Content-Type", CONTENT_TYPE_LATEST)])

    def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = json.dumps(build(), indent=1).encode()
        return Response(200, self._openapi, [("Content-Type", "application/json")])


def _json_view(body: bytes) -> Response:
    """A view written by :func:`~miyaq.core.view_rows.json_in_slices` (as ``json_response`` writes it)."""
    return Response(200, body, [("Content-Type", "application/json")])
