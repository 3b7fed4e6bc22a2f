"""Protocol tag, command names and limits: the vocabulary of the wire.

Every message is a ZeroMQ multipart message of exactly three frames after the
ROUTER's routing id: ``[TAG, COMMAND, BODY]``. ``TAG`` is ``b"MQ1"`` (protocol
miyaq, version 1), ``COMMAND`` an ASCII name below and ``BODY`` a msgpack map.
docs/protocol.md documents every field.
"""
from __future__ import annotations

TAG = b"MQ1"
FRAMES = 3

# Producer / admin -> node (request carries "req"; node answers REPLY or ERROR)
SUBMIT = b"SUBMIT"          # {"tasks": [task, ...]}            -> SUBMITTED
STATUS = b"STATUS"          # {"req"}                            -> REPLY node stats
TASK = b"TASK"              # {"req", "id"}                      -> REPLY task info
CANCEL = b"CANCEL"          # {"req", "id"}                      -> REPLY {"cancelled": bool, "state"}
RESULT = b"RESULT"          # {"req", "id", "timeout"}           -> REPLY once final or timeout
TASKS = b"TASKS"            # {"req", "queue"?, "state"?, "limit"?} -> REPLY {"tasks": [...]}
DEAD = b"DEAD"              # {"req", "op": list|retry|purge, ...} -> REPLY
RECEIVE = b"RECEIVE"        # {"req", "queues", "timeout"}        -> REPLY {"task": task|None}
ACK = b"ACK"                # {"req", "id", "attempt", "result"} -> REPLY
NACK = b"NACK"              # {"req", "id", "attempt", "error", "retry", "delay"?} -> REPLY
RING = b"RING"              # {"req"}                            -> REPLY {"epoch", "leader", "members"}
WITHDRAW = b"WITHDRAW"      # {"reqs": [req, ...]}: stop waiting for these long-polls (no answer)

# Worker <-> node
READY = b"READY"            # {"worker", "queues", "names", "capacity", ...} -> WELCOME
WELCOME = b"WELCOME"        # {"node", "heartbeat", "liveness"}
HEARTBEAT = b"HEARTBEAT"    # both ways; worker: {"worker"}; node: {"node"}
CREDIT = b"CREDIT"          # worker -> node {"n"}: grant n more slots
DISPATCH = b"DISPATCH"      # node -> worker {"tasks": [delivery, ...]}
DONE = b"DONE"              # worker -> node {"done": [[id, attempt, result], ...]}
FAILED = b"FAILED"          # worker -> node {"failed": [[id, attempt, error], ...]}
TOUCH = b"TOUCH"            # worker -> node {"ids": [...]}: extend leases
RETURN = b"RETURN"          # worker -> node {"ids": [...]}: give back unstarted tasks
ABORT = b"ABORT"            # node -> worker {"ids": [...]}: stop these (cancelled)
BYE = b"BYE"                # worker -> node {"worker"}: leaving
RECONNECT = b"RECONNECT"    # node -> worker {}: you are unknown here, send READY again

# Node -> producer
SUBMITTED = b"SUBMITTED"    # {"results": [[id, status, detail], ...]}
REPLY = b"REPLY"            # {"req", ...}
ERROR = b"ERROR"            # {"req"?, "code", "message"}

REQUESTS = frozenset({STATUS, TASK, CANCEL, RESULT, TASKS, DEAD, RECEIVE, ACK, NACK, RING})
WORKER_COMMANDS = frozenset({READY, HEARTBEAT, CREDIT, DONE, FAILED, TOUCH, RETURN, BYE})
NODE_COMMANDS = frozenset({SUBMIT, WITHDRAW}) | REQUESTS | WORKER_COMMANDS

# Submit result statuses
ACCEPTED = "accepted"
DUPLICATE = "duplicate"      # detail: the id of the task that holds the key / id
REJECTED = "rejected"        # detail: {"code", "message"}

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
#: The most tasks a worker may hold at once on one node (READY ``capacity``):
#: a node refuses a READY beyond it, and a worker's settings stay within it.
MAX_WORKER_CAPACITY = 100_000
#: The most queues one READY may name (a worker's ``--queues``, or its app's).
MAX_READY_QUEUES = 64

#: A field of an ``unavailable`` error (``true``, since 2026-12-07): the node
#: answered a read of a task it does not know while it reconciles with the
#: other holders -- it may not have its copy back yet (docs/protocol.md).
#: Passing: a client's wait for a result asks again after a pause.
RECONCILING = "reconciling"
#: The longest endpoint a part dials because another part named it (a RING
#: member's ``service``, a member znode's endpoints, WELCOME/HEARTBEAT
#: ``nodes``, a delivery's holders): no node advertises a longer one (a host
#: name is at most 253 characters).
MAX_ENDPOINT_CHARS = 512
#: The most task ids one TOUCH may carry: the node refuses a longer list
#: whole, and a worker sends longer ones as several messages.
MAX_TOUCH_IDS = 10_000

NODE_REPLIES = frozenset({SUBMITTED, REPLY, ERROR})
WORKER_INBOUND = frozenset({WELCOME, HEARTBEAT, DISPATCH, ABORT, RECONNECT, ERROR, REPLY})
