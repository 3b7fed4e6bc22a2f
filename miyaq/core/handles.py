"""The narrow, typed handles the core is given by the parts above it.

The core (engine, dispatcher, service socket, handlers, loops) imports no
part; what it needs from one is declared here as a :class:`typing.Protocol`
and handed in by the composition root (:func:`miyaq.node.assemble.build_node`).
Every node has a :class:`NodeRole` -- standalone (:mod:`miyaq.cluster.standalone`)
or clustered (:mod:`miyaq.cluster.role`) -- with the same interface, so the
core never asks which one it has.

Every method here runs in the node's event loop and must not block.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from miyaq.errors import MiyaqError
from miyaq.protocol.periodic import KnownSchedule, Schedule
from miyaq.store.task import Task

#: Where a submit's result goes: a routing id on the service socket, or a
#: callable (an in-process submitter: the HTTP gateway, the periodic scheduler)
#: that receives the list of results.
AckTarget = Any
Ack = Callable[[Any, list[Any]], None]
LeaderListener = Callable[[bool, int], None]


class Intake(Protocol):
    """Where accepted submits go: stores a task on its holders, then acknowledges."""

    def submit(self, task: Task, now: float, identity: AckTarget) -> None:
        """Store ``task``; its result ``[id, status, detail]`` goes to ``identity``."""

    def flush(self) -> None:
        """Send what the burst produced (replication requests)."""

    def sweep(self) -> int:
        """Refuse the submits whose deadline passed; how many (their answers
        are queued with the node's acks: the caller flushes them)."""


class NodeRole(Protocol):
    """A node's place in its ring: what the core and the parts may ask of it."""

    @property
    def intake(self) -> Intake:
        """Where this node's submits go."""

    #: True when a process that was frozen must hear from the other holders
    #: before it dispatches again (a clustered node): the core then watches
    #: for freezes and calls :meth:`stalled`.
    freeze_sensitive: bool

    @property
    def is_leader(self) -> bool:
        """True while this node may act as the ring's leader."""

    def add_leader_listener(self, fn: LeaderListener) -> None:
        """Call ``fn(is_leader, epoch)`` when leadership is gained or lost (add before start)."""

    def new_intake(self, ack: Ack) -> Intake:
        """An intake of its own for an in-process submitter, acknowledging to ``ack``."""

    def ring_info(self) -> dict[str, Any]:
        """Epoch, leader, vnodes and members with their endpoints and shares (RING, /status)."""

    def members(self) -> int:
        """How many nodes the ring holds."""

    def holders(self, routing_key: str, replicas: int) -> list[str]:
        """The node ids the ring places ``routing_key`` on (up to ``replicas``)."""

    def cancel(self, task_id: str, now: float, answer: Callable[[dict[str, Any] | MiyaqError], None]) -> None:
        """Cancel ``task_id`` (CANCEL at either door) and call ``answer``
        once -- at once, or when the task's first holder answered, in a
        cluster (docs/semantics.md, "Cancel") -- with the REPLY's fields
        (``cancelled``, ``state``, and ``unconfirmed: true`` when only this
        node's copy could answer) or the error to answer. Raises
        ``NotFound`` at once, nothing changed, for a task not known here.
        The caller waits for the log before it answers ``cancelled: true``."""

    def running_elsewhere(self, task_id: str, now: float) -> None:
        """A worker still runs ``task_id`` although the node that gave it went silent."""

    def stalled(self, seconds: float) -> None:
        """The process did not run for ``seconds`` (SIGSTOP, a VM pause)."""

    def flush(self) -> None:
        """Send what the last burst produced (replication, events, standby checks)."""

    def after_peer_work(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` after each burst of messages from other nodes
        (their requests, and their answers to this node's): what they made
        -- a copy ready to run, a timer due sooner, a submit now confirmed --
        is acted on then, as after a burst of the service socket."""

    def replication_lag(self, now: float) -> dict[str, tuple[float, int]]:
        """Per peer: seconds since its stream was heard, requests to it unanswered."""

    def stats(self) -> dict[str, Any] | None:
        """The ``cluster`` section of status (None for a standalone node)."""

    def not_ready(self) -> str:
        """Why this node would not serve its part of the ring now, as one
        word (``""`` when it would): ``not_in_ring`` (its current ring
        does not list it: joining, or left), ``fenced`` (cut off from the
        coordination service), ``reconciling`` (fetching its peers' state
        after a restart, a freeze or a fence). For the gateway's
        ``GET /readyz``; a standalone node is always ready here."""


class WriteBarrier(Protocol):
    """The durability step before an acknowledgement (the append-only log)."""

    def after_written(self, release: Callable[[], None], refuse: Callable[[str], None] | None = None) -> None:
        """Call ``release()`` once every record buffered so far is written;
        with ``refuse``, ``refuse(why)`` instead, at once, if a write fails
        first (``why``: the cause in a few words)."""

    def why_not_writable(self) -> str:
        """Why nothing can be made durable now (a full or failing disk), in a
        few words; "" while it can. Never blocks."""


class StartBarrier(Protocol):
    """The log as the dispatcher sees it: a DISPATCH of an at-most-once task
    waits until its start is written (docs/semantics.md, "at_most_once")."""

    def at_most_once_started(self) -> bool:
        """Whether an at-most-once task started since the last call (its
        start record buffered, not yet written); clears it."""

    def after_written(self, release: Callable[[], None]) -> None:
        """Call ``release()`` once every record buffered so far is written."""


class StorageHealth(Protocol):
    """How the node's durable log is doing (status ``storage`` and /metrics)."""

    def stats(self) -> dict[str, Any]:
        """``writable``, ``write_errors``, ``fsync_errors``, ``faults``, ``recoveries``..."""

    @property
    def writable(self) -> bool:
        """False while the log cannot be written (a plain attribute read: ``GET /readyz``)."""


class Immediate:
    """The write barrier of a node without a log: nothing to wait for."""

    @staticmethod
    def after_written(release: Callable[[], None], refuse: Callable[[str], None] | None = None) -> None:
        release()

    @staticmethod
    def why_not_writable() -> str:
        return ""


class ScheduleSink(Protocol):
    """Where a worker's periodic schedules go when it sends READY."""

    def declare(self, schedules: list[Schedule], wid: str, now: float, owner: str | None = None) -> None:
        """Keep them (``owner``: the declaring key, None without keys);
        ``InvalidField`` (nothing kept) past the node's or the key's limit,
        ``Forbidden`` for a change to another key's schedule. Never blocks."""


class ScheduleBook(Protocol):
    """What the node knows of periodic schedules, for people to read (the console)."""

    def known(self) -> list[KnownSchedule]:
        """Every schedule this node knows, by name."""


StatusReport = Callable[[float], dict[str, Any]]
