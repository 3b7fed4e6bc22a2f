"""The task record a node holds, and the task states.

A :class:`Task` is a plain slotted object: the node reads a small header
(queue, priority, times, limits) and never decodes ``body``, the producer's
opaque msgpack payload. One object per live task, so its size is the node's
memory per task (docs/semantics.md, "Capacity"), and it is kept small:

* what most tasks of a queue share -- queue, handler name, webhook URL and
  method, priority, retry and lease settings, replicas -- is one immutable
  :class:`Spec`, interned, so a million tasks of a few kinds hold a few specs
  (and one copy of each name instead of a million);
* what few tasks have -- a dedup key, webhook headers, an expiry, an error,
  a place among several holders -- is an :class:`Extra`, shared (the
  defaults) until a task sets one of them;
* both read and write as plain attributes (``task.queue``, ``task.key =``).

A task out of a lease is kept out of the cycle collector's sight, with its
:class:`Extra` and its ``lessees`` (:func:`out_of_sight`,
:func:`miyaq.runtime.heap.untrack`): from when its timer is put in a
bucket (a delayed task, one retrying 2 s or more ahead), it is
dead-lettered, or a lease of it ends (finished, it may stay held a while
by its lease timer's stale entry). A full collection walks the objects it
tracks with the hub stopped, and a node holds up to ``max_tasks`` (a
million by default) live tasks: 277-288 ms a full collection at a million
delayed tasks, when each was an object the collector tracked.

That is safe because a task refers to nothing that refers back to it (a
cycle through an untracked object is never freed): its fields are
strings, numbers, bytes, its shared :class:`Spec`, its :class:`Extra`
(strings, numbers, a tuple of strings, maps of names to scalars) and
``lessees`` (a list of ``(attempt, who)`` pairs) -- all but its
``consumer``, who keeps the task in its ``running`` map while it runs.
Setting ``consumer`` therefore puts the task back in the collector's
sight. Keep it so: a new field that may refer back to the task must do
the same.
"""
from __future__ import annotations

import gc
from operator import attrgetter
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from miyaq.runtime.heap import track, untrack
from miyaq.store.spec import SPEC_FIELDS, Spec, spec_for

SCHEDULED = "scheduled"   # waiting for its eta
READY = "ready"           # in its queue, waiting for a consumer
RUNNING = "running"       # leased to a consumer
RETRYING = "retrying"     # failed; waiting for the backoff to pass
DONE = "done"
DEAD = "dead"             # retries exhausted or rejected; in the dead-letter queue
CANCELLED = "cancelled"
EXPIRED = "expired"       # ttl passed before it started


LIVE_STATES = (SCHEDULED, READY, RUNNING, RETRYING)
FINAL_STATES = (DONE, CANCELLED, EXPIRED)
ALL_STATES = LIVE_STATES + (DEAD,) + FINAL_STATES


EXTRA_FIELDS = ("key", "meta", "expires", "error", "rank", "holders", "standby", "copy_wait")


class Extra:
    """A task's rarely set fields; :data:`NO_EXTRA` holds the defaults for every task.
    Out of the cycle collector's sight with its task (module doc): it holds nothing that refers back."""

    __slots__ = EXTRA_FIELDS

    def __init__(self) -> None:
        self.key: str | None = None
        self.meta: dict[str, Any] | None = None       # webhook headers and other rare extras
        self.expires = 0.0                            # 0: never
        self.error: dict[str, Any] | None = None
        self.rank = 0                                 # this node's rank among the holders
        self.holders: tuple[str, ...] = ()
        self.standby = False                          # a standby copy asks the earlier holders before it runs
        self.copy_wait = 0.0                          # this copy waits this long past eta (see Task.due)

    def copy(self) -> "Extra":
        other = Extra.__new__(Extra)
        other.key, other.meta, other.expires, other.error = self.key, self.meta, self.expires, self.error
        other.rank, other.holders, other.standby = self.rank, self.holders, self.standby
        other.copy_wait = self.copy_wait
        return other


NO_EXTRA = Extra()     # shared by every task that sets none of these; never written


def _spec_property(name: str) -> property:
    index = SPEC_FIELDS.index(name)

    def set_(task: "Task", value: Any) -> None:
        values = list(task.spec.values())
        values[index] = value
        task.spec = spec_for(*values)

    return property(attrgetter(f"spec.{name}"), set_, doc=f"The task's {name} (from its spec).")


def _extra_property(name: str) -> property:
    def set_(task: "Task", value: Any) -> None:
        extra = task.extra
        if extra is NO_EXTRA:
            if value == getattr(NO_EXTRA, name) and type(value) is type(getattr(NO_EXTRA, name)):
                return
            extra = task.extra = NO_EXTRA.copy()
            if not gc.is_tracked(task):
                untrack(extra)
        setattr(extra, name, value)

    return property(attrgetter(f"extra.{name}"), set_, doc=f"The task's {name} (rarely set).")


