"""The OpenAPI 3.1 document of the gateway, built from one table.

The node serves it at ``GET /openapi.json``; ``docs/openapi.json`` is the
same document written out (``python -m miyaq.gateway.openapi >
docs/openapi.json``), and a test checks both that they match and that real
responses of every endpoint validate against it.

HEAD has no operations of its own: every GET route answers it
(:mod:`miyaq.gateway.router`), the document's ``info.description`` says
so, and its operations stay exactly the router's routes.

The health probes (``/livez``, ``/readyz``) need no token: their
operations have ``security: []``, ``x-miyaq-role: none`` and no 401.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from miyaq import __version__
from miyaq.config import MAX_REPLICAS
from miyaq.gateway.openapi_schemas import SCHEMAS, ref
from miyaq.gateway.permissions import is_open, needs
from miyaq.protocol.taskspec import MAX_KEY
from miyaq.store.task import ALL_STATES

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
ERROR_TEXT = {400: "A field is missing or malformed (the error names it), or the request line or headers cannot "
                   "be parsed (protocol)",
              401: "Bearer token missing or wrong",
              403: "The token's role may not use this endpoint, a request another site's page sent, or a Host an "
                   "open gateway does not answer to (forbidden); for a webhook, a destination that is not allowed "
                   "(forbidden_destination)",
              404: "No such task or endpoint",
              408: "The request's line and headers, or its body, did not arrive in time (request_timeout); the "
                   "connection is closed",
              413: "Body larger than http_max_body (or a result over max_payload)",
              414: "Request line longer than 8 KiB",
              415: "A Content-Type the endpoint does not read (on all but POST /queue: what an HTML form sends)",
              431: "Request headers over 64 KiB together",
              503: "Node busy (for GET /status and /queues also: asked too often, reason views), too many "
                   "connections from this client, the request bodies read at once past http_body_budget, the "
                   "large answers not yet taken by their clients past http_answer_budget, or shutting down; "
                   "retry after Retry-After seconds",
              504: "Not confirmed in time (timeout). A submit not acknowledged within 10 s: resubmit with the same "
                   "id (or key). A cancel, ack, nack or dead-letter retry or purge: the change is made, but the "
                   "node's log did not take it within 10 s (a slow or failing disk), and a restart before it does "
                   "may undo it (docs/http.md, \"What waits for the log\")"}
#: What the server may answer to any request before (or instead of) its
#: endpoint: a malformed or oversized request line or headers, a token
#: missing or without the role, a foreign Host or another site's request,
#: a client too slow, too many connections from one client.
COMMON = (400, 401, 403, 408, 414, 431, 503)
#: The 404 of an operation on one task (GET, DELETE /tasks/{id}, its result).
TASK_404 = ("No such task here. In a cluster, a node that is not one of the task's holders (or is outside the "
            "ring) says so and lists the holders' HTTP URLs in error.holders: ask them (docs/http.md, \"A "
            "task's holders in a cluster\")")
#: The answer of an operation that waits for the node's log (or a submit's
#: acknowledgement) longer than ``HTTP_ACK_WAIT``: declared since
#: 2026-12-07, when a generated client met it undeclared.
LOGGED = 504
#: What any POST, PUT or DELETE may also be answered: a body labelled as a
#: form (read to see whether it is JSON, so bounded by http_max_body), or
#: another type an HTML form sends (docs/http.md, "Content types").
WITH_BODY = (413, 415)
WITH_BODY_METHODS = ("post", "put", "delete")
ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "task id"}
QUEUE = {"name": "queue", "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


def op(summary: str, ok: int, schema: str | None, *errors: int, body: Any = None,
       params: tuple[dict[str, Any], ...] = (), ok_type: str = JSON, tag: str = "") -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if schema is None:
        responses[str(ok)] = {"description": "OK", "content": {ok_type: {"schema": {"type": "string"}}}}
    else:
        responses[str(ok)] = {"description": "OK", "content": {ok_type: {"schema": ref(schema)}}}
    for code in sorted(errors):
        responses[str(code)] = _error(code)
    operation: dict[str, Any] = {"summary": summary, "tags": [tag] if tag else [], "responses": responses}
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        operation["requestBody"] = body
    return operation


def on_one_task(operation: dict[str, Any]) -> dict[str, Any]:
    """``operation`` (on ``/tasks/{id}``, one task's) with its 404 saying
    that a node not holding the task names its holders (``error.holders``)."""
    operation["responses"]["404"] = {**operation["responses"]["404"], "description": TASK_404}
    return operation


def json_body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": ref(schema)}}}


ENQUEUE_BODY = {"required": True, "content": {FORM: {"schema": ref("EnqueueForm")},
                                              JSON: {"schema": ref("EnqueueJson")}}}
TIMEOUT = _query("timeout", {"type": "number", "minimum": 0}, "seconds to wait for the outcome (long-poll)")
#: How the ring placed the task, for the holders a 404 names (a task submitted with a key or replicas of its own).
PLACEMENT = (_query("key", {"type": "string", "minLength": 1, "maxLength": MAX_KEY},
                    "the task's key, if it was submitted with one: the holders named on a 404 are the key's"),
             _query("replicas", {"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS},
                    "the task's replicas, if it was submitted with its own (default: the node's)"))
def _limit(default: int) -> dict[str, Any]:
    return _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000},
                  f"most items returned (default {default}); an integer (1.5 is a 400)")


LIMIT = _limit(100)
STATE_Q = _query("state", {"type": "string", "enum": list(ALL_STATES)}, "only this state (empty is a 400)")
QUEUE_Q = _query("queue", {"type": "string"}, "only this queue")


def paths() -> dict[str, Any]:
    w, t, p, a = "webhooks", "tasks", "pull", "admin"
    enqueue = "Enqueue a webhook (miyamoto-compatible); the worker URL gets the parameters"
    return {
        "/queue": {"post": op(enqueue, 200, "Scheduled", 400, 403, 413, 415, 503, LOGGED, body=ENQUEUE_BODY, tag=w)},
        "/queue/{queue}": {"post": op(enqueue + " in this queue", 200, "Scheduled", 400, 403, 413, 415, 503,
                                      LOGGED, body=ENQUEUE_BODY, params=(QUEUE,), tag=w)},
        "/tasks": {
            "post": op("Submit a named task for Python workers", 202, "Submitted", 400, 413, 415, 503, LOGGED,
                       body=json_body("SubmitRequest"), tag=t),
            "get": op("List live and dead tasks", 200, "TaskList", 400,
                      params=(QUEUE_Q, STATE_Q, LIMIT), tag=t)},
        "/tasks/{id}": {
            "get": on_one_task(op("Status of a task", 200, "TaskEnvelope", 400, 404, params=(ID, *PLACEMENT),
                                  tag=t)),
            "delete": on_one_task(op("Cancel a task", 200, "Cancelled", 400, 404, LOGGED, params=(ID, *PLACEMENT),
                                     tag=t))},
        "/tasks/{id}/result": {"get": on_one_task(op("Outcome of a task, waiting up to ?timeout= seconds", 200,
                                                     "Result", 400, 404, 503, params=(ID, TIMEOUT, *PLACEMENT),
                                                     tag=t))},
        "/receive": {"post": op("Take one ready task (timeout 0: at once)", 200, "Received", 400, 415, 503,
                                body=json_body("ReceiveRequest", False), tag=p)},
        "/receive_block": {"post": op("Take one ready task, waiting (default 30 s)", 200, "Received",
                                      400, 415, 503, body=json_body("ReceiveRequest", False), tag=p)},
        "/receive_noblock": {"post": op("Take one ready task if there is one", 200, "Received", 400, 415,
                                        body=json_body("ReceiveRequest", False), tag=p)},
        "/tasks/{id}/ack": {"post": op("Finish a received task with its result", 200, "Ok", 400, 413, 415, LOGGED,
                                       body=json_body("AckRequest"), params=(ID,), tag=p)},
        "/tasks/{id}/nack": {"post": op("Fail a received task (retry or dead-letter)", 200, "Ok", 400, 415, LOGGED,
                                        body=json_body("NackRequest"), params=(ID,), tag=p)},
        "/tasks/{id}/touch": {"post": op("Extend a received task's lease (of the attempt named)", 200, "Ok", 400,
                                         body=json_body("TouchRequest", False), params=(ID,), tag=p)},
        "/status": {"get": op("Node, ring and per-queue status", 200, "Status", tag=a)},
        "/queues": {"get": op("Every queue with its counts, workers and limits", 200, "Queues", tag=a)},
        "/queues/{queue}": {"get": op("One queue", 200, "Queue", 400, params=(QUEUE,), tag=a)},
        "/queues/{queue}/limits": {
            "get": op("A queue's limits", 200, "QueueLimits", 400, params=(QUEUE,), tag=a),
            "put": op("Set a queue's limits (replaces them; applies at once)", 200, "QueueLimits", 400, 415,
                      body=json_body("LimitsRequest"), params=(QUEUE,), tag=a),
            "delete": op("Remove a queue's limits", 200, "LimitsRemoved", 400, params=(QUEUE,), tag=a)},
        "/queues/{queue}/pause": {"post": op("Pause a queue on this node: nothing starts, submits are kept", 200,
                                             "Paused", 400, params=(QUEUE,), tag=a)},
        "/queues/{queue}/resume": {"post": op("Resume a paused queue on this node", 200, "Paused", 400,
                                              params=(QUEUE,), tag=a)},
        "/workers": {"get": op("Workers connected to this node", 200, "Workers", 400, params=(_limit(1000),), tag=a)},
        "/dead": {"get": op("Tasks in the dead-letter queue", 200, "TaskList", 400, params=(QUEUE_Q, LIMIT),
                            tag=a)},
        "/dead/retry": {"post": op("Put dead tasks back in their queues (all, by queue or by ids)", 200,
                                   "Retried", 400, 415, LOGGED, body=json_body("DeadScope", False), tag=a)},
        "/dead/purge": {"post": op("Drop dead tasks for good (all, by queue or by ids)", 200, "Purged",
                                   400, 415, LOGGED, body=json_body("DeadScope", False), tag=a)},
        "/metrics": {"get": op("Prometheus metrics", 200, None, ok_type="text/plain", tag=a)},
        "/openapi.json": {"get": {"summary": "This document", "tags": [a], "responses": {
            "200": {"description": "OK", "content": {JSON: {"schema": {"type": "object"}}}}}}},
        "/livez": {"get": _probe("Liveness probe (no token needed): the node's event loop answers",
                                 ("live",), ("stalled",))},
        "/readyz": {"get": _probe("Readiness probe (no token needed): the node would serve now (started, not "
                                  "draining, in its ring, reconciled, its log writable)", ("ready",),
                                  ("draining", "not_accepting", "not_in_ring", "fenced", "reconciling", "storage",
                                   "held"))},
    }


def _probe(summary: str, ok: tuple[str, ...], not_ok: tuple[str, ...]) -> dict[str, Any]:
    """A health probe's operation: 200 with its ok word; 503 with a reason
    word (or the server's own 503 error: too many connections, say)."""
    def status(words: tuple[str, ...]) -> dict[str, Any]:
        return {"type": "object", "required": ["status"], "additionalProperties": False,
                "properties": {"status": {"type": "string", "enum": list(words)}}}
    return {"summary": summary, "tags": ["health"], "security": [], "responses": {
        "200": {"description": "OK", "content": {JSON: {"schema": status(ok)}}},
        "503": {"description": "Not now: the status names why (or " + ERROR_TEXT[503][0].lower()
                               + ERROR_TEXT[503][1:] + ")",
                "content": {JSON: {"schema": {"oneOf": [status(not_ok), ref("Error")]}}}}}}


#: Each operation's ``operationId``: client generators name their methods
#: by it, and some refuse a document without them (none had one before
#: 2026-12-07). Stable: a generated client's method names are its users' API.
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("/queue", "post"): "enqueueWebhook",
    ("/queue/{queue}", "post"): "enqueueWebhookInQueue",
    ("/tasks", "post"): "submitTask",
    ("/tasks", "get"): "listTasks",
    ("/tasks/{id}", "get"): "getTask",
    ("/tasks/{id}", "delete"): "cancelTask",
    ("/tasks/{id}/result", "get"): "getTaskResult",
    ("/receive", "post"): "receiveTask",
    ("/receive_block", "post"): "receiveTaskBlocking",
    ("/receive_noblock", "post"): "receiveTaskNoWait",
    ("/tasks/{id}/ack", "post"): "ackTask",
    ("/tasks/{id}/nack", "post"): "nackTask",
    ("/tasks/{id}/touch", "post"): "touchTask",
    ("/status", "get"): "getStatus",
    ("/queues", "get"): "listQueues",
    ("/queues/{queue}", "get"): "getQueue",
    ("/queues/{queue}/limits", "get"): "getQueueLimits",
    ("/queues/{queue}/limits", "put"): "setQueueLimits",
    ("/queues/{queue}/limits", "delete"): "removeQueueLimits",
    ("/queues/{queue}/pause", "post"): "pauseQueue",
    ("/queues/{queue}/resume", "post"): "resumeQueue",
    ("/workers", "get"): "listWorkers",
    ("/dead", "get"): "listDeadTasks",
    ("/dead/retry", "post"): "retryDeadTasks",
    ("/dead/purge", "post"): "purgeDeadTasks",
    ("/metrics", "get"): "getMetrics",
    ("/openapi.json", "get"): "getOpenApi",
    ("/livez", "get"): "getLivez",
    ("/readyz", "get"): "getReadyz",
}


def with_operation_ids(doc_paths: dict[str, Any]) -> dict[str, Any]:
    """Each operation gets its :data:`OPERATION_IDS` entry, first among its
    keys; a route without one is a KeyError here, so a new endpoint cannot
    be documented without its name."""
    for path, operations in doc_paths.items():
        for method, operation in operations.items():
            operations[method] = {"operationId": OPERATION_IDS[(path, method)], **operation}
    return doc_paths


def with_roles(doc_paths: dict[str, Any]) -> dict[str, Any]:
    """Each operation names the role it needs (``x-miyaq-role``, docs/http.md "Tokens and roles")."""
    for path, operations in doc_paths.items():
        for method, operation in operations.items():
            operation["x-miyaq-role"] = "none" if is_open(path) else needs(method, path).value
    return doc_paths


def with_shared_errors(doc_paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation lists the answers the server gives any request
    (:data:`COMMON`), and every POST, PUT and DELETE those of a body
    (:data:`WITH_BODY`), in status order: before 2026-12-05 an answer of the
    server's own (a 415 for a form, a 403 for a foreign Host, a 503 for too
    many connections) was missing from the operations that did not name it."""
    for path, operations in doc_paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            codes = COMMON + (WITH_BODY if method in WITH_BODY_METHODS else ())
            for code in codes:
                if code == 401 and is_open(path):
                    continue         # no token is asked for
                responses.setdefault(str(code), _error(code))
            operation["responses"] = dict(sorted(responses.items()))
    return doc_paths


def _error(code: int) -> dict[str, Any]:
    return {"description": ERROR_TEXT[code], "content": {JSON: {"schema": ref("Error")}}}


def build() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "miyaq HTTP gateway", "version": __version__,
                 "description": "Enqueue webhooks and named tasks, pull tasks, operate a miyaq node. "
                                "Every get operation also answers HEAD (the GET's status and headers, no "
                                "body; a long-poll does not wait), not listed as operations of its own. "
                                "See docs/http.md."},
        "servers": [{"url": "http://127.0.0.1:8088"}],
        "security": [{"bearer": []}, {}],
        "paths": with_shared_errors(with_roles(with_operation_ids(paths()))),
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "required when the node sets http_token or "
                                                                     "http_tokens; its role must include the "
                                                                     "operation's x-miyaq-role"}}},
    }


if __name__ == "__main__":
    json.dump(build(), sys.stdout, indent=1)
    sys.stdout.write("\n")
