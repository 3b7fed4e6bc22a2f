"""The node's fixed numbers: intervals, timeouts and bounds that are part of
how it works rather than settings an operator tunes (those are
:class:`miyaq.config.NodeConfig`, documented in docs/configuration.md).

One place, so a reader finds each number once, with why it has its value.
Times are seconds unless the name says otherwise.
"""
from __future__ import annotations

# -- the core: the node's loops --------------------------------------------------------------

#: The process may go this long without running its housekeeping before it
#: counts as frozen (SIGSTOP, swap, a VM pause) rather than merely busy.
STALL = 2.0
#: The shortest time between two passes of a node's housekeeping (long-poll
#: deadlines, worker heartbeats and liveness, freeze detection, which counts
#: a gap of more than ``STALL`` between passes as a freeze). A node passes
#: when its heartbeat tick or tombstone sweep is due (long-polls wake it at
#: their deadlines), a cluster node at least every ``STALL / 2`` besides
#: (``miyaq.core.clockwork.FREEZE_LOOK``).
HOUSEKEEPING_INTERVAL = 0.1
#: Between two sweeps of expired tombstones and stale ready-queue entries.
TOMBSTONE_SWEEP = 1.0
#: While draining for shutdown, how often the node checks for running tasks.
DRAIN_POLL = 0.05

# -- the core: work per pass -------------------------------------------------------------------

#: Messages the service socket reads before replies go out and the dispatcher runs...
SERVICE_BURST = 512
#: ... or tasks handled (a SUBMIT may carry hundreds), whichever comes first.
SERVICE_BURST_WORK = 2048
#: A SUBMIT of at most this many tasks, its connection's first of a burst, is
#: a lone one: each of its tasks that wakes an idle consumer is leased to it
#: before the reader reads on once the burst has done ``EARLY_ACK_WORK``
#: tasks of work (:meth:`miyaq.core.dispatcher.Dispatcher.dispatch_lone`),
#: not at the burst's end. A ``call()`` is one task.
LONE_SUBMIT_TASKS = 8
#: Lone tasks noted in one burst at most (the rest wait for its end): each
#: is leased and sent on its own, so this bounds what a burst of many quiet
#: connections costs beyond its one batched dispatch.
LONE_TASKS_PER_BURST = 16
#: Tasks leased to one consumer per round of a pump, so a burst spreads over idle consumers.
DISPATCH_CHUNK = 64
#: Payload bytes one pump leases to one consumer: past it the consumer stays
#: hungry and the next pump goes on.
DISPATCH_BATCH_BYTES = 8 * 1024 * 1024
#: Payload bytes in one DISPATCH message: what a pump leased a worker is sent
#: as several messages of at most this much (a larger task goes alone). A
#: worker's connection to a node is dropped when no whole message arrives
#: for its ``node_timeout`` (5 s by default: libzmq's wait for an answer to
#: a ZMTP heartbeat ends only when a whole message part arrives), so a message
#: must cross the slowest worker link well within it: 64 KiB take 0.5 s at
#: 1 Mbit/s, 1.6 s with three nodes sending at once. One message of a whole
#: batch -- 8 x 100 KB from each of three nodes, 19 s at 1 Mbit/s -- had a
#: worker on such a link drop its connections again and again and never
#: run a task (before 2026-12-06). Small tasks are unaffected: 64 KiB are
#: 650 tasks of 100 bytes (a DISPATCH holds at most the node's ``max_batch``).
DISPATCH_MESSAGE_BYTES = 64 * 1024
#: Timers fired by one pass of the timer loop (the rest wait for the next pass, which
#: comes after the node's other greenlets ran: readers, heartbeats, housekeeping).
#: A pass also moves up to 4 x this many timers out of the coarse buckets (store/timers.py).
TIMER_BATCH = 5000

# -- the core: bounds ----------------------------------------------------------------------------

