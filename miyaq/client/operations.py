"""The request side of the client API, written once for every client flavour.

Each operation is a generator: it yields an :class:`Ask` (send this request
to that node, wait this long), receives the REPLY body (or has the node's
error thrown into it) and finally returns its answer. The threaded client
runs one with :func:`run` (blocking on each ask), the asyncio client with
``await``-ing each ask (``miyaq.aio``) -- so the rules (which node to ask
next, how a long-poll is repeated) live here only. An operation may also
yield a :class:`Pause` (a back-off): the runner sleeps that long, the way its
client sleeps, and sends it an empty answer.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from time import monotonic   # miyaq.runtime.monotonic, without importing the runtime (gevent) here
from typing import Any, Awaitable, Callable, Generator, Iterable

import msgpack

from ..errors import Busy, MiyaqError, NotFound, ProtocolError, ShuttingDown, Timeout, Unavailable
from ..protocol import commands as c
from .nodes import Nodes
from .requests import NoAnswer

LONG_POLL = 300.0
"""Longest single RESULT wait; longer waits ask again."""
RESULT_WAIT_DEFAULT = 3600.0
"""``timeout=None`` waits this long for a result."""
BUSY_FIRST = 0.05
"""Seconds before a RESULT long-poll refused ``busy`` is asked again (then
doubled each time, up to :data:`BUSY_MOST`, jittered)."""
BUSY_MOST = 1.0
"""The longest back-off between two RESULT long-polls refused ``busy``."""
SHUTTING_DOWN_PAUSE = 1.0
"""Seconds before a RESULT long-poll every node asked answered
``shutting_down`` is asked again (an HTTP 503's ``Retry-After: 1``)."""


@dataclass
class Ask:
    """One request: ``command`` with ``body`` (the driver adds ``req``) to node
    ``node`` (index; None: the first), failing with Timeout after ``timeout``
    seconds (None: the client's ``request_timeout``)."""

    command: bytes
    body: dict[str, Any]
    node: int | None = None
    timeout: float | None = None


@dataclass
class Pause:
    """Wait ``seconds`` before the operation goes on (a back-off); the
    operation is then sent an empty answer."""

    seconds: float


Operation = Generator["Ask | Pause", dict[str, Any], Any]


def run(op: Operation, ask: Callable[[Ask], dict[str, Any]], pause: Callable[[float], Any] = time.sleep) -> Any:
    """Run ``op`` to its answer, doing each of its asks with ``ask`` and each
    of its pauses with ``pause`` (both blocking)."""
    try:
        step = next(op)
        while True:
            if isinstance(step, Pause):
                pause(step.seconds)
                step = op.send({})
                continue
            try:
                reply = ask(step)
            except MiyaqError as err:
                step = op.throw(err)
            else:
                reply.pop("req", None)      # the protocol's own number: not part of the answer
                step = op.send(reply)
    except StopIteration as done:
        return done.value


async def run_async(op: Operation, ask: Callable[[Ask], Awaitable[dict[str, Any]]],
                    pause: Callable[[float], Awaitable[Any]]) -> Any:
    """Run ``op`` to its answer, awaiting each of its asks with ``ask`` and
    each of its pauses with ``pause`` (``asyncio.sleep``: the asyncio client)."""
    try:
        step = next(op)
        while True:
            if isinstance(step, Pause):
                await pause(step.seconds)
                step = op.send({})
                continue
            try:
                reply = await ask(step)
            except MiyaqError as err:
                step = op.throw(err)
            else:
                reply.pop("req", None)
                step = op.send(reply)
    except StopIteration as done:
        return done.value


def field(answer: dict[str, Any], command: bytes, name: str, kinds: type | tuple[type, ...]) -> Any:
    """``answer[name]`` if it is one of ``kinds``; else ``ProtocolError``
    naming the command and the field (a node of another version, or a
    buggy one: the caller gets a miyaq error, never a ``KeyError``)."""
    value = answer.get(name)
    if not isinstance(value, kinds):
        raise ProtocolError(f"the node answered {command.decode()} without a valid {name!r} "
                            f"(got {type(value).__name__})")
    return value


def one(command: bytes, body: dict[str, Any], node: int | None = None,
        timeout: float | None = None) -> Operation:
    """A single request: its REPLY body."""
    return (yield Ask(command, body, node, timeout))


def any_node(nodes: Nodes, command: bytes, body: dict[str, Any], first: str | int | None = None,
             timeout: float | None = None) -> Operation:
    """Ask ``first`` (or the first node); in a cluster, where that node does
    not hold the task or does not answer, ask the others in turn.
    ``NotFound`` only when every node said so: where one could not answer
    (``Unavailable``, ``Timeout``, ``ShuttingDown``: a stopping node) the
    task may be there, and that error is raised instead -- a false "not found" invites a caller to submit the
    task again (before 2026-12-05 the last node's answer was raised)."""
    unanswered: MiyaqError | None = None
    not_found: MiyaqError | None = None
    for index in nodes.order(first):
        if index in nodes.retired:
            continue            # its node left the ring since the order was made
        try:
            return (yield Ask(command, dict(body), index, timeout))
        except NotFound as err:
            not_found = err
        except (Unavailable, Timeout, ShuttingDown) as err:
            unanswered = err
    error = unanswered or not_found
    assert error is not None
    raise error


def status(nodes: Nodes, task_id: str | None, node: str | int | None) -> Operation:
    if task_id is None:
        return (yield from one(c.STATUS, {}, nodes.index(node)))
    return field((yield from any_node(nodes, c.TASK, {"id": task_id}, node)), c.TASK, "task", dict)


def cancel(nodes: Nodes, task_id: str) -> Operation:
    """CANCEL, asked of the client's first node, then of the others in
    turn (:func:`any_node`), whatever the task. Any holder answers as the
    task's first holder would: one that is not asks it, within a second,
    and answers ``unconfirmed`` when it is silent (docs/semantics.md,
    "Cancel"). Asking the first holder directly saved that hop (0.46 ms
    against 0.71 ms, medians on three local nodes) but, with that node
    frozen, waited the whole ``request_timeout`` (10 s) before asking
    another (a build of 2026-12-06 did so for a while)."""
    answer = yield from any_node(nodes, c.CANCEL, {"id": task_id})
    return bool(field(answer, c.CANCEL, "cancelled", bool))


def wait_result(nodes: Nodes, task_id: str, timeout: float | None, node: str | int | None,
                request_timeout: float) -> Operation:
    """Long-poll for a task's outcome until it is final or ``timeout`` passes
    (raw answer: state, result, error, timeout). When no node answers because
    each one asked went away (a restart: :class:`NoAnswer`), they are asked
    again until ``timeout``; a node down meanwhile costs each round
    ``CONNECT_WAIT``, so this never spins. A node that stops answers the
    wait ``shutting_down`` (at once, or when its ``shutdown_grace`` ends
    if the task runs there): the other nodes are asked, and when each one
    asked answered so, they are asked again after
    :data:`SHUTTING_DOWN_PAUSE`, until ``timeout`` (before 2026-12-05 the
    stopping node closed the connection under the wait, a ``NoAnswer``).
    So are they when none knows the task and one answered ``unavailable``
    with ``reconciling`` (a holder restarted, its copy maybe not back yet:
    before 2026-12-07 that reached the caller in the middle of its wait);
    any other ``unavailable`` a node answers is raised.

    A long-poll the node refuses ``busy`` -- it holds as many as it takes
    (``max_waiters``; ``max_waiters_per_connection`` of this client's
    connection, 1,000 by default; ``max_waiters_per_key``) -- is asked again
    after a back-off (:data:`BUSY_FIRST` doubling to :data:`BUSY_MOST`,
    jittered) until ``timeout``: the task is stored, and waiting for it is
    what the caller asked. At ``timeout`` the last ask waits 0 s, which a
    node answers at once without holding it: the outcome if there is one,
    else the usual ``Timeout`` naming the task and its state. Before
    2026-12-05 the ``Busy`` reached the caller of ``result()`` -- and of
    ``call()``, whose task was stored all the same, while the error table
    said a ``Busy`` from ``call()`` meant nothing was stored: a caller that
    submitted again ran the task twice.

    ``node`` (the node that accepted the task: asked first) may be an
    endpoint the client no longer knows -- its node left the ring and the
    client retired it (:mod:`.nodes`), before the wait or during it (while
    another node held the long-poll: before 2026-12-05 the next round then
    raised ``ValueError``): every node is then asked in turn, instead of
    ``ValueError``."""
    deadline = monotonic() + (RESULT_WAIT_DEFAULT if timeout is None else timeout)
    refusals = 0
    went_away = False       # a node asked went away during the wait (stopped, restarted)
    while True:
        if isinstance(node, str) and not nodes.knows(node):
            node = None     # asked at every round: the node may be retired while one waits elsewhere
        left = max(0.0, deadline - monotonic())
        wait = min(left, LONG_POLL)
        try:
            answer = yield from any_node(nodes, c.RESULT, {"id": task_id, "timeout": wait}, node,
                                         timeout=wait + request_timeout)
        except NotFound as err:
            if not went_away or not err.message.startswith("no task"):
                raise
            raise NotFound(gone_during_the_wait(err.message), **err.details) from None
        except (NoAnswer, ShuttingDown) as err:
            went_away = True
            if monotonic() >= deadline:
                raise
            if isinstance(err, ShuttingDown):    # every node asked is stopping: ask again in a moment
                yield Pause(min(SHUTTING_DOWN_PAUSE, max(0.0, deadline - monotonic())))
            continue
        except Unavailable as err:
            if err.details.get(c.RECONCILING) is not True or monotonic() >= deadline:
                raise
            # A holder that reconciles (restarted) does not know the task yet, and no
            # node asked knows it: ask again in a moment, as of stopping nodes.
            yield Pause(min(SHUTTING_DOWN_PAUSE, max(0.0, deadline - monotonic())))
            continue
        except Busy:
            if wait <= 0:
                raise   # the last ask, at the deadline (a node refuses a 0 s wait only when not read)
            backoff = min(BUSY_MOST, BUSY_FIRST * 2 ** min(refusals, 8)) * (0.5 + random.random() / 2)
            refusals += 1
            yield Pause(min(backoff, max(0.0, deadline - monotonic())))
            continue
        if not answer.get("timeout") or monotonic() >= deadline:
            return answer


def gone_during_the_wait(message: str) -> str:
    """A result wait's ``NotFound`` (``message``: the node's) once a node
    it asked went away during the wait: a node restarted without a data
    dir forgets the tasks it held. Before 2026-12-07 the caller got only
    the node's "no task <id>" for a task a node had accepted a moment
    before (a web app's ``await task.call_async(...)`` while its node
    restarted)."""
    return (f"{message}: a node went away during the wait (stopped or restarted), and no node asked knows the "
            "task now -- a node without a data dir (--data-dir) forgets the tasks it held when it stops "
            "(docs/durability.md)")


def tasks(queue: str | None, state: str | None, limit: int) -> Operation:
    body: dict[str, Any] = {"limit": limit}
    if queue:
        body["queue"] = queue
    if state:
        body["state"] = state
    return field((yield from one(c.TASKS, body)), c.TASKS, "tasks", list)


def dead(op: str, queue: str | None, ids: list[str] | None, limit: int) -> Operation:
    body: dict[str, Any] = {"op": op}
    if queue:
        body["queue"] = queue
    if ids is not None:
        body["ids"] = ids
    if op == "list":
        body["limit"] = limit
    return (yield from one(c.DEAD, body))


def receive(queues: Iterable[str] | str, timeout: float, request_timeout: float) -> Operation:
    """RECEIVE: the task map, or None when none came within ``timeout``."""
    names = [queues] if isinstance(queues, str) else list(queues)
    answer = yield from one(c.RECEIVE, {"queues": names, "timeout": timeout}, timeout=timeout + request_timeout)
    task = answer.get("task")
    if task is not None and not (isinstance(task, dict) and isinstance(task.get("id"), str)
                                 and isinstance(task.get("queue"), str) and type(task.get("attempt")) is int):
        raise ProtocolError("the node answered RECEIVE with a task that is not a map of id, queue and attempt")
    return task


def ack(task_id: str, attempt: int, result: Any) -> Operation:
    """ACK with ``result``; TypeError, nothing sent, for a result msgpack
    cannot encode -- an object, a set, an int past 64 bits, a list that
    contains itself, a string with a lone surrogate (msgpack's own
    OverflowError, ValueError, UnicodeEncodeError came out before 2026-12-05)."""
    try:
        packed = msgpack.packb(result, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"a result msgpack cannot encode: {exc}") from None
    body = {"id": task_id, "attempt": attempt, "result": packed}
    return bool(field((yield from one(c.ACK, body)), c.ACK, "ok", bool))


def touch(task_id: str, attempt: int) -> Operation:
    """TOUCH as a request (``req``): extend the lease of ``attempt`` of the
    task by its ``timeout`` from now. True if extended; False, as ACK's
    ``ok``, when that attempt is not the task's current one or was not
    received by this consumer (its lease ran out, it was finished,
    cancelled, given to another)."""
    return bool(field((yield from one(c.TOUCH, {"ids": [task_id], "attempt": attempt})), c.TOUCH, "ok", bool))


def nack(task_id: str, attempt: int, error: str, retry: bool, delay: float | None) -> Operation:
    body: dict[str, Any] = {"id": task_id, "attempt": attempt, "retry": retry,
                            "error": {"type": "Nack", "message": error}}
    if delay is not None:
        body["delay"] = delay
    return bool(field((yield from one(c.NACK, body)), c.NACK, "ok", bool))
