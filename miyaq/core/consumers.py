"""Who tasks are leased to: long-lived ZeroMQ workers and one-shot pull
consumers (RECEIVE). Both take work by credit: the node never sends a
consumer more tasks than it granted (zguide ch. 7), so nothing relies on a
socket's high-water mark.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from typing import Any, Callable, NamedTuple

from miyaq.core.service import ServiceEndpoint
from miyaq.core.task_names import names_row
from miyaq.protocol import commands as c
from miyaq.runtime import monotonic, wall
from miyaq.store.task import Task


def delivery(task: Task, holders: Callable[[Task], list[str]] | None = None) -> list[Any]:
    """A task as DISPATCH carries it: [id, queue, name, body, attempt, timeout]
    and, in a cluster, the service endpoints of its holders (where the worker
    reports if this node dies)."""
    item: list[Any] = [task.id, task.queue, task.name, task.body, task.attempt, task.timeout]
    if holders is not None and len(task.holders) > 1:
        item.append(holders(task))
    return item


class Origin(NamedTuple):
    """Where a long-poll came from: its service connection (routing id), key
    (None: an in-process caller such as the HTTP gateway; no keys) and the
    request's ``req`` on that connection (what a WITHDRAW names)."""

    connection: bytes | None = None
    key: str | None = None
    req: Any = None


NOWHERE = Origin()


def worker_principal(wid: str, key: str | None) -> str:
    """Who a worker is: its id, and the key it registered with (the same on
    every node, so another holder recognises it after its node died)."""
    return f"worker:{key}/{wid}" if key is not None else f"worker:{wid}"


#: This process's secret for naming connections (:func:`pull_principal`):
#: a name that leaves the node says nothing of the routing id it stands for.
_CONNECTION_NAME_KEY = os.urandom(16)


def pull_principal(identity: bytes, key: str | None) -> str:
    """Who a ZeroMQ pull consumer is: its key, or without keys its
    connection -- named by a keyed hash of its routing id, never the id
    itself. The name goes out in STARTED events and in handed-off records,
    which anyone may read on a node without keys; before 2026-12-05 it was
    the routing id in hex, and it told a stranger where libzmq's counter of
    anonymous routing ids stood (the next ids, chosen by the stranger,
    aborted the node: docs/security.md, "Routing ids") and the routing id
    under which another connection could ack that consumer's task. The
    hash is this process's: a consumer without keys reports on its own
    connection, to the node that leased it the task."""
    if key is not None:
        return f"pull:{key}"
    return "pull:" + hashlib.blake2b(identity, key=_CONNECTION_NAME_KEY, digest_size=10).hexdigest()


_made = itertools.count()
"""Numbers consumers in the order they are made (:attr:`Consumer.order`)."""


class Consumer:
    """Base of every consumer. ``running`` holds the tasks leased to it;
    ``principal`` says who it acts for: the engine records it with each lease,
    and only that principal may later report on the lease."""

    kind = "consumer"
    principal: str | None = None
    #: The task names it runs, if it declared them (a worker's READY,
    #: :mod:`miyaq.core.task_names`); None: any name.
    names: frozenset[str] | None = None
    #: The first of them a row shows (:meth:`TaskNames.head
    #: <miyaq.core.task_names.TaskNames.head>`, shared by a fleet's registrations).
    names_head: tuple[str, ...] = ()

    def __init__(self, queues: list[str]) -> None:
        self.queues = queues
        self.credit = 0
        self.running: dict[str, Task] = {}
        # Made earlier, smaller: the dispatcher's tie-break between consumers
        # with as many free slots (the same one takes lone tasks).
        self.order = next(_made)

    def __repr__(self) -> str:
        """As a log line names it (``%r``): its kind and queues, never an address."""
        return f"{self.kind} (queues {', '.join(self.queues)})"

    # -- what the dispatcher may lease it: by default its credit, counted here --------
    def room(self) -> int:
        """How many tasks the dispatcher may lease to this consumer now."""
        return self.credit

    def granted(self, n: int) -> None:
        """The consumer may take ``n`` more (a CREDIT, a READY)."""
        self.credit += n

    def took(self, n: int) -> None:
        """The dispatcher leased it ``n`` tasks."""
        self.credit -= n

    def dropped(self) -> None:
        """The dispatcher forgot it: it takes nothing until granted again."""
        self.credit = 0

    def free_slots(self, room: int) -> int:
        """Of ``room`` tasks it may be leased now, how many would start at
        once; the rest would wait in its backlog (a worker's prefetch). By
        default all of them: the consumer holds no backlog."""
        return room

    def deliver(self, tasks: list[Task]) -> bool:
        """Send leased tasks; False if they could not be sent."""
        raise NotImplementedError

    def abort(self, ids: list[str]) -> None:
        """Best effort: ask the consumer to stop these tasks."""

    def lease_expired(self, task: Task, now: float) -> None:
        """The lease of ``task`` (leased to this consumer) ran out. A consumer
        that runs the attempt itself (the gateway's webhook lanes) stops it
        here and may report how it ended (a FAILED through the engine); a
        task still running after this call is taken back as lost. Runs in
        the engine's timer loop: it must not block, nor lease tasks."""