#: Distinct queue names a node holds at once (empty ones are pruned).
MAX_QUEUES = 10_000
#: Queues paused at once.
MAX_PAUSED = 10_000
#: Queues with limits (``PUT /queues/{queue}/limits``, ``queue_limits``) at once.
MAX_LIMITED = 10_000
#: The longest a RESULT or RECEIVE long-poll may wait (ZeroMQ and HTTP).
MAX_LONG_POLL = 3600.0
#: The longest retry delay a node takes, from a worker's FAILED (``Retry(delay)``)
#: or a pull consumer's NACK, in seconds (30 days): a longer one is this.
MAX_RETRY_DELAY = 30 * 86400.0
#: Most long-polls one WITHDRAW names.
MAX_WITHDRAW = 1000
#: How often the node checks that connections with long-polls waiting are
#: still there (a probe each), freeing the waits of those that went away.
WAITER_PROBE_INTERVAL = 2.0
#: Seconds of ZMTP heartbeats on the service socket, by default (the node's
#: ``service_heartbeat_timeout``; a PING every third of it): a connection
#: whose host vanished without closing it is dropped after the timeout (its
#: long-polls are then freed by the probe) -- and so is one on which a
#: single message (a worker's DONE with a large result, a producer's SUBMIT)
#: takes longer to arrive: libzmq hears the PING's answer only behind it.
SERVICE_HEARTBEAT_TIMEOUT = 30.0
#: The largest rate a queue limit accepts (tasks per second).
MAX_RATE = 1e9
#: Attempts of a task whose lessee (who it was leased to) is remembered, so
#: that a late DONE of an earlier attempt still counts while a DONE from
#: anyone the task was never leased to is ignored.
LEASE_HISTORY = 4
#: The most a failure description a node keeps (a task's ``error``: from a
#: worker's FAILED or NACK, an HTTP fail, a webhook, a peer or the log) may
#: hold, in UTF-8 bytes of its names and strings: a longer one is cut, the
#: traceback first, then the message. Each retrying, dead and finished task
#: may keep one, outside ``max_bytes``; 256 + 4,096 + 16,384 characters of
#: 4 bytes each (what the fields allowed before 2026-12-05) held 82 KB a task.
ERROR_BYTES = 8 * 1024
#: The least a retrying or dead task's error keeps when ``max_bytes`` has no
#: room left for it (it counts there: :func:`miyaq.store.task_bytes.held_bytes`):
#: the error's type and the start of its message. So errors pass
#: ``max_bytes`` by at most this much a held task: 280 MB at the defaults'
#: 1.1 million (``max_tasks`` + ``max_dead``), where they held up to 10 GiB
#: before 2026-12-07, counted nowhere.
ERROR_BYTES_MIN = 256
#: The longest lessee name (a consumer's principal) another holder is told
#: (a STARTED event, a handed-off copy); a longer one is not sent at all.
MAX_LESSEE = 512
#: Workers dropped (silent, re-registered) whose connection is still known
#: by who it was: its late DONE still counts for the attempts it was leased.
MAX_DROPPED_WORKERS = 4096

# -- the cluster ---------------------------------------------------------------------------------

#: Between two rounds of the cluster's ticker (flushes, deadline sweeps)
#: while something is in flight; an idle ticker waits for the next stream
#: heartbeat (``miyaq.cluster.ticker``).
CLUSTER_TICK = 0.05
#: Between two heartbeats on each replication stream (they carry the last sequence).
STREAM_HEARTBEAT = 1.0
#: The shortest silence after which a stream is suspect (the receiver asks
#: its source for a resync). The silence a node uses is longer:
#: ``peer_heartbeat_timeout`` plus a ``STREAM_HEARTBEAT``, 6 s at the default
#: (:func:`miyaq.cluster.stream_numbering.stream_silence`): a stream message
#: may take up to ``peer_heartbeat_timeout`` to cross, and the heartbeats
#: behind it come after it. Before 2026-12-07 this was the silence, whatever
#: ``peer_heartbeat_timeout`` said.
STREAM_SILENCE = 3.5
#: First and longest wait between reconnects to a peer (milliseconds).
PEER_RECONNECT_MS = (100, 2000)
#: Seconds of ZMTP heartbeats a node's replication stream, its links to the
#: other nodes and its peer port wait for an answer, by default (the node's
#: ``peer_heartbeat_timeout``; a PING every fifth of it,
#: :func:`miyaq.runtime.sockets.heartbeat_options`): a connection that
#: sends nothing for the timeout after a PING -- a frozen process (SIGSTOP, a
#: paused VM), a host gone, a reader 100,000 messages behind -- is dropped,
#: and with it what ZeroMQ had queued for it (a count of messages, not
#: bytes: without this a frozen peer made each node hold every stream message
#: and request meant for it, gigabytes under load). A live process answers
#: from libzmq's own thread, however busy its Python is.
PEER_HEARTBEAT_TIMEOUT = 5.0