def _set_consumer(task: "Task", consumer: Any) -> None:
    """Who runs the task while RUNNING (None: nobody). It keeps the task in its
    ``running`` map -- a cycle -- so a task with a consumer is in the cycle
    collector's sight, and out of it again when the lease ends (module doc)."""
    task._consumer = consumer
    if consumer is None:
        out_of_sight(task)
    elif not gc.is_tracked(task):       # the test inline: on every lease
        track(task)


def _set_lessees(task: "Task", lessees: list[tuple[int, str]] | None) -> None:
    """(attempt, who it was leased to) of the last few attempts (None: never
    leased): a list changed in place (miyaq.core.attempts), out of the cycle
    collector's sight when its task is (it holds pairs of a number and a
    string: module doc)."""
    task._lessees = lessees
    if lessees is not None and not gc.is_tracked(task):
        untrack(lessees)


class Collector:
    """Whether tasks are taken out of the cycle collector's sight now
    (:func:`out_of_sight`): only while the node holds many
    (:meth:`miyaq.store.table.TaskTable.mind_the_collector`). A full
    collection over a few thousand tasks is short, and untracking costs a
    C call or three a task (about 0.7 µs of the node's 13 µs a task in
    bulk): a node holding few tasks skips it. On by default, for a table
    nobody minds."""

    untracking = True


def out_of_sight(task: "Task") -> None:
    """Take ``task`` out of the cycle collector's sight with its :class:`Extra`
    and ``lessees``, unless it has a consumer (module doc): its timer put in
    a bucket, dead-lettered, or its lease over -- while the node holds many
    tasks (:class:`Collector`). Cheap when it is already out of sight."""
    if Collector.untracking and task._consumer is None and gc.is_tracked(task):
        untrack(task)
        extra = task.extra
        if extra is not NO_EXTRA:
            untrack(extra)
        if task._lessees is not None:
            untrack(task._lessees)


class Task:
    """One task as a node holds it. ``attempt`` counts starts, from 0.

    ``timer_at`` is the time its timer is armed for (None: none), read by
    :class:`~miyaq.store.timers.TimerHeap`."""

    if TYPE_CHECKING:   # the checker sees the properties below as plain attributes
        __slots__ = ("id", "spec", "body", "eta", "created", "state", "attempt", "seq", "lease_end",
                     "consumer", "timer_at", "extra", "queue", "name", "url", "method",
                     "priority", "max_retries", "backoff", "backoff_max", "timeout", "replicas",
                     "at_most_once", "lane", "key", "meta", "expires", "error", "rank", "holders", "standby",
                     "copy_wait", "lessees", "_consumer", "_lessees")
    else:
        __slots__ = ("id", "spec", "body", "eta", "created", "state", "attempt", "seq", "lease_end",
                     "_consumer", "_lessees", "timer_at", "extra")

    def __init__(self, id: str, queue: str, name: str | None, body: bytes, *,
                 url: str | None = None, method: str = "POST", priority: int = 0,
                 eta: float = 0.0, created: float = 0.0, expires: float = 0.0,
                 max_retries: int = 3, backoff: float = 1.0, backoff_max: float = 300.0,
                 timeout: float = 300.0, key: str | None = None, replicas: int = 1,
                 at_most_once: bool = False, meta: dict[str, Any] | None = None) -> None:
        spec = spec_for(queue, name, url, method, priority, max_retries, backoff, backoff_max, timeout,
                        replicas, at_most_once)
        self._fill(id, spec, body, eta, created)
        if key is not None or meta is not None or expires:
            extra = self.extra = Extra()
            extra.key, extra.meta, extra.expires = key, meta, expires

    @classmethod
    def of(cls, id: str, spec: Spec, body: bytes, eta: float, created: float) -> "Task":
        """A new task of a known kind (the submit path's shortcut: no spec lookup)."""
        task = cls.__new__(cls)
        task._fill(id, spec, body, eta, created)
        return task

    def _fill(self, id: str, spec: Spec, body: bytes, eta: float, created: float) -> None:
        self.id = id
        self.spec = spec
        self.body = body
        self.eta = eta
        self.created = created
        self.state = SCHEDULED
        self.attempt = 0
        self.seq = 0                    # submit order; renewed each time it becomes ready (miyaq.store.ready)
        self.lease_end = 0.0
        self._consumer: Any = None      # who runs it while RUNNING (the property ``consumer``)
        # (attempt, who it was leased to) of the last few attempts: only they
        # may report on the task (miyaq.core.attempts, "Who may report").
        self._lessees: list[tuple[int, str]] | None = None
        self.timer_at: float | None = None
        self.extra = NO_EXTRA

    if TYPE_CHECKING:   # what the properties below read and write
        consumer: Any
        lessees: list[tuple[int, str]] | None
        queue: str
        name: str | None
        url: str | None
        method: str
        priority: int
        max_retries: int
        backoff: float
        backoff_max: float
        timeout: float
        replicas: int
        at_most_once: bool
        lane: str
        key: str | None
        meta: dict[str, Any] | None
        expires: float
        error: dict[str, Any] | None
        rank: int
        holders: tuple[str, ...]
        standby: bool
        copy_wait: float
    else:
        consumer = property(attrgetter("_consumer"), _set_consumer, doc=_set_consumer.__doc__)
        lessees = property(attrgetter("_lessees"), _set_lessees, doc=_set_lessees.__doc__)
        queue = _spec_property("queue")
        name = _spec_property("name")
        url = _spec_property("url")
        method = _spec_property("method")
        priority = _spec_property("priority")
        max_retries = _spec_property("max_retries")
        backoff = _spec_property("backoff")
        backoff_max = _spec_property("backoff_max")
        timeout = _spec_property("timeout")
        replicas = _spec_property("replicas")
        at_most_once = _spec_property("at_most_once")
        lane = property(attrgetter("spec.lane"), doc="The ready lane (its queue, or the queue's webhook lane).")
        key = _extra_property("key")
        meta = _extra_property("meta")
        expires = _extra_property("expires")
        error = _extra_property("error")
        rank = _extra_property("rank")
        holders = _extra_property("holders")
        standby = _extra_property("standby")
        copy_wait = _extra_property("copy_wait")

    @property
    def due(self) -> float:
        """When this copy's wait for the task's first run ends: ``eta`` -- the
        task's own, the same on every holder, what records carry and status
        shows -- plus ``copy_wait``, the copy's own extra wait (its rank's
        offset, or a handed-off copy's wait past a lease; 0 on the holder
        that runs the task). A waiting (``scheduled``) task's timer is armed
        for it. Before 2026-12-05 a copy added its wait to ``eta`` itself,
        and sent that on: each handoff added another offset.

        Without a ``copy_wait`` it is ``eta`` itself, the same object: the
        timer keeps it (``timer_at``), and ``eta + 0.0`` would be a new float
        for every waiting task -- 32 bytes each (2026-12-05 to 12-06: a
        million delayed tasks took 519.6 MiB instead of 488)."""
        wait = self.extra.copy_wait
        return self.eta + wait if wait else self.eta

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
        lost = args_lost(self)
        if lost is not None:
            info[ARGS_LOST] = lost
        return info

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.queue}/{self.name or self.url} {self.state} attempt={self.attempt}>"


