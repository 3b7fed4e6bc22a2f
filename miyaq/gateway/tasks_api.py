"""The JSON task API: named tasks from any language, for Python workers.

``POST /tasks`` takes every option of :meth:`miyaq.Client.submit` (queue,
priority, countdown/eta, ttl, max_retries, backoff, backoff_max, timeout,
key, replicas, at_most_once, offset) plus ``name``, ``args`` and ``kwargs``; args
and kwargs become the msgpack ``[args, kwargs]`` body Python workers expect.
``GET /tasks/{id}`` is a task's status, ``GET /tasks/{id}/result`` waits
(``?timeout=`` seconds, a long-poll; a HEAD never waits, whatever its
``timeout``) for its outcome with the result decoded to JSON,
``DELETE /tasks/{id}`` cancels it, ``GET /tasks`` lists tasks.

A result asked of a holder whose copy of an at-most-once task was dropped
because another holder started it is a 404, as ZeroMQ RESULT's
``not_found``: the outcome is on that holder (before 2026-12-05 it was a
200 ``{"state": "started-elsewhere", "done": false}``).

A task this node does not know, asked (status, result, cancel) of a node
that is not one of the holders the ring gives its id -- a member that
coordinated a submit it holds no copy of, a node outside the ring (``miyaq
leave``) -- is a 404 ``not_found`` that says so and names the holders'
HTTP URLs, also as the field ``holders`` (:meth:`TasksApi.not_held`); the
gateway does not ask them itself. On a holder the 404 is as it was: no
``holders``. Before 2026-12-06 every one was a bare "no task": an HTTP
client had no way to find the task. A task submitted with a ``key`` (or a
``replicas`` of its own) is placed by those: the caller passes them as
query parameters (``?key=...&replicas=...``) for the holders named to be
the task's.
"""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from miyaq.config import MAX_REPLICAS
from miyaq.constants import HTTP_ACK_WAIT, MAX_LONG_POLL, QUERY_PATIENCE_MAX
from miyaq.errors import InvalidField, MiyaqError, NotFound, Timeout
from miyaq.core.gate import RECONCILING
from miyaq.core.result_answers import outcome, ran_elsewhere, unknown_here
from miyaq.core.waiters import NOWHERE
from miyaq.protocol.commands import DUPLICATE
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.runtime import green, monotonic, wall
from miyaq.protocol.taskspec import MAX_KEY, check_id, check_queue, task_from_wire
from miyaq.store.task import ALL_STATES, DEAD, FINAL_STATES
from miyaq.gateway import convert
from miyaq.gateway.answers import least_listing, least_result
from miyaq.gateway.errors import ClientClosedRequest
from miyaq.gateway.hangup import wait_unless_hung_up
from miyaq.gateway.submit import submit_task
from miyaq.gateway.auth import bearer_token
from miyaq.gateway.request import Request, Response, json_response
from miyaq.gateway.tokens import TokenCheck
from miyaq.security.roles import Role

if TYPE_CHECKING:
    from .server import Gateway

CANCEL_WAIT = QUERY_PATIENCE_MAX + 5.0
"""Seconds ``DELETE /tasks/{id}`` waits for the node's answer at most: a
holder that is not the task's first asks the first holder, and answers
from its own copy when that one is silent past its patience (at most
``QUERY_PATIENCE_MAX``), so this is only a backstop."""

SUBMIT_FIELDS = frozenset({
    "name", "args", "kwargs", "id", "queue", "priority", "countdown", "eta", "ttl", "max_retries",
    "backoff", "backoff_max", "timeout", "key", "replicas", "at_most_once", "offset",
})


#: A result this large or larger is converted to JSON once for every caller
#: shown it while it is the last large one shown (:meth:`TasksApi.shown`).
SHARED_VIEW_FROM = 64 * 1024