#: The most tasks one SUBMIT may carry, whatever a node's or a client's
#: ``max_batch`` (docs/configuration.md): every body is bounded in the values
#: it decodes to (``miyaq.protocol.codec.MAX_VALUES``, 1,048,576), and a task
#: with every field set and 64 webhook headers is 159 values on the wire and
#: 176 as a node forwards it to another -- 4,096 such tasks are 651,264 and
#: 720,896 values. A connection whose body passes the bound is ignored from
#: then on (``miyaq.core.ignored``): no batch a client or node may send can.
MAX_BATCH = 4096
#: Submits waiting for their replicas at once; beyond, a submit is answered busy.
MAX_PENDING_SUBMITS = 200_000
#: Events in one replication stream message.
MAX_STREAM_EVENTS = 1000
#: STARTED and DEAD events for tasks this node has no copy of yet (the
#: event overtook the REPLICATE or handoff that brings the copy): kept this
#: many, this long, and applied when the copy arrives.
MAX_EARLY_EVENTS = 10_000
EARLY_EVENT_TTL = 60.0
#: ... and at most this many bytes of them (a DEAD event's error text counts;
#: ``EARLY_EVENT_BYTES`` for the rest of an event).
MAX_EARLY_EVENT_BYTES = 16 * 1024 * 1024
EARLY_EVENT_BYTES = 256
#: A standby copy's QUERY to the other holders waits at least this long;
#: silence lets it run. It waits longer for a holder whose answers lately
#: took longer (miyaq.cluster.answer_times): twice the slowest of the last
#: ``ANSWER_TIMES_WINDOW`` seconds, at most ``QUERY_PATIENCE_MAX``.
QUERY_TIMEOUT = 1.0
QUERY_PATIENCE_MAX = 15.0
ANSWER_TIMES_WINDOW = 60.0
#: Task ids answered in one QUERY.
MAX_QUERY = 10_000
#: Tasks in one handoff REPLICATE request.
HANDOFF_CHUNK = 500
#: A new holder has this long to confirm a handed-off chunk...
HANDOFF_CONFIRM_TIMEOUT = 5.0
#: ... and unconfirmed copies are sent again this often -- to a holder that
#: answers. To one whose chunks time out, each resend waits twice as long as
#: the one before, up to ``HANDOFF_RETRY_MAX``; none goes to a holder while
#: an earlier chunk to it awaits its answer, and an answer that comes after
#: its deadline still confirms what it lists (``LATE_ANSWER_WINDOW``).
HANDOFF_RETRY = 5.0
HANDOFF_RETRY_MAX = 80.0
#: A peer request sent with a ``late`` handler (a handoff's chunk) that got
#: no answer by its deadline still hands it an answer that comes up to this
#: long after the deadline; at most ``MAX_LATE_ANSWERS`` such requests are
#: remembered at once (the oldest forgotten first).
LATE_ANSWER_WINDOW = 300.0
MAX_LATE_ANSWERS = 4096
#: A new holder that refused copies while its view of the ring was older
#: than the sender's (the new ring had not reached it yet) gets them again
#: this soon instead, at most ``HANDOFF_LAG_RETRIES`` times per ring change
#: (each such holder: one holder's do not use up another's).
HANDOFF_LAG_RETRY = 0.5
HANDOFF_LAG_RETRIES = 6
#: For ``HANDOFF_SWEEP_AFTER_CHANGE`` after a ring change, every
#: ``HANDOFF_SWEEP`` the node looks again for copies placed by a view that
#: changed meanwhile (one pass over its tasks each time).
HANDOFF_SWEEP = 10.0
HANDOFF_SWEEP_AFTER_CHANGE = 60.0
#: A handoff pass (or a retry of unconfirmed copies) looks at this many
#: tasks, sends what they need, then lets the node's other greenlets run
#: before the next slice: a pass over a million tasks takes seconds, and a
#: node that answered no QUERY, SUBMIT or heartbeat meanwhile would look
#: dead to its peers' standby copies (QUERY_TIMEOUT) and to its workers.
HANDOFF_SLICE = 2000
#: Tasks in one SYNC answer, and the newest tombstones it carries.
RESYNC_CHUNK = 1000
RESYNC_STONES = 5000
#: The newest purge marks (dead letters purged) a resync's answers carry,
#: past its tasks (miyaq.cluster.sync).
RESYNC_PURGED = 5000
#: One SYNC request waits this long for its answer -- or the node's
#: ``peer_heartbeat_timeout`` when that is longer (a slow link's).
RESYNC_TIMEOUT = 5.0
#: A peer link that could not be made (no file descriptor left) is tried
#: again this often.
RELINK_INTERVAL = 1.0
#: A resync that failed (no answer within its wait, an error, or a peer not
#: connected: that fails at once) is asked again this long after it failed,
#: and each further failure in a row waits twice as long as the one before,
#: up to ``RESYNC_RETRY_MAX`` (a completed resync starts over); while a node
#: reconciles, every ``RESYNC_RETRY`` after each failure. Before 2026-12-07
#: only a reconcile retried: otherwise a failed resync was asked again when
#: the stream went silent -- never while its heartbeats came.
RESYNC_RETRY = 1.0
RESYNC_RETRY_MAX = 8.0
#: A node that was frozen holds dispatching at most this long while it
#: fetches every peer's state again.
FROZEN_RESYNC_TIMEOUT = 10.0
#: After a freeze or a fence, a node coordinates no submit for this long: a
#: SUBMIT read now may have waited in its socket while the client resent it
#: elsewhere (the client's ack timeout is 5 s), and its view of the ring may
#: be old.
SUSPECT_AFTER_FREEZE = 5.0
#: A node without ZooKeeper this long fences itself when its peers still
#: have ZooKeeper or it hears no majority of them (a peer's heartbeat, every
#: second, says by then whether it lost ZooKeeper too).
FENCE_AFTER = 1.5
#: A peer that got ZooKeeper back *after* this node lost it counts toward
#: fencing this node once it has kept ZooKeeper this long (from its first
#: heartbeat that says so, sent at once) while this node still has none. A
#: node cut off while its peers' connections blinked, or while the rest of
#: the ensemble elected a new leader, must fence within seconds of the cut;
#: when a stopped ensemble comes back, a node that reconnects more than this
#: after its peers fences for that moment (a pause and a resync, on the
#: safe side). Less than FENCE_AFTER: a peer that had ZooKeeper since before
#: this node lost it has held it this long by the time this node may fence.
FENCE_PEER_HELD = 0.5
#: A node that left the ring is still listened to this long (its stream and
#: peer link): it announces how the tasks it still ran ended.
DEPARTED_GRACE = 60.0
#: Compare-and-set attempts on a contended periodic znode before giving up.
CAS_TRIES = 5