ARGS_LOST = "args_lost"
"""The ``meta`` item (and header field) of a dead letter whose arguments
are unknown: the id of the node they were lost with. An at-most-once task's
other holders keep no copy once it starts (a ``started-elsewhere``
placeholder); when the runner's node dies and its worker reports the
failure to one of them, that holder dead-letters the task without its
arguments (:meth:`~miyaq.core.placeholders.Placeholders.fail_placeholder`).
Such a dead letter's ``body`` holds no arguments (it says the same:
:func:`miyaq.core.placeholders.lost_args_body`); it can never run again: a
dead-letter retry refuses it."""


def args_lost(task: Task) -> str | None:
    """The node ``task``'s arguments were lost with, if they were
    (:data:`ARGS_LOST`); None for every task that has its own."""
    meta = task.meta
    return meta.get(ARGS_LOST) if meta else None


MAX_REVIVALS = 2**31 - 1
"""Bound of :func:`revivals` as a record may carry it."""


def revivals(task: Task) -> int:
    """How many times ``task`` was taken back out of the dead letters (a
    dead-letter retry), kept in its ``meta`` (``revived``) so that it travels
    in every record -- handoff, SYNC, the log. A holder whose copy is dead
    while another holder's is alive with more revivals missed a retry (its
    ``V`` event was lost); one with as many has not yet heard the task was
    dead-lettered. Without this the two could not be told apart."""
    meta = task.meta
    return meta.get("revived", 0) if meta else 0


def count_revival(task: Task, at_least: int | None = None) -> None:
    """One more revival of ``task``, or ``at_least`` when that is more (the
    count of the holder that revived it, which may have revived it again
    since this copy last heard). A new ``meta``: the old one may be shared."""
    count = min(max(revivals(task) + 1, at_least or 0), MAX_REVIVALS)
    task.meta = {**(task.meta or {}), "revived": count}


def handler_label(task: Task) -> str:
    """For a log line: the task's handler, or its webhook's destination
    without credentials, path and query (a URL may carry a token in its
    query, and a log is read more widely than the task)."""
    if task.url is None:
        return str(task.name)
    parts = urlsplit(task.url)
    host = parts.hostname or "?"      # never the credentials a URL stored before 2026-12-05 may hold
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"webhook to {parts.scheme}://{host}{port}"
