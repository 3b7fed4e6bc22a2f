"""Pull consumers over HTTP (dispenserd's receive_block / receive_noblock).

``POST /receive`` takes one ready task from ``queues``: at once
(``timeout`` 0, also ``POST /receive_noblock``) or waiting up to ``timeout``
seconds (a long-poll; ``POST /receive_block`` defaults to 30 s). The task is
leased to the caller until its ``lease_end``; ``POST /tasks/{id}/ack``,
``/nack`` and ``/touch`` (with the ``attempt`` received) finish, fail or
extend it. A lease that runs out puts the task back (attempt spent), so a
caller that disappears loses nothing. A long-poll whose client hangs up is
dropped at once, and a task leased to it in that instant given back
unspent (:mod:`miyaq.gateway.hangup`).

Receives go through the dispatcher like any consumer, so queue rate limits
and concurrency caps hold for them too.

Who leased a task is the caller's bearer token (:func:`principal`): ack,
nack and touch apply only to a lease of the same token, as over ZeroMQ only
the key that received a task reports on it. Without tokens every caller is
one (``http``).

A task is leased only once its answer is made: the JSON is built while the
dispatcher hands the task over, and a task whose answer cannot be built is
given back at once with no attempt spent (the dispatcher's refusal path).
Payloads always convert (:func:`~miyaq.gateway.convert.payload_fields`
falls back to ``body_base64``), so that is a bug's safety net.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from miyaq.constants import HTTP_ACK_WAIT, MAX_LONG_POLL, MAX_RETRY_DELAY
from miyaq.errors import InvalidField, MiyaqError, NotFound, ShuttingDown
from miyaq.core.consumers import NOWHERE, PullConsumer
from miyaq.protocol import fields as f
from miyaq.protocol.failurespec import failure_from_wire
from miyaq.protocol.taskspec import check_id, receive_queues
from miyaq.runtime import green, monotonic, wall
from miyaq.gateway import convert
from miyaq.gateway.auth import BearerAuth, bearer_token
from miyaq.gateway.errors import ClientClosedRequest
from miyaq.gateway.hangup import hung_up, wait_unless_hung_up
from miyaq.gateway.request import Request, Response, json_response
from miyaq.gateway.tokens import TokenCheck
from miyaq.security.roles import Role
from miyaq.store.task import DEAD, FINAL_STATES, RUNNING

if TYPE_CHECKING:
    from .server import Gateway

logger = logging.getLogger(__name__)

BLOCK_DEFAULT = 30.0
#: The fields each request's JSON body may hold (any other is a 400).
RECEIVE_FIELDS = frozenset({"queues", "timeout"})
ACK_FIELDS = frozenset({"attempt", "result"})
NACK_FIELDS = frozenset({"attempt", "error", "retry", "delay", "returned"})
TOUCH_FIELDS = frozenset({"attempt"})
#: Who an HTTP pull consumer is on a gateway without tokens (PullConsumer's
#: default principal): ack, nack and touch apply only to tasks leased over
#: HTTP, never to a worker's.
HTTP_PULL = "http"


def principal(auth: BearerAuth, request: Request) -> str:
    """Who an HTTP pull consumer is: ``http:`` and a name of its bearer
    token (:meth:`~miyaq.gateway.tokens.TokenTable.lessee_name`, never the
    token), so a lease one token received is not another's to finish;
    ``http`` on a gateway without tokens, where every caller is the same.
    The name is the same on every node, so a consumer may ack through
    another node that holds the task (behind a load balancer), as before."""
    if not auth.enabled:
        return HTTP_PULL
    return f"{HTTP_PULL}:{auth.tokens.lessee_name(bearer_token(request))}"


class PullApi:
    def __init__(self, gateway: Gateway) -> None:
        self.long_polls = gateway.long_polls
        self.core = gateway.core
        self.engine = gateway.core.engine
        self.endpoint = gateway.core.endpoint
        self.dispatcher = gateway.core.dispatcher
        self.waiters = gateway.core.waiters
        self.max_payload = gateway.config.max_payload
        self.auth = gateway.auth

    # -- receive -------------------------------------------------------------------
    def receive(self, request: Request) -> Response:
        return self._receive(request, 0.0)

    def receive_noblock(self, request: Request) -> Response:
        return self._receive(request, 0.0, blocking=False)

    def receive_block(self, request: Request) -> Response:
        return self._receive(request, BLOCK_DEFAULT)

    def _receive(self, request: Request, default_timeout: float, blocking: bool = True) -> Response:
        body = _fields(request, RECEIVE_FIELDS)
        queues = receive_queues(body)
        timeout = f.number(body, "timeout", default_timeout, hi=MAX_LONG_POLL) if blocking else 0.0
        by = principal(self.auth, request)
        leased: list[tuple[str, int]] = []
        answer = self._take(queues, timeout, by, request.connection, self._token_check(request), leased)
        if answer is None:
            return json_response({"task": None})
        if isinstance(answer, MiyaqError):
            raise answer
        return LeaseAnswer(answer, lambda: self.give_back(leased, by))

    def give_back(self, leased: list[tuple[str, int]], by: str) -> None:
        """The task leased to a receive whose answer was refused unsent (the
        gateway's answer budget): back to its queue as it was, no attempt spent."""
        if leased:
            self.engine.give_back(*leased[0], by, wall())

    def _token_check(self, request: Request) -> TokenCheck:
        """Where this request's long-poll is parked in the waiters (its
        token's :meth:`~miyaq.gateway.tokens.TokenTable.wait_key`: a reload
        that removes the token or takes its worker role ends it, 401 or
        403) and how it looks at its token again when it ends."""
        return TokenCheck(self.auth.tokens, bearer_token(request), Role.WORKER, "receive tasks")

    def _take(self, queues: list[str], timeout: float, by: str, connection: Any | None = None,
              token: TokenCheck | None = None, leased: list[tuple[str, int]] | None = None
              ) -> bytes | MiyaqError | None:
        """The JSON answer for one task leased to this request (as ``by``), None if none
        came in time, or the error that made one be given back unleased. A
        long-poll whose client hangs up (:mod:`miyaq.gateway.hangup`) is
        dropped, and a task leased to it just before is given back, no
        attempt spent: :class:`ClientClosedRequest`. So is one whose
        ``token`` was removed, or lost the worker role, while it waited: it
        is answered 401 or 403 (:func:`~miyaq.gateway.tokens.parked_refusal`),
        whether the reload's hook ended it (Gateway.tokens_revoked: nothing
        was leased) or a task was leased to it in the instant before.
        ``leased``: given, the (id, attempt) of the task leased is put in it."""
        dispatcher = self.dispatcher
        now = wall()
        box: green.AsyncResult = green.AsyncResult()
        if leased is None:
            leased = []

        def answer(info: dict[str, Any] | None) -> bool:
            if box.ready():
                return False   # this request has given up: the dispatcher puts the task back
            if info is None:
                box.set(None)
                return True
            try:
                box.set(_task_answer(info))
            except Exception:   # a header JSON cannot hold: give it back, no attempt spent
                logger.exception("HTTP receive: task %s cannot be shown as JSON; left unleased", info.get("id"))
                box.set(MiyaqError(f"task {info.get('id')} cannot be shown as JSON; it was left in its queue"))
                return False
            leased.append((info["id"], info["attempt"]))
            return True

        def refuse(err: MiyaqError) -> None:     # the node stops: 503 shutting_down at once
            if not box.ready():
                box.set(err)

        if self.core.draining:       # as a ZeroMQ RECEIVE, whatever its timeout
            raise ShuttingDown("node is shutting down and leases no new tasks")
        consumer = PullConsumer(queues, monotonic() + timeout, answer, by, token.origin if token else NOWHERE)
        if timeout > 0:
            self.waiters.wait_pull(consumer, refuse)     # bounded by max_waiters (BUSY beyond)
        else:
            dispatcher.grant(consumer, 0)
        dispatcher.pump(now)
        if timeout <= 0 and not box.ready() and not consumer.running:
            # (a task leased and not answered yet is an at-most-once one whose
            # DISPATCH waits for the log's write of its start: wait for it)
            dispatcher.forget(consumer)
            box.set(None)
            return None
        # the housekeeping sweep answers at the deadline; the margin covers its period
        self.long_polls.add(box)
        try:
            present = wait_unless_hung_up(box, timeout + 1.0, connection)
        finally:
            self.long_polls.discard(box)
        if not box.ready():
            self.waiters.drop_pull(consumer)
            dispatcher.forget(consumer)
            box.set(None)
        if leased and hung_up(connection):     # leased as it went: back to its queue as it was
            self.engine.give_back(*leased[0], by, wall())
            present = False
        if not present:
            raise ClientClosedRequest("the client closed its connection while waiting to receive a task")
        refusal = token.refusal() if token is not None else None
        if refusal is not None:
            if leased:       # leased in the instant before the reload: back to its queue as it was
                self.engine.give_back(*leased[0], by, wall())
            return refusal
        return box.value

    # -- finishing a received task -----------------------------------------------------
    def ack(self, request: Request) -> Response:
        """Finish the attempt named with ``result``. ``ok: true`` is answered
        once the node's log has it (as a ZeroMQ ACK's: a restart cannot undo
        it; a 504 ``timeout`` if the log does not take it within
        ``HTTP_ACK_WAIT``); ``ok: false`` at once. Refused 503 ``busy``
        (``storage``), nothing changed, while the log cannot be written."""
        task_id = check_id(request.params["id"])
        body = _fields(request, ACK_FIELDS)
        attempt = f.integer(body, "attempt", lo=0)
        result = convert.check_payload(msgpack.packb(body.get("result"), use_bin_type=True), self.max_payload,
                                       "result", "field 'result' would")
        self.core.check_writable(task_id)
        ok = self.engine.complete(task_id, attempt, result, wall(), by=principal(self.auth, request))
        if not ok:
            return self.refused(task_id, attempt)
        self.endpoint.wait_stored(HTTP_ACK_WAIT, f"task {task_id} is acknowledged")
        return json_response({"ok": True})

    def nack(self, request: Request) -> Response:
        """Fail the attempt named: retried (``retry``, default true; after
        ``delay`` seconds or the task's backoff) or dead-lettered, with
        ``error`` (a string, cut as a ZeroMQ NACK's message is:
        :func:`~miyaq.protocol.failurespec.failure_from_wire`) as its message. ``returned: true`` gives
        it back unstarted instead, as a ZeroMQ NACK ``returned``: no attempt
        spent, ready again at once; ``error``, ``retry`` and ``delay`` are
        then not read. ``ok: true`` waits for the log, as an ack's."""
        task_id = check_id(request.params["id"])
        body = _fields(request, NACK_FIELDS)
        attempt = f.integer(body, "attempt", lo=0)
        by = principal(self.auth, request)
        if f.boolean(body, "returned", False):
            self.core.check_writable(task_id)
            ok = self.engine.give_back(task_id, attempt, by, wall())
        else:
            text = body.get("error")
            if text is not None and not isinstance(text, str):
                raise InvalidField(f"field 'error' must be a string, not {type(text).__name__}", field="error")
            retry = f.boolean(body, "retry", True)
            delay = f.number(body, "delay", None, hi=MAX_RETRY_DELAY)
            error = failure_from_wire({"type": "Nack", "message": text or ""})   # cut as a ZeroMQ NACK's
            self.core.check_writable(task_id)
            ok = self.engine.fail(task_id, attempt, error, retry, delay, wall(), by=by)
        if not ok:
            return self.refused(task_id, attempt)
        self.endpoint.wait_stored(HTTP_ACK_WAIT, f"task {task_id} is nacked")
        return json_response({"ok": True})

    def touch(self, request: Request) -> Response:
        """Extend the lease of the attempt named (``attempt``, the one
        received): ``{"ok": false}`` unless that attempt is the task's
        current one and was leased over HTTP to this caller's token -- as a
        ZeroMQ TOUCH extends only the lease of the worker the latest attempt
        went to; without tokens every HTTP consumer is ``http``, and the
        attempt is what tells one from the next. Without ``attempt``, the
        latest lease, if it is this token's (the form before 2026-12-05,
        kept for callers that send none)."""
        task_id = check_id(request.params["id"])
        attempt = f.integer(_fields(request, TOUCH_FIELDS), "attempt", None, lo=0)
        task = self.engine.table.live.get(task_id)
        if attempt is not None and (task is None or task.attempt != attempt):
            return self.refused(task_id, attempt)   # that attempt no longer holds the task
        if not self.engine.touch(task_id, wall(), by=principal(self.auth, request)):
            return self.refused(task_id, attempt)
        answer: dict[str, Any] = {"ok": True}
        if task is not None:
            answer["lease_end"] = task.lease_end
        return json_response(answer)

    def refused(self, task_id: str, attempt: int | None) -> Response:
        """``{"ok": false, "reason": ...}`` for an ack, nack or touch that
        changed nothing: why the attempt named does not hold the task, read
        from the node's table after the refusal. Before 2026-12-07 a bare
        ``{"ok": false}``, the same for a stale attempt, a finished task, a
        task leased to another consumer and an id the node never heard of."""
        return json_response({"ok": False, "reason": why_not_held(self.engine.info, task_id, attempt)})


def why_not_held(info_of: Callable[[str], dict[str, Any]], task_id: str, attempt: int | None) -> str:
    """Why attempt ``attempt`` of ``task_id`` holds no lease an HTTP pull
    consumer may ack, nack or touch: ``info_of`` is the node's
    :meth:`~miyaq.core.engine.Engine.info` (``NotFound`` for a task it does
    not know)."""
    try:
        info = info_of(task_id)
    except NotFound:
        return (f"no task {task_id} on this node (never submitted here, forgotten past result_ttl, or held by "
                "other nodes of a cluster)")
    state, current = info.get("state"), info.get("attempt")
    if state in FINAL_STATES or state == DEAD:
        return f"the task is {state}: no attempt of it holds a lease any more"
    if state != RUNNING:
        lease = "its lease" if attempt is None else f"the lease of attempt {attempt}"   # a touch may name none
        return (f"the task is {state}: {lease} ended (it ran out, or the attempt was given back or nacked), or "
                "it has not started, and the task waits for its next attempt")
    if attempt is not None and current != attempt:
        return (f"attempt {attempt} is not the task's current one ({current}): its lease ran out, or the node "
                "restarted, and the task was leased again")
    return (f"attempt {current} is leased to another consumer (a ZeroMQ worker or pull consumer, or another "
            "token): only the caller that received it over HTTP, with the same token, may ack, nack or touch it")


def _fields(request: Request, known: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object (none: ``{}``); a key not in ``known`` is
    refused (400 ``invalid_field`` naming it), so a misspelt ``retry`` or
    ``result`` is not silently dropped (before 2026-12-05 it was: a nack
    meant to dead-letter retried, an ack stored a null result)."""
    body = request.json_object(required=False)
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}; this request takes {', '.join(sorted(known))}",
                           field=unknown[0])
    return body


class LeaseAnswer(Response):
    """The 200 answer of a receive that leased a task: refused unsent (the
    gateway's answer budget), the task goes back (``give_back``)."""

    __slots__ = ("give_back",)

    def __init__(self, body: bytes, give_back: Callable[[], None]) -> None:
        super().__init__(200, body, [("Content-Type", "application/json")])
        self.give_back = give_back

    def undo(self) -> None:
        self.give_back()


def _task_answer(info: dict[str, Any]) -> bytes:
    """``{"task": ...}`` as JSON bytes: the header, and the payload as
    args/kwargs or ``body_base64`` (always convertible)."""
    task_body = info.pop("body", b"") or b""
    info.update(convert.payload_fields(task_body))
    return json.dumps({"task": info}, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