# -- periodic schedules ----------------------------------------------------------------------------

#: The leader re-reads the specs stored in ZooKeeper this often.
SPEC_RELOAD = 10.0
#: Who still declares which schedule is checked this often.
SPEC_HOUSEKEEPING = 5.0
#: A rejected tick is submitted again (same id) after this long.
TICK_RETRY = 0.5
#: The scheduler's loop wakes at least this often.
SCHEDULER_WAKE = 1.0
#: A schedule with no next tick is looked at again after this long (milliseconds).
NO_NEXT_TICK_MS = 60_000
#: A schedule no worker declared for this long stops firing and is forgotten.
SPEC_TTL = 3600.0
#: How stale ZooKeeper's "seen" of a declared schedule may get.
SPEC_REFRESH = 300.0
#: Worker ids remembered per schedule.
MAX_DECLARERS = 64
#: Periodic schedules one key may own on a node (with keys), so no key can
#: take all MAX_SCHEDULES slots and make other workers' READY fail.
MAX_SCHEDULES_PER_KEY = 200

# -- the HTTP gateway --------------------------------------------------------------------------------

#: Stopping, the HTTP server lets requests in progress finish for this long.
HTTP_STOP_TIMEOUT = 1.0
#: An HTTP submit waits this long for its acknowledgement (then: timeout, resubmit).
HTTP_ACK_WAIT = 10.0
#: How often a node re-reads the ring size that sets its share of each queue limit.
LIMIT_SHARE_REFRESH = 1.0
#: Form fields one HTTP request may carry.
MAX_FORM_FIELDS = 1000
#: Arrays and objects nested in one JSON request body, at most (deeper: 400).
MAX_JSON_DEPTH = 64
#: Opening a connection to a webhook destination may take this long.
WEBHOOK_CONNECT_TIMEOUT = 10.0
#: Webhook destinations with pooled connections (least recently used closed first).
WEBHOOK_MAX_DESTINATIONS = 256
#: The longest Retry-After a webhook destination may ask for.
WEBHOOK_MAX_RETRY_AFTER = 86400.0
#: Bytes of a webhook's response read (the rest is dropped with its connection),
#: kept as the task's result, and kept in a failed attempt's error.
WEBHOOK_RESPONSE_LIMIT = 64 * 1024
WEBHOOK_RESULT_LIMIT = 1024
WEBHOOK_ERROR_LIMIT = 256
