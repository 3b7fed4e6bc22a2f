"""Worker settings and limits, declared once.

:class:`WorkerConfig` holds what an operator tunes: each setting is a
``miyaq worker`` flag and a ``MIYAQ_<NAME>`` environment variable (flags
first), listed by ``miyaq worker --help`` and in docs/configuration.md.
Below it, the worker's fixed limits and timings: not settings, but named
here once so a reader finds every number the worker runs by in one place.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass, fields
from typing import ClassVar, Mapping

from ..settings import Settings, refused, setting
from ..errors import ConfigError, InvalidField
from ..protocol.commands import DEFAULT_MAX_MESSAGE, MAX_READY_QUEUES, MAX_WORKER_CAPACITY
from ..protocol.taskspec import check_queue
from .prefetch import MAX_PREFETCH_FACTOR

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: How handlers run (docs/python-api.md, "Choosing a pool").
POOLS = ("gevent", "threads", "processes")


def processes_concurrency() -> int:
    """The processes pool's ``concurrency`` when none is given: one child
    per CPU (``miyaq worker``, and ``miyaq chaos``'s workers)."""
    return os.cpu_count() or 1


#: Tasks run at once per process by the gevent and threads pools unless told.
DEFAULT_CONCURRENCY = 8
#: Worker processes one ``miyaq worker`` may run (``--processes``).
MAX_PROCESSES = 1024
#: Tasks one worker process may run at once (``--concurrency``): greenlets,
#: threads or child processes, each with its memory.
MAX_CONCURRENCY = 10_000


@dataclass
class WorkerConfig(Settings):
    """One worker process group's settings (``miyaq worker APP [options]``)."""

    config_file: ClassVar[bool] = False

    processes: int = setting(1, "worker processes (1: this process; more are spawned and restarted when they die)",
                          short="-p")
    concurrency: int | None = setting(None, "tasks run at once per process (default: 8; with --pool processes: "
                                         "the number of CPUs)", short="-c")
    pool: str = setting("gevent", "how handlers run: gevent (greenlets, the standard library patched so blocking "
                               "I/O yields), threads (a pool of --concurrency threads) or processes (--concurrency "
                               "child processes, for CPU-bound handlers)", choices=POOLS)
    max_tasks_per_child: int = setting(0, "processes pool: replace a child after this many tasks (0: never)")
    prefetch: int | None = setting(None, "tasks held beyond concurrency (default: concurrency, and more while "
                                      "tasks are short: about 5 ms of work, up to 16 x concurrency in all)")
    queues: str = setting("", "comma-separated queues (default: every queue the app's tasks name)", short="-Q")
    connect: str = setting("", "comma-separated node endpoints (default: the App's)")
    heartbeat: float = setting(1.0, "seconds between the worker's side-channel heartbeats")
    node_timeout: float = setting(5.0, "seconds a node may leave the ZMTP heartbeats on the worker's connection to "
                                    "it unanswered (its process frozen, its host gone) before the connection is "
                                    "dropped, its tasks given back and the worker registers again (a PING every "
                                    "fifth of it); must exceed the time the largest message -- one task's "
                                    "payload, or a DISPATCH of 64 KiB -- takes on the worker's link")
    grace: float = setting(30.0, "seconds SIGTERM waits for running tasks")
    log_level: str = setting("INFO", "logging level", choices=LOG_LEVELS)
    key: str = setting("", "this worker's secret certificate (NAME.key_secret from `miyaq keys add ... --role "
                        "worker`); with --server-key every socket runs CURVE (default: the App's)")
    server_key: str = setting("", "the nodes' public certificate (node.key from `miyaq keys init`; default: the App's)")

    def __post_init__(self) -> None:
        self.check_fields()
        if self.concurrency is None:
            self.concurrency = processes_concurrency() if self.pool == "processes" else DEFAULT_CONCURRENCY
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ConfigError(f"processes must be 1..{MAX_PROCESSES:,}, not {self.processes:,}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigError(f"concurrency must be 1..{MAX_CONCURRENCY:,} tasks per process, not "
                              f"{self.concurrency:,}")
        if self.base_credit > MAX_WORKER_CAPACITY:
            raise ConfigError(f"concurrency + prefetch must be at most {MAX_WORKER_CAPACITY:,} (the most tasks a "
                              f"node lets one worker hold), not {self.base_credit:,}")
        if self.heartbeat <= 0:
            raise ConfigError("heartbeat must be above 0")
        low, high = NODE_TIMEOUT_RANGE
        if not low <= self.node_timeout <= high:
            raise ConfigError(f"node_timeout must be {low:g}..{high:g} seconds, not {self.node_timeout:g}")
        if self.max_tasks_per_child and self.pool != "processes":
            raise ConfigError("max_tasks_per_child applies to the processes pool only (--pool processes)")
        check_queue_names(self.queue_list)

    @property
    def slots(self) -> int:
        """``concurrency``, resolved (never None after construction)."""
        assert self.concurrency is not None
        return self.concurrency

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with these settings as the ``MIYAQ_*`` variables
        :meth:`load` reads back (unset ones removed): a child's environment."""
        env = dict(base)
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == "":
                env.pop("MIYAQ_" + f.name.upper(), None)
            else:
                env["MIYAQ_" + f.name.upper()] = str(value)
        return env

    @property
    def base_credit(self) -> int:
        """Tasks held per node to begin with: running plus prefetched
        (``concurrency + prefetch``; twice the concurrency by default)."""
        return self.slots + (self.slots if self.prefetch is None else self.prefetch)

    @property
    def capacity(self) -> int:
        """Most tasks held per node: the base credit with ``--prefetch``; by
        default up to MAX_PREFETCH_FACTOR × concurrency while tasks are short
        (:mod:`miyaq.worker.prefetch`); never over MAX_WORKER_CAPACITY."""
        if self.prefetch is not None:
            return self.base_credit
        return min(max(self.base_credit, MAX_PREFETCH_FACTOR * self.slots), MAX_WORKER_CAPACITY)

    @property
    def recent_report_seconds(self) -> float:
        """How long reports sent to a node are kept, in case it was frozen
        (:mod:`miyaq.worker.routing`): RECENT_REPORT_SECONDS, or three times
        ``node_timeout`` when that is longer -- its connection is dropped up to
        ``node_timeout`` after the node froze."""
        return max(RECENT_REPORT_SECONDS, 3 * self.node_timeout)

    @property
    def queue_list(self) -> list[str]:
        return [q for q in self.queues.split(",") if q]

    @property
    def endpoint_list(self) -> list[str]:
        return [e for e in self.connect.split(",") if e]


def check_queue_names(queues: list[str], *, of_app: bool = False) -> None:
    """ConfigError unless every node would take a READY naming ``queues``:
    each a queue name, at most ``MAX_READY_QUEUES`` of them (a name given
    twice counted once). Before 2026-12-07 a worker given such queues said
    READY every second for ever, refused each time. The error begins with
    where they came from: the setting ``queues`` (checked by
    :class:`WorkerConfig`; :func:`~miyaq.settings.refused`, so that, loaded,
    it names the flag or variable the value came from -- before 2026-12-07
    the check ran in the re-executed worker, whose settings all come from
    the environment, and said ``--queues`` of a ``MIYAQ_QUEUES``), or
    ``of_app``: the app's tasks, which were given no ``--queues``."""
    def error(rest: str) -> ConfigError:
        return ConfigError("the app's tasks" + rest) if of_app else refused("queues", rest)
    unique = list(dict.fromkeys(queues))
    for queue in unique:
        try:
            check_queue(queue)
        except InvalidField:
            raise error(f": {queue!r} is not a queue name (1-128 characters of A-Z a-z 0-9 _ . : -)") from None
    if len(unique) > MAX_READY_QUEUES:
        raise error(f" name{'' if of_app else 's'} {len(unique)} queues; a worker takes tasks from at most "
                    f"{MAX_READY_QUEUES}" + (": choose some with --queues" if of_app else ""))


def checked_queues(given: list[str], the_apps: list[str]) -> list[str]:
    """The queues a worker registers for: ``given`` (``--queues``, checked
    as a setting by :class:`WorkerConfig`), else its app's, each once; the
    app's are checked here (ConfigError at start: more than
    ``MAX_READY_QUEUES``, or a name that is none)."""
    if not given:
        check_queue_names(the_apps, of_app=True)
    return list(dict.fromkeys(given or the_apps))


# -- the node link ------------------------------------------------------------------
#: Node heartbeats (the interval comes in WELCOME) missed before the worker
#: counts its node slow (it logs it once, and prefers another holder of a
#: task to report to). It does not reconnect for that alone: a node whose
#: connection stays up is alive, and may only be stalled (docs/protocol.md, 7.2).
LIVENESS = 3
#: The most heartbeats a node's WELCOME ``liveness`` is taken for (a node
#: configured for more: this many): after ``heartbeat × liveness`` of
#: silence a node may have taken this worker for lost, and a DISPATCH sent
#: before such a silence is given back (:mod:`miyaq.worker.transit`).
MAX_NODE_LIVENESS = 100
#: The most task ids a link remembers giving back as late (a DISPATCH sent
#: before such a silence): one of them sent again (the same attempt) by a node that kept this
#: worker runs (:mod:`miyaq.worker.late_dispatch`). The
#: oldest are forgotten first; a WELCOME forgets them all.
MAX_LATE_IDS = 10_000
#: A node silent for ``HUNG_NODE_LIVENESS × heartbeat × LIVENESS`` seconds
#: (30 s at the default heartbeat) while its connection stays up -- its
#: libzmq answers ZeroMQ's heartbeats, its Python never answers the worker --
#: is taken for hung: the worker opens a fresh socket and registers again.
HUNG_NODE_LIVENESS = 10
#: ``node_timeout`` (``--node-timeout``, 5 s by default): seconds of ZMTP
#: heartbeats on a worker's connection to a node (a PING every fifth of it;
#: :func:`miyaq.runtime.sockets.heartbeat_options`): a node that answers none
#: for this long after a PING -- its process frozen (SIGSTOP, a paused VM) or
#: its host gone -- has its connection dropped, and the connection monitor
#: has the worker register again. A node that is alive answers from libzmq's
#: own thread, however busy its Python is, so the default is short: a frozen
#: node is left about as soon as a silent one was before 2026-12-05 (3 s).
#: But libzmq hears the answer only once the message in front of it has
#: arrived, so on a slow link the timeout must exceed the time the largest
#: message takes (a task's payload, or a DISPATCH of
#: ``miyaq.constants.DISPATCH_MESSAGE_BYTES``): a link slower than that has
#: its connection dropped, and its tasks given back, again and again. It was
#: a constant before 2026-12-06. The range it may be set in:
NODE_TIMEOUT_RANGE = (0.5, 3600.0)
#: The node's heartbeat interval a worker follows, in seconds: a WELCOME's
#: ``heartbeat`` outside this range (a buggy or hostile node's) is brought
#: into it -- below it the worker would reconnect in a loop, above it never
#: notice a silent node.
NODE_HEARTBEAT_RANGE = (0.05, 3600.0)
#: A link's heartbeat goes this much before it is due rather than after: the
#: wait for it may end a little early (its timer is armed early, never late:
#: miyaq.runtime.waits.FdWait), and a beat put off by that much cost a second
#: wake-up of the worker's hub for each node, each heartbeat (2026-12-06: 2.9
#: wake-ups a second for each idle link where 2 are the node's heartbeat and
#: the link's own). Sooner, never later: two beats stay at most ``heartbeat``
#: apart (docs/protocol.md, 7.2).
BEAT_EARLY = 0.005
#: Seconds after (re)connecting without a WELCOME before the worker checks
#: the endpoint and says why it cannot reach it (then again with backoff).
FIRST_CONTACT = 2.0
FIRST_CONTACT_REPEAT_MAX = 60.0
#: Seconds a TCP probe of an unreachable endpoint may take.
PROBE_TIMEOUT = 1.0
#: Largest message accepted from a node, in bytes: a DISPATCH holds at most
#: 64 KiB of payloads (``miyaq.constants.DISPATCH_MESSAGE_BYTES``), or one
#: larger task (up to the node's ``max_payload``), so this is room to spare.
MAX_INBOUND_MESSAGE = 64 * 1024 * 1024
#: Most nodes a worker connects to (the ring's members, as they are
#: discovered). A link to a node that left the ring is retired after
#: ``DEPARTED_NODE_GRACE``, so this bounds the links to current members,
#: not to every address a node ever had.
MAX_NODES = 256
#: A node the ring no longer names -- no ``nodes`` list heard from any node
#: (WELCOME, HEARTBEAT) named its endpoint for this long -- is no longer
#: linked to, once nothing of it is left here (no task it gave still
#: running or waiting, no result or touch for it unsent): its socket and
#: greenlets are closed and its side heartbeats stop. The same 60 s as the
#: cluster's ``DEPARTED_GRACE`` (a node that left the ring is still
#: listened to that long). An endpoint given to the worker (``--connect``,
#: ``endpoints``) is never retired, nor the worker's last link.
DEPARTED_NODE_GRACE = 60.0
#: How often, at most, the worker looks for links to retire (on a ``nodes``
#: list heard): the check walks what it holds, so not at every heartbeat of
#: every node.
DEPARTED_NODE_CHECK = 1.0
#: A DISPATCH item's holders: at most this many endpoints (a task has at
#: most 16 holders), each of at most ``protocol.commands.MAX_ENDPOINT_CHARS``
#: characters; others are ignored.
MAX_HOLDERS = 16

# -- results --------------------------------------------------------------------------
#: A DONE message carries at most this many results, and no more than this
#: many bytes of them (but for one larger result, which goes alone): as a
#: node's DISPATCH (``DISPATCH_MESSAGE_BYTES``), small enough to cross a slow
#: link well within the node's wait for a whole message (a ZMTP heartbeat
#: answered, 30 s). Before 2026-12-06 a DONE carried up to 4 MiB of results:
#: 34 s on a 1 Mbit/s link, and the node dropped the worker's connection.
#: 256 results of 100 bytes still go as one message.
RESULTS_PER_MESSAGE = 256
RESULT_BYTES_PER_MESSAGE = 64 * 1024
#: The largest packed result a handler may return: its DONE must fit one
#: message to a node (``max_message``, 16 MiB unless changed; also the most
#: a client reads in one reply). A larger one fails its task
#: (``ResultTooLarge``, not retried) rather than go out and have the node
#: drop the connection -- and count every task the worker held lost. A node
#: fails a result over its ``max_payload`` (1 MiB by default) itself.
MAX_RESULT_BYTES = DEFAULT_MAX_MESSAGE - 64 * 1024
#: What a DONE message holds beside its one large result: a node that says
#: its ``max_message`` in WELCOME takes results up to that much less.
RESULT_MESSAGE_SLACK = 64 * 1024
#: Bytes of a failing handler's message and traceback sent to the node.
ERROR_MESSAGE_BYTES = 4096
TRACEBACK_BYTES = 16384
#: Reports (DONE, FAILED) a worker keeps after sending them, for a task with
#: other holders, in case the node they went to dies before it tells those
#: holders (:class:`~miyaq.worker.routing.Routes`): for this many seconds, at
#: most this many, holding at most this many bytes of results and errors.
#: Three times the default ``node_timeout`` (and three times a longer one:
#: :attr:`WorkerConfig.recent_report_seconds`): what was sent to a node that
#: froze is still kept when its connection is dropped.
RECENT_REPORT_SECONDS = 15.0
RECENT_REPORT_MAX = 10_000
RECENT_REPORT_BYTES = 16 * 1024 * 1024

#: A worker holds at most this many times its capacity a node (running and
#: waiting, all nodes together); deliveries past it are returned unstarted.
#: A node never sends more than the credit it was granted; the margin is for
#: the races where its count and the worker's differ for a while.
OVER_CAPACITY = 2

# -- running handlers ---------------------------------------------------------------------
#: How often the worker checks running tasks against their timeouts (the
#: precision with which a handler past its timeout is stopped).
WATCHDOG_TICK = 0.1
#: How often an idle worker's watchdog looks (seconds). A job whose deadline
#: is later than the watchdog's next look does not wake it: one task at a
#: time, no job wakes it at all.
WATCHDOG_IDLE = 1.0
#: processes pool: seconds a new child may take to import the app and say
#: hello before it is killed and started again.
CHILD_START_TIMEOUT = 60.0
#: Seconds a worker waits for its pool to be ready (every child of the
#: processes pool started) before it registers with its nodes anyway,
#: offering capacity that is not there yet (said at WARNING).
POOL_READY_WAIT = 10.0
#: processes pool: seconds a retired child may take to exit before it is killed.
CHILD_EXIT_WAIT = 5.0
#: processes pool: how often a child checks that its parent is still there.
CHILD_PARENT_CHECK = 1.0
#: Seconds between a supervised worker process's looks at whether its
#: supervisor is still its parent (:func:`~miyaq.worker.signals.stop_on_signals`).
SUPERVISOR_CHECK = 1.0
#: processes pool: the largest message body a child sends its parent (an
#: OUTCOME: the handler's packed result). The parent's socket drops a larger
#: one together with the connection, so a child fails a larger result
#: itself (``ResultTooLarge``): a node takes at most 16 MiB in a message by
#: default, and its ``max_payload`` (1 MiB by default) in a result.
CHILD_MESSAGE_BYTES = 16 * 1024 * 1024

# -- stopping ---------------------------------------------------------------------------
#: How often a stopping worker checks whether its handlers have finished.
DRAIN_POLL = 0.05
#: Time for the last BYE to leave before the sockets close.
BYE_LINGER = 0.05
#: ``--processes N``: what the supervisor sends its worker processes when it
#: is asked again to stop (a second SIGTERM, SIGINT or SIGHUP): end the wait
#: for running handlers at once. Not SIGTERM: a ``kill -TERM -PGID`` reaches
#: every process of the group and the supervisor, which passes it on, so a
#: worker process of the group gets SIGTERM twice for one request.
HURRY_SIGNAL = signal.SIGUSR1

# -- processes ----------------------------------------------------------------------------
#: ``--processes N``: a child that dies is restarted; more than this many
#: restarts within a minute and the parent gives up and stops.
MAX_RESTARTS_PER_MINUTE = 10
#: Longest delay before restarting a dead worker process.
RESTART_DELAY_MAX = 5.0
#: How often the parent checks its worker processes.
PROCESS_POLL = 0.2
#: Seconds beyond ``grace`` the parent waits for a child after SIGTERM before killing it.
CHILD_STOP_SLACK = 5.0

# -- heartbeat thread ------------------------------------------------------------------------
#: Side-channel beats queued per node at most (never flood a node that returns).
PULSE_SNDHWM = 4
#: How often, at least, the hub marks that it ran, for the heartbeat thread to
#: see (seconds): the watchdog's idle look does it.
HUB_TICK = WATCHDOG_IDLE
#: Seconds the hub may go without running (a handler holding it: CPU work in
#: the gevent pool) before the heartbeat thread warns, naming the running tasks.
HUB_STALL_WARN = 5.0
