"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of the gateway's bodies.

Shapes the gateway builds itself are closed (``additionalProperties:
false``) so the conformance test catches drift; shapes the node core owns
(a task's header, ``/status``) list their fields and stay open to additions.
"""
from __future__ import annotations

from typing import Any

from miyaq.core.task_names import NAMES_SHOWN
from miyaq.protocol.task_names import MAX_ID_CHARS, MAX_QUEUE_CHARS
from miyaq.store.task import ALL_STATES

STR = {"type": "string"}
NUM = {"type": "number"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
ANY: dict[str, Any] = {}
STR_LIST = {"type": "array", "items": STR}
WEBHOOK_URL = {"type": "string", "maxLength": 2048,
               "description": "http:// or https:// with a host, a port from 1 to 65535 if one is named, and no "
                              "space or other control character (the same check as a ZeroMQ SUBMIT's)"}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str] | tuple[str, ...] = (), closed: bool = True, **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


def described(schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {**schema, "description": text}


#: A task id and a queue name as the server checks them
#: (:mod:`miyaq.protocol.task_names`; before 2026-12-07 the document said
#: only "a string", and a client validating by it sent what the server refused).
TASK_ID = described({"type": "string", "pattern": f"^[A-Za-z0-9_.:-]{{1,{MAX_ID_CHARS}}}$"},
                    f"1 to {MAX_ID_CHARS} characters of A-Z a-z 0-9 _ . : - (default: a new random id)")
#: ``POST /queue`` takes an empty id as none (a miyamoto form's empty ``task.id=``): a new id.
WEBHOOK_ID = described({"type": "string", "pattern": f"^([A-Za-z0-9_.:-]{{1,{MAX_ID_CHARS}}})?$"},
                       f"1 to {MAX_ID_CHARS} characters of A-Z a-z 0-9 _ . : -; empty or left out: a new random id")
QUEUE_NAME = described({"type": "string", "pattern": f"^([A-Za-z0-9_.:-]{{1,{MAX_QUEUE_CHARS}}})?$"},
                       f"1 to {MAX_QUEUE_CHARS} characters of A-Z a-z 0-9 _ . : -; empty or left out: default")
PRIORITY = described(INT, "lower runs first: within a queue a ready task of a lower number always starts before "
                          "one of a higher number (default 0; negative numbers allowed)")
TIME = described({"type": ["number", "string"]}, "unix seconds, or an ISO 8601 date-time (UTC if no offset)")
TASK_ERROR = obj(["type", "message"], closed=False, type=STR, message=STR, traceback=STR,
                 status=described(INT, "HTTP status a webhook answered"), failed_at=NUM,
                 retry_after=described(NUM, "seconds asked by the webhook's Retry-After"),
                 retry_at=described(NUM, "unix time of the next attempt"))
#: A result's ``error`` is the task's last failure, which a task that then
#: succeeded keeps: its presence does not say the task failed (the words
#: were missing before 2026-12-07, and a client reading "an error, so it
#: failed" took a retried success for a failure).
RESULT_ERROR = ("the last failure the task kept: on a task that failed (state dead, cancelled, expired) why; on a "
                "task done after a retry (state done, result set) an earlier attempt's failure, not this outcome's. "
                "Read state for the outcome, never the presence of error")
TASK = obj(["id", "queue", "state"], closed=False,
           id=STR, queue=STR, state={"type": "string", "enum": list(ALL_STATES)}, priority=INT,
           eta=NUM, created=NUM, attempt=INT, max_retries=INT, timeout=NUM, name=STR, url=STR, key=STR,
           expires=NUM, lease_end=NUM, finished=NUM, error=ref("TaskError"), holders=STR_LIST,
           args_lost=described(STR, "dead: its arguments are unknown, lost with this node (an at-most-once task "
                               "whose runner's node died, its failure reported to another holder); it can "
                               "never be retried (docs/cluster.md, \"A task's life in a cluster\", item 6)"),
           started=described(NUM, "running: unix time its current attempt was leased (not on a node "
                             "without metrics, nor on a standby copy)"),
           running_seconds=described(NUM, "running: seconds since started"))
LIMITS = obj(["rate", "burst", "max_concurrent", "node_share"],
             rate=nullable(NUM), burst=nullable(NUM), max_concurrent=nullable(INT),
             node_share=described(NUM, "fraction of the cluster-wide limit this node enforces"),
             tokens=described(NUM, "tokens in this node's bucket now"))
QUEUE_ROW = obj(["name", "scheduled", "ready", "running", "retrying", "dead", "workers", "idle",
                 "webhooks_in_flight", "limits"],
                name=STR, scheduled=INT, ready=INT, running=INT, retrying=INT, dead=INT,
                workers=INT, webhooks_in_flight=INT,
                idle=described(INT, "free capacity of the queue's workers: tasks they would still take (running "
                                    "and prefetched) less those leased to them; not idle handlers"),
                limits=nullable(ref("Limits")),
                paused=described(BOOL, "no task of the queue starts on this node (POST .../resume)"))
STATUS_QUEUE = obj(["scheduled", "ready", "running", "retrying", "dead", "workers", "idle"], closed=False,
                   scheduled=INT, ready=INT, running=INT, retrying=INT, dead=INT, workers=INT, idle=INT,
                   limits=nullable(ref("Limits")), paused=BOOL)
WORKER = obj(["worker", "queues", "capacity", "credit", "running", "last_seen"], closed=False,
             worker=STR, queues=STR_LIST,
             names=described({"oneOf": [{"const": "any"}, STR_LIST]},
                             "the task names it runs, as the node routes by them: \"any\" (it declared "
                             "none -- an older worker, one without names_only -- or its list was not kept, past "
                             f"the node's bound), or the first {NAMES_SHOWN} of those it declared, sorted"),
             names_more=described(INT, "with a list of names: how many more it declared than the list shows"),
             capacity=described(INT, "tasks it may run at once"),
             credit=described(INT, "tasks it may still be given"), running=INT,
             stopping=described(BOOL, "it said it is stopping: it is leased nothing more, and its running "
                                      "tasks still report"),
             last_seen=described(NUM, "unix time of its last message (heartbeats included)"),
             host=STR, pid=INT, concurrency=INT,
             pool=described(STR, "where its handlers run, as its READY said: gevent, threads or processes "
                                  "for a miyaq worker"))
RING = obj(["epoch", "leader", "members", "is_leader"], epoch=INT, leader=nullable(STR), members=STR_LIST,
           is_leader=BOOL, http=described({"type": "object", "additionalProperties": nullable(STR)},
                                          "each member's HTTP gateway (null: off)"))
COUNTS = {"type": "object", "additionalProperties": INT}

SCHEMAS: dict[str, Any] = {
    "Error": obj(["error"], error=obj(["code", "message"], closed=False, code=STR, message=STR,
                                      field=described(STR, "the request field at fault"),
                                      allow=STR_LIST,
                                      holders=described(STR_LIST, "a 404 of a node that does not hold the "
                                                                  "task: its holders' HTTP URLs, to ask"))),
    "EnqueueForm": described({"type": "object", "required": ["task.url"], "properties": {
        "task.url": WEBHOOK_URL, "task.countdown": STR, "task.eta": STR, "task.method": STR, "task.queue": STR,
        "task.id": STR, "task.priority": STR, "task.ttl": STR, "task.max_retries": STR,
        "task.timeout": STR, "task.backoff": STR, "task.key": STR},
        "additionalProperties": STR}, "every field not starting with task. is a parameter for the worker"),
    "EnqueueJson": obj(["url"], url=WEBHOOK_URL, params={"type": "object"},
                       countdown=NUM, eta=TIME, method={"type": "string", "enum": ["POST", "PUT", "PATCH",
                                                                                  "GET", "DELETE"]},
                       queue=QUEUE_NAME, id=WEBHOOK_ID, priority=PRIORITY, ttl=NUM, max_retries=INT, timeout=NUM,
                       backoff=NUM, key=STR, headers={"type": "object", "additionalProperties": STR}),
    "Scheduled": obj(["status", "id"], status={"const": "scheduled"}, id=STR, duplicate=BOOL),
    "SubmitRequest": obj(["name"], name=STR, args={"type": "array"}, kwargs={"type": "object"}, id=TASK_ID,
                         queue=QUEUE_NAME, priority=PRIORITY, countdown=NUM, eta=TIME, ttl=NUM, max_retries=INT,
                         backoff=NUM, backoff_max=NUM, timeout=described(NUM, "the lease, in seconds"),
                         key=STR, replicas=INT, at_most_once=BOOL,
                         offset=described(NUM, "cluster: seconds between holder ranks' timers (0 to a year; "
                                               "default the node's replica_offset)")),
    "Submitted": obj(["id", "status", "task_id"], id=STR, status={"enum": ["accepted", "duplicate"]},
                     task_id=described(STR, "the task holding the work (another id for a duplicate key)")),
    "TaskError": TASK_ERROR,
    "Task": TASK,
    "TaskEnvelope": obj(["task"], task=ref("Task")),
    "TaskList": obj(["tasks"], tasks={"type": "array", "items": ref("Task")}),
    "Cancelled": obj(["id", "cancelled", "state"], id=STR, cancelled=BOOL, state=STR,
                     unconfirmed=described(BOOL, "cluster: the task's first holder did not answer; this node's "
                                                 "copy did, and the task may run there until the cancel reaches it")),
    "Result": obj(["id", "state", "done"], id=STR, state=STR, done=BOOL, result=ANY,
                  result_base64=described(STR, "raw msgpack result JSON cannot hold"),
                  error=described(ref("TaskError"), RESULT_ERROR)),
    "ReceiveRequest": obj([], queues=STR_LIST, timeout=described(NUM, "seconds to wait; 0 answers at once")),
    "ReceivedTask": {"allOf": [ref("Task"), obj([], closed=False, args={"type": "array"},
                                                kwargs={"type": "object"}, body_base64=STR)]},
    "Received": obj(["task"], task=nullable(ref("ReceivedTask"))),
    "AckRequest": obj(["attempt"], attempt=INT, result=ANY),
    "NackRequest": obj(["attempt"], attempt=INT,
                       error=described(STR, "the failure's message; cut to 4096 characters, as a ZeroMQ NACK's"),
                       retry=described(BOOL, "false: dead-lettered at once (default true)"),
                       delay=described(NUM, "seconds before the retry, 0 to 2592000 (replaces the backoff)"),
                       returned=described(BOOL, "true: given back unstarted, no attempt spent, ready at once "
                                                "(error, retry and delay are then not read)")),
    "TouchRequest": obj([], attempt=INT),
    "Ok": obj(["ok"], ok=BOOL, lease_end=NUM,
              reason=described(STR, "with ok false: why the attempt named holds no lease this caller may use")),
    "Limits": LIMITS,
    "LimitsRequest": obj([], rate=nullable(NUM), burst=nullable(NUM), max_concurrent=nullable(INT)),
    "QueueLimits": obj(["queue", "limits"], queue=STR, limits=nullable(ref("Limits"))),
    "LimitsRemoved": obj(["queue", "removed"], queue=STR, removed=BOOL),
    "Queue": QUEUE_ROW,
    "Queues": obj(["queues"], queues={"type": "array", "items": ref("Queue")}),
    "Ring": RING,
    "Paused": obj(["queue", "paused", "changed"], queue=STR, paused=BOOL,
                  changed=described(BOOL, "false: the queue was already in that state")),
    "Workers": obj(["node", "workers"], node=STR, workers={"type": "array", "items": WORKER}),
    "Status": obj(["node", "version", "uptime", "accepting", "queues", "totals", "ring"], closed=False,
                  node=STR, version=STR, uptime=NUM, accepting=BOOL, max_tasks=INT,
                  queues={"type": "object", "additionalProperties": STATUS_QUEUE},
                  totals=COUNTS, outcomes=COUNTS, errors=COUNTS, ring=ref("Ring"),
                  records_refused=described(COUNTS, "records from other nodes or the log refused, by source"),
                  views=described(obj(["last_seconds", "waiting", "refused"], last_seconds=NUM, waiting=INT,
                                      refused=INT),
                                  "the views of every queue (this one, GET /queues, STATUS, the console) take "
                                  "turns, at most 10% of the node's time: the last one's time, how many wait "
                                  "for their turn, how many were refused busy"),
                  memory=obj(["payload_bytes", "max_bytes", "result_bytes", "max_result_bytes"],
                             payload_bytes=INT, max_bytes=INT, result_bytes=INT, max_result_bytes=INT,
                             results_dropped=INT),
                  webhooks=obj(["in_flight", "concurrency", "in_flight_total", "max_in_flight",
                                "idle_connections", "signing_secrets"], in_flight=COUNTS,
                               concurrency=INT, in_flight_total=INT, max_in_flight=INT, idle_connections=INT,
                               signing_secrets=INT)),
    "DeadScope": obj([], queue=STR, ids=STR_LIST),
    "Retried": obj(["retried"], retried=STR_LIST),
    "Purged": obj(["purged"], purged=INT),
}