class WorkerConsumer(Consumer):
    """A worker process connected to the service socket (READY/HEARTBEAT)."""

    kind = "worker"

    def __init__(self, endpoint: ServiceEndpoint, identity: bytes, wid: str, queues: list[str],
                 capacity: int, last_seen: float, info: dict[str, Any],
                 key: str | None = None) -> None:
        super().__init__(queues)
        self.endpoint = endpoint
        self.identity = identity
        self.wid = wid
        self.key = key               # the name of the key it registered with (None without keys)
        self.principal = worker_principal(wid, key)
        self.capacity = capacity
        self.credit = capacity
        # Tasks it runs at once: its READY's concurrency (what it holds beyond
        # is its prefetch); without one, all of its capacity counts.
        self.slots = min(info.get("concurrency") or capacity, capacity)
        self.last_seen = last_seen   # monotonic
        self.info = info
        self.holder_endpoints: Callable[[Task], list[str]] | None = None
        self.stopping = False        # it said so (RETURN "stopping"): its credit stays 0

    def granted(self, n: int) -> None:
        """As a consumer's, unless it is stopping: then it takes nothing more."""
        if not self.stopping:
            self.credit += n

    def free_slots(self, room: int) -> int:
        """Its slots not taken by the tasks this node leased it and has not
        heard the end of (tasks other nodes gave it are not counted)."""
        return min(room, self.slots - len(self.running))

    def deliver(self, tasks: list[Task]) -> bool:
        holders = self.holder_endpoints
        return self.endpoint.send(self.identity, c.DISPATCH, {"tasks": [delivery(t, holders) for t in tasks],
                                                              "sent": monotonic()})

    def abort(self, ids: list[str]) -> None:
        self.endpoint.send(self.identity, c.ABORT, {"ids": ids})

    def __repr__(self) -> str:
        """As a log line names it: ``worker w1 (queues a, b)``."""
        return f"worker {self.wid} (queues {', '.join(self.queues)})"

    def describe(self) -> dict[str, Any]:
        return {"worker": self.wid, "queues": self.queues, **names_row(self.names, self.names_head),
                "capacity": self.capacity, "credit": self.credit, "running": len(self.running),
                "stopping": self.stopping, "last_seen": self._last_seen_wall(), **self.info}

    def _last_seen_wall(self) -> float:
        """When the worker was last heard, as a unix time (``last_seen`` is monotonic)."""
        return wall() - (monotonic() - self.last_seen)


class PullConsumer(Consumer):
    """One RECEIVE request: credit 1, answered with one task or, at its
    deadline, with none. The task stays leased to it until ACK/NACK or the
    lease runs out (there are no heartbeats for pull consumers)."""

    kind = "pull"

    def __init__(self, queues: list[str], deadline: float,
                 answer: Callable[[dict[str, Any] | None], bool], principal: str = "http",
                 origin: Origin = NOWHERE) -> None:
        super().__init__(queues)
        self.principal = principal
        self.origin = origin
        self.credit = 1
        self.deadline = deadline
        self.answer = answer

    def __repr__(self) -> str:
        """As a log line names it: ``pull consumer http (queues a)``."""
        return f"pull consumer {self.principal} (queues {', '.join(self.queues)})"

    def deliver(self, tasks: list[Task]) -> bool:
        task = tasks[0]
        info = task.header()
        info["body"] = task.body
        return self.answer(info)