class TasksApi:
    def __init__(self, gateway: Gateway) -> None:
        #: The last answer with a large result: (task id, its outcome, the response).
        self._shown: tuple[str, dict[str, Any], Response] | None = None
        self.gateway = gateway
        self.config = gateway.config
        self.engine = gateway.core.engine
        self.endpoint = gateway.core.endpoint
        self.waiters = gateway.core.waiters

    def submit(self, request: Request) -> Response:
        body = request.json_object()
        unknown = sorted(set(body) - SUBMIT_FIELDS)
        if unknown:
            raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
        if "url" in body:
            raise InvalidField("webhooks are enqueued with POST /queue", field="url")
        wire = {k: v for k, v in body.items() if k not in ("args", "kwargs") and v is not None}
        if "name" not in wire:
            raise InvalidField("field 'name' (the handler) is required", field="name")
        wire["body"] = convert.check_payload(convert.pack_args(body.get("args"), body.get("kwargs")),
                                             self.config.max_payload, "args", "args and kwargs")
        wire.setdefault("id", uuid.uuid4().hex)
        if "eta" in wire:
            wire["eta"] = convert.timestamp(wire["eta"], "eta")
        now = wall()
        task = task_from_wire(wire, now, self.config)
        status, detail = submit_task(self.gateway.role.intake, self.gateway.wake, task, now)
        holder = detail if status == DUPLICATE and isinstance(detail, str) else task.id
        return json_response({"id": task.id, "status": status, "task_id": holder}, 202)

    def status(self, request: Request) -> Response:
        task_id = check_id(request.params["id"])
        placement = self.placement(request, task_id)
        try:
            return json_response({"task": self.engine.info(task_id)})
        except NotFound as err:
            raise self.not_held(placement, err.message) from None

    def placement(self, request: Request, task_id: str) -> tuple[str, int]:
        """What the ring places the task by: its ``key`` query parameter
        (1 to 256 characters, as a submit's ``key``) or else its id, and
        its ``replicas`` parameter (1 to ``MAX_REPLICAS``) or else the
        node's. Read, and refused with a 400 naming the parameter, before
        the request does anything."""
        key = request.arg("key")
        if key is not None and not 0 < len(key) <= MAX_KEY:
            raise InvalidField(f"query parameter 'key' must have 1 to {MAX_KEY} characters", field="key")
        replicas = request.arg_integer("replicas", self.config.replicas, 1, MAX_REPLICAS)
        return (key if key is not None else task_id), replicas

    def not_held(self, placement: tuple[str, int], message: str) -> MiyaqError:
        """The 404 for a task unknown here, placed by ``placement`` (its
        routing key -- its ``key``, else its id -- and its ``replicas``,
        :meth:`placement`): as it was (``message``) on a node the ring makes
        one of its holders -- a 503 ``unavailable`` instead while that node
        reconciles (:func:`~miyaq.core.result_answers.unknown_here`), its
        field ``holders`` the other holders' HTTP URLs; else ``message`` saying this node is not one of
        them (or is outside the ring) and naming the holders' HTTP URLs,
        which are also its field ``holders`` (``[]`` when none has an HTTP
        gateway, or the ring is empty).

        Constraints: the holders are by this node's view of the ring, and
        by what the caller said of the task: a task submitted with a ``key``
        or its own ``replicas`` asked without them is placed by its id and
        the node's ``replicas``, so the holders named may not be its. Reads
        the ring only, no I/O."""
        role = self.gateway.role
        node_id = self.config.id
        routing_key, replicas = placement
        members: dict[str, Any] = role.ring_info()["members"]
        holders = role.holders(routing_key, replicas) if members else []
        urls = [members[h]["http"] for h in holders if h in members and members[h].get("http")]
        if node_id in members and node_id in holders:
            others = [members[h]["http"] for h in holders if h != node_id and members[h].get("http")]
            return unknown_here(message, self.gateway.core.gate.holds(RECONCILING), holders=others)
        where = "is outside the ring" if node_id not in members else "is not one of its holders"
        ask = f"ask {', '.join(urls)}" if urls else "no holder has an HTTP gateway the ring knows"
        return NotFound(f"{message}: node {node_id} {where}; {ask}", holders=urls)

    def cancel(self, request: Request) -> Response:
        """``cancelled: true`` is answered once the node's log has the
        cancellation, as a ZeroMQ CANCEL's (a 504 ``timeout`` if it does not
        within ``HTTP_ACK_WAIT``: made, not yet on disk); refused 503
        ``busy`` (``storage``), nothing changed, while the log cannot be written.
        In a cluster, on a holder that is not the task's first, the answer
        is the first holder's (``unconfirmed: true`` when only this node's
        copy could answer: docs/semantics.md, "Cancel"), waited for at most
        :data:`CANCEL_WAIT` seconds (the role's own wait ends first)."""
        task_id = check_id(request.params["id"])
        placement = self.placement(request, task_id)
        self.gateway.core.check_writable(task_id)
        box: green.AsyncResult = green.AsyncResult()
        try:
            self.gateway.role.cancel(task_id, wall(), box.set)
        except NotFound as err:
            raise self.not_held(placement, err.message) from None
        try:
            result = box.get(timeout=CANCEL_WAIT)
        except green.Timeout:
            raise Timeout(f"task {task_id}: no answer to the cancel within {CANCEL_WAIT:g}s") from None
        if isinstance(result, MiyaqError):
            if isinstance(result, NotFound):
                raise self.not_held(placement, result.message)
            raise result
        if result["cancelled"]:
            self.endpoint.wait_stored(HTTP_ACK_WAIT, f"task {task_id} is cancelled")
        return json_response({"id": task_id, **result})

    def list(self, request: Request) -> Response:
        request.only_args("queue", "state", "limit")
        queue = request.arg("queue") or None
        if queue is not None:
            check_queue(queue)
        state = request.arg("state")    # empty: refused, as a ZeroMQ TASKS with state "" (not "any state")
        if state is not None and state not in ALL_STATES:
            raise InvalidField(f"query parameter 'state' must be one of {', '.join(ALL_STATES)}", field="state")
        limit = request.arg_integer("limit", 100, 1, 10_000)
        tasks = self.engine.listed(queue, state, limit)
        self.gateway.room_for(request, least_listing(tasks))     # refused unbuilt if it could not be held
        return json_response({"tasks": self.engine.headers(tasks)})

    def result(self, request: Request) -> Response:
        task_id = check_id(request.params["id"])
        placement = self.placement(request, task_id)
        timeout = request.arg_number("timeout", 0.0, 0.0, MAX_LONG_POLL)
        if request.method == "HEAD":
            timeout = 0.0   # a HEAD never waits: it is answered as the GET with timeout=0 would be
        engine = self.engine
        answer: dict[str, Any] | None = None
        stone = engine.result(task_id)
        if stone is not None:
            if stone.state == STARTED_ELSEWHERE:
                raise ran_elsewhere(task_id)
            answer = outcome(stone)
        elif task_id in engine.table.dead:
            answer = outcome(engine.table.dead[task_id])
        elif task_id not in engine.table.live:
            raise self.not_held(placement, f"no task {task_id}")
        elif timeout > 0:
            token = TokenCheck(self.gateway.auth.tokens, bearer_token(request), Role.PRODUCER, "wait for results")
            answer = self._wait(task_id, timeout, request.connection, token)
            if answer is not None and answer.get("state") == STARTED_ELSEWHERE:
                raise ran_elsewhere(task_id)
        if answer is None or answer.get("timeout"):
            state = engine.live_state(task_id)
            if state is None:       # handed off while we waited: another holder has it
                raise self.not_held(placement, f"no task {task_id} here any more (moved to other holders)")
            answer = {"state": state}
        return self.shown(task_id, answer, request)

    def shown(self, task_id: str, answer: dict[str, Any], request: Request) -> Response:
        """The response showing ``answer``: one with a result of
        ``SHARED_VIEW_FROM`` bytes or more is converted once for all who ask
        while it is the last such shown (the same result object, state and
        error). Each conversion decodes the result, walks it and writes its
        JSON: before 2026-12-07 each caller's, and a result of a million
        empty arrays (1 MB) took 0.75 s of the node's one thread per caller
        -- 500 long-polls of one task took minutes of it when it finished.
        One to be converted for ``request`` is refused first if the
        gateway has no room for its answer (:meth:`Gateway.room_for`)."""
        raw = answer.get("result")
        if not isinstance(raw, bytes) or len(raw) < SHARED_VIEW_FROM:
            return json_response(_view(task_id, answer))
        kept = self._shown
        if (kept is not None and kept[0] == task_id and kept[1].get("result") is raw
                and kept[1].get("state") == answer.get("state") and kept[1].get("error") == answer.get("error")):
            return Response(kept[2].status, kept[2].body, list(kept[2].headers))
        self.gateway.room_for(request, least_result(len(raw)))
        response = json_response(_view(task_id, answer))
        self._shown = (task_id, answer, response)
        return response

    def _wait(self, task_id: str, timeout: float, connection: Any | None,
              token: TokenCheck | None = None) -> dict[str, Any] | None:
        """The task's outcome, or None if handed off meanwhile; its wait is
        dropped if the client hangs up first (:mod:`miyaq.gateway.hangup`).
        A wait whose ``token`` a reload removed meanwhile is answered 401
        (:class:`~miyaq.gateway.tokens.TokenCheck`), not with the outcome:
        the reload's hook ends it at once (Gateway.tokens_revoked), and an
        outcome that came in the instant before is not shown."""
        box: green.AsyncResult = green.AsyncResult()

        def answer(body: dict[str, Any] | None) -> None:     # None: handed off meanwhile
            if not box.ready():
                box.set(body)

        def refuse(err: MiyaqError) -> None:     # the node stops (shutting_down): raised below
            if not box.ready():
                box.set(err)

        self.waiters.wait_result(task_id, monotonic() + timeout, answer, token.origin if token else NOWHERE, refuse)
        long_polls = self.gateway.long_polls
        long_polls.add(box)
        try:
            # the housekeeping sweep answers at the deadline; the margin covers its period
            if not wait_unless_hung_up(box, timeout + 1.0, connection):
                self.waiters.drop_result(task_id, answer)
                raise ClientClosedRequest(f"the client closed its connection while waiting for task {task_id}")
        finally:
            long_polls.discard(box)
        value = box.value if box.ready() else None
        if not isinstance(value, MiyaqError) and token is not None:
            value = token.refusal() or value
        if isinstance(value, MiyaqError):      # the node stops (Waiters.stop, LongPolls.end); a revoked token
            self.waiters.drop_result(task_id, answer)
            raise value
        return value


def _view(task_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    state = answer.get("state", "pending")
    view: dict[str, Any] = {"id": task_id, "state": state, "done": state in FINAL_STATES or state == DEAD}
    view.update(convert.result_fields(answer.get("result")))
    if answer.get("error"):
        view["error"] = answer["error"]
    return view
