"""Validate what other nodes, and the log, hand a node: task records,
tombstones, outcomes and the log's change records (stream events and peer
answers: :mod:`miyaq.protocol.eventspec`).

Nothing from a peer is trusted more than a client: a task record that
arrives by REPLICATE (a submit's copy or a handoff), SYNC or the log passes
the checks a SUBMIT passes (:mod:`miyaq.protocol.taskspec`, same fields, same
bounds) plus those of the fields only records carry (state, attempt, error,
rank, holders, lease end, result). Each check raises
:class:`~miyaq.errors.InvalidField` naming the field, before anything is
stored; the caller refuses the record (docs/cluster.md, "What a node accepts
from another").

Records are read leniently where that is safe: a key this version does not
know is ignored (a newer node may send more), a missing field takes its
default, a failure description over ``ERROR_BYTES`` is cut to it
(:mod:`miyaq.protocol.failurespec`, which checks and cuts every failure
description). Every time a node stores is a unix timestamp between 0 and
``MAX_TIME``.

:func:`invalid_stored` is the invariant the engine's tests and the fuzz test
check: every task and tombstone a node holds passes these checks.
"""
from __future__ import annotations

import re
from typing import Any

from miyaq.config import NodeConfig
from miyaq.constants import ERROR_BYTES, MAX_LESSEE
from miyaq.errors import InvalidField
from miyaq.protocol import fields as f
from miyaq.protocol.failurespec import check_error
from miyaq.protocol.taskspec import (
    METHODS, YEAR, check_headers, check_id, check_queue, check_target, is_id, is_queue,
)
from miyaq.store.records import transfer_record
from miyaq.store.table import TaskTable, Tombstone, error_bytes
from miyaq.store.task import ARGS_LOST, DEAD, FINAL_STATES, LIVE_STATES, MAX_REVIVALS, SCHEDULED, Extra, Task, spec_for

#: The latest time a node stores (unix seconds: the year 2286).
MAX_TIME = 1e10
#: The most holders a task has (``replicas`` is at most 16).
MAX_HOLDERS = 16
#: A finished copy's state when another holder started an at-most-once task.
STARTED_ELSEWHERE = "started-elsewhere"
TASK_STATES = LIVE_STATES + (DEAD,)
STONE_STATES = FINAL_STATES + (STARTED_ELSEWHERE,)
#: Fields a refusal may name (a bounded metric label; anything else is "other").
FIELDS = frozenset({
    "id", "queue", "name", "url", "method", "body", "priority", "eta", "created", "expires", "max_retries",
    "backoff", "backoff_max", "timeout", "key", "replicas", "at_most_once", "meta", "headers", "rank",
    "holders", "state", "attempt", "error", "lease_end", "lessee", "result", "at", "record", "event", "answer",
})
#: How a task finished: ``(state, result, error)`` (a tombstone's, an ``F`` event's).
Outcome = tuple[str, bytes | None, dict[str, Any] | None]
_NODE_ID = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")     # as the ring checks them (cluster/ring_view.py)
_is_node = f.KnownNames(_NODE_ID).valid


def check_time(value: Any, field: str) -> float:
    """A time a node stores: unix seconds, 0 to ``MAX_TIME``."""
    if type(value) is float:
        if 0.0 <= value <= MAX_TIME:          # False for NaN
            return value
    elif type(value) is int and 0 <= value <= MAX_TIME:
        return float(value)
    raise InvalidField(f"field {field!r} must be a time in unix seconds, 0 to {MAX_TIME:g}", field=field)


#: The largest attempt count a node stores. The engine's count stops here
#: (:meth:`miyaq.core.engine.Engine.start`): a copy a peer sent at this
#: count and then run must still pass this check at the next replay.
MAX_ATTEMPT = 2**31 - 1


def check_attempt(value: Any, field: str = "attempt") -> int:
    """An attempt count: an integer, 0 to :data:`MAX_ATTEMPT`."""
    if type(value) is not int or not 0 <= value <= MAX_ATTEMPT:
        raise InvalidField(f"field {field!r} must be an integer >= 0", field=field)
    return value


def check_result(value: Any, config: NodeConfig, field: str = "result") -> bytes | None:
    """A finished task's result: nil, or at most ``max_payload`` bytes."""
    if value is None:
        return None
    if type(value) is not bytes or len(value) > config.max_payload:
        raise InvalidField(f"field {field!r} must be nil or binary of at most {config.max_payload} bytes",
                           field=field)
    return value


def check_outcome(state: Any, result: Any, error: Any, config: NodeConfig) -> Outcome:
    """How another holder finished a task: ``(state, result, error)``."""
    if type(state) is not str or state not in STONE_STATES:
        raise InvalidField(f"field 'state' of a finished task must be one of {', '.join(STONE_STATES)}",
                           field="state")
    return state, check_result(result, config), check_error(error)


def _holders(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_HOLDERS or not all(
            _is_node(h) for h in value):
        raise InvalidField(f"field 'holders' must list at most {MAX_HOLDERS} node ids", field="holders")
    return tuple(value)


def _meta(value: Any) -> dict[str, Any] | None:
    """A task's extras (webhook headers, replica offset, resent, revivals,
    the node a dead letter's arguments were lost with): keys this version
    does not know are dropped."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidField("field 'meta' must be a map", field="meta")
    meta: dict[str, Any] = {}
    if "headers" in value:
        meta["headers"] = check_headers(value["headers"])
    if value.get("offset") is not None:
        meta["offset"] = f.number(value, "offset", lo=0.0, hi=YEAR)
    if value.get("resent") is not None:
        meta["resent"] = f.boolean(value, "resent")
    if value.get("revived") is not None:
        meta["revived"] = f.integer(value, "revived", lo=0, hi=MAX_REVIVALS)
    lost = value.get(ARGS_LOST)
    if lost is not None:       # a dead letter whose arguments were lost with that node (since 2026-12-08)
        if not _is_node(lost):
            raise InvalidField(f"field 'meta.{ARGS_LOST}' must be a node id", field="meta")
        meta[ARGS_LOST] = lost
    return meta or None


#: The fields of the common record: a submit's copy of a named task.
_FAST_FIELDS = frozenset({"o", "id", "queue", "name", "method", "body", "priority", "eta", "created", "expires",
                          "max_retries", "backoff", "backoff_max", "timeout", "replicas", "key", "rank", "holders"})


#: A submit's copy as its sender lays it out (:func:`miyaq.store.records.task_record`,
#: no key, its rank left out): the order of a map's keys is kept on the wire.
SUBMIT_LAYOUT = ("o", "id", "queue", "name", "method", "body", "priority", "eta", "created", "expires",
                  "max_retries", "backoff", "backoff_max", "timeout", "replicas", "holders")

#: Node ids the fast path found valid (at most ``_NODES_KEPT``): a holder is
#: checked by a set lookup, not a call, once its id was checked in full.
_known_nodes: set[str] = set()
_NODES_KEPT = 10_000


def _fast(r: dict[str, Any], config: NodeConfig) -> Task | None:
    """The common record checked in one pass (REPLICATE is the hot path):
    the task, or None to take the full path -- which accepts everything this
    accepts, and names the field of anything wrong (:func:`fast_task`)."""
    if tuple(r) == SUBMIT_LAYOUT:      # a submit's copy: its fields read in one unpacking
        (_, task_id, queue, name, method, body, priority, eta, created, expires, max_retries, backoff,
         backoff_max, timeout, replicas, holders) = r.values()
        return fast_task(task_id, queue, name, method, body, priority, eta, created, expires, max_retries, backoff,
                         backoff_max, timeout, replicas, holders, 0, None, config)
    if r.keys() <= _FAST_FIELDS:
        get = r.get
        return fast_task(get("id", ""), get("queue", ""), get("name"), get("method", "POST"), get("body", b""),
                         get("priority", 0), get("eta", 0.0), get("created", 0.0), get("expires", 0.0),
                         get("max_retries", 3), get("backoff", 1.0), get("backoff_max", 300.0),
                         get("timeout", 300.0), get("replicas", 1), get("holders", ()), get("rank", 0),
                         get("key"), config)
    return None


def fast_task(task_id: Any, queue: Any, name: Any, method: Any, body: Any, priority: Any, eta: Any, created: Any,
              expires: Any, max_retries: Any, backoff: Any, backoff_max: Any, timeout: Any, replicas: Any,
              holders: Any, rank: Any, key: Any, config: NodeConfig) -> Task | None:
    """The common record's values checked in one pass: the task, or None
    when any is not what the common record holds (the caller then takes the
    full path, :func:`_full`, which names the field). The same checks as
    :func:`_full`'s, inline (a call costs as much as a check), and the task
    built from its interned spec and its own extras at once, not field by
    field through the properties. A map record (:func:`_fast`) and a row
    (:mod:`miyaq.protocol.recordrow`) are both checked here."""
    if not (is_id(task_id) and is_queue(queue) and type(name) is str and 0 < len(name) <= 256
            and method == "POST" and type(body) is bytes and len(body) <= config.max_payload
            and type(priority) is int and -(2**31) <= priority <= 2**31 - 1
            and type(eta) is float and 0.0 <= eta <= MAX_TIME          # False for NaN
            and type(created) is float and 0.0 <= created <= MAX_TIME
            and type(expires) is float and 0.0 <= expires <= MAX_TIME
            and type(max_retries) is int and 0 <= max_retries <= 10_000
            and type(backoff) is float and 0.0 <= backoff <= YEAR
            and type(backoff_max) is float and 0.0 <= backoff_max <= YEAR
            and type(timeout) is float and 0.01 <= timeout <= YEAR
            and type(replicas) is int and 1 <= replicas <= MAX_HOLDERS
            and (key is None or (type(key) is str and 0 < len(key) <= 256))
            and type(rank) is int and 0 <= rank < MAX_HOLDERS
            and type(holders) in (list, tuple) and len(holders) <= MAX_HOLDERS):
        return None
    known = _known_nodes
    for holder in holders:
        if type(holder) is not str or holder not in known:
            if not _is_node(holder):
                return None
            if len(known) < _NODES_KEPT:
                known.add(holder)
    task = Task.of(task_id, spec_for(queue, name, None, "POST", priority, max_retries, backoff, backoff_max,
                                     timeout, replicas, False), body, eta, created)
    if holders or rank or key is not None or expires:
        extra = task.extra = Extra()
        extra.key, extra.expires, extra.rank, extra.holders = key, expires, rank, tuple(holders)
    return task


def task_from_record(r: Any, config: NodeConfig) -> Task:
    """Rebuild a task from its record (:mod:`miyaq.store.records`), checked
    like a SUBMIT: raises :class:`~miyaq.errors.InvalidField`."""
    if not isinstance(r, dict):
        raise InvalidField("a task record must be a map", field="record")
    task = _fast(r, config)
    if task is not None:
        return task
    return _full(r, config)


def _full(r: dict[str, Any], config: NodeConfig) -> Task:
    task_id = check_id(r.get("id"))
    queue = check_queue(r.get("queue"))
    name, url = check_target(r)
    method = r.get("method", "POST")
    if type(method) is not str or method not in METHODS:
        raise InvalidField(f"field 'method' must be one of {', '.join(METHODS)}", field="method")
    task = Task(
        task_id, queue, name, f.binary(r, "body", b"", max_len=config.max_payload), url=url, method=method,
        priority=f.integer(r, "priority", 0),
        eta=check_time(r.get("eta", 0.0), "eta"), created=check_time(r.get("created", 0.0), "created"),
        expires=check_time(r.get("expires", 0.0), "expires"),
        max_retries=f.integer(r, "max_retries", 3, lo=0, hi=10_000),
        backoff=f.number(r, "backoff", 1.0, lo=0.0, hi=YEAR),
        backoff_max=f.number(r, "backoff_max", 300.0, lo=0.0, hi=YEAR),
        timeout=f.number(r, "timeout", 300.0, lo=0.01, hi=YEAR),
        key=f.string(r, "key", None, max_len=256),
        replicas=f.integer(r, "replicas", 1, lo=1, hi=MAX_HOLDERS),
        at_most_once=f.boolean(r, "at_most_once", False),
        meta=_meta(r.get("meta")),
    )
    task.rank = f.integer(r, "rank", 0, lo=0, hi=MAX_HOLDERS - 1)
    task.holders = _holders(r.get("holders"))
    state = r.get("state", SCHEDULED)
    if type(state) is not str or state not in TASK_STATES:
        raise InvalidField(f"field 'state' of a task record must be one of {', '.join(TASK_STATES)}",
                           field="state")
    task.state = state
    task.attempt = check_attempt(r.get("attempt", 0))
    task.error = check_error(r.get("error"))
    task.lease_end = check_time(r.get("lease_end", 0.0), "lease_end")
    lessee = r.get("lessee")
    if lessee is not None:
        task.lessees = [check_lessee(lessee)]
    return task


def check_lessee(value: Any) -> tuple[int, str]:
    """A transfer record's ``lessee``: ``[attempt, principal]``."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or type(value[0]) is not int or not 0 <= value[0] <= MAX_ATTEMPT
            or type(value[1]) is not str or not 0 < len(value[1]) <= MAX_LESSEE):
        raise InvalidField(f"field 'lessee' must be [attempt >= 0, name of 1 to {MAX_LESSEE} characters]",
                           field="lessee")
    return value[0], value[1]


def check_stone(stone: Any, config: NodeConfig) -> tuple[str, str, bytes | None, dict[str, Any] | None, str | None]:
    """A SYNC answer's tombstone ``[id, state, result, error, key?]``."""
    if not isinstance(stone, list) or len(stone) < 4:
        raise InvalidField("a tombstone must be [id, state, result, error, key]", field="record")
    task_id = check_id(stone[0])
    state, result, error = check_outcome(stone[1], stone[2], stone[3], config)
    key = stone[4] if len(stone) > 4 else None
    _check_stone_key(key)
    return task_id, state, result, error, key


def check_purge_mark(mark: Any) -> tuple[str, float]:
    """A SYNC answer's purge mark ``[id, at]``: a dead letter purged at ``at`` (since 2026-12-07)."""
    if not isinstance(mark, list) or len(mark) != 2:
        raise InvalidField("a purge mark must be [id, at]", field="purged")
    return check_id(mark[0]), check_time(mark[1], "at")


def _check_stone_key(key: Any) -> None:
    """A tombstone's routing key: nil, or 1 to 256 characters."""
    if key is not None and (type(key) is not str or not 0 < len(key) <= 256):
        raise InvalidField("field 'key' must have 1 to 256 characters", field="key")


def check_stone_record(r: dict[str, Any], config: NodeConfig) -> None:
    """A log's ``F`` record (:func:`miyaq.store.records.stone_record`)."""
    check_id(r.get("id"))
    check_queue(r.get("queue", "default"))
    check_outcome(r.get("state"), r.get("result"), r.get("error"), config)
    check_time(r.get("at", 0.0), "at")
    check_attempt(r.get("attempt", 0))
    f.string(r, "key", None, max_len=256)


def check_change(r: dict[str, Any]) -> None:
    """A log's change record: ``S`` started, ``R`` waiting again, ``D`` dead,
    ``V`` revived, ``P`` purged (:mod:`miyaq.persistence.journal`)."""
    op = r.get("o")
    if op in ("S", "R", "D"):
        check_attempt(r.get("attempt", 0))
    if op in ("R", "D"):
        check_error(r.get("error"))
    if op == "R":
        check_time(r.get("eta", 0.0), "eta")
    if op == "V":
        f.integer(r, "revived", None, lo=0, hi=MAX_REVIVALS)


# -- the invariant ------------------------------------------------------------------


def _stone_problem(stone: Tombstone, config: NodeConfig) -> str | None:
    try:
        check_id(stone.id)
        check_queue(stone.queue)
        check_outcome(stone.state, stone.result, stone.error, config)
        check_time(stone.finished, "at")
        check_attempt(stone.attempt)
        _check_stone_key(stone.key)
    except InvalidField as err:
        return f"tombstone {stone.id!r}: {err.message}"
    return None


def invalid_stored(table: TaskTable, config: NodeConfig) -> list[str]:
    """Every task and tombstone in ``table`` that would not pass validation
    (one line each; empty when the invariant holds). O(n): for tests and
    tools, never the hot path."""
    problems: list[str] = []
    for where, tasks, states in (("live", table.live, LIVE_STATES), ("dead", table.dead, (DEAD,))):
        for task_id, task in tasks.items():
            if (kept := error_bytes(task.error)) > ERROR_BYTES:    # first: the checks below cut it
                problems.append(f"{where} task {task_id!r} keeps an error of {kept} bytes")
                continue
            try:
                task_from_record(transfer_record(task), config)
            except InvalidField as err:
                problems.append(f"{where} task {task_id!r}: {err.message}")
                continue
            if task_id != task.id or task.state not in states:
                problems.append(f"{where} task {task_id!r} is {task.state!r} under id {task.id!r}")
            elif not 0.0 <= task.copy_wait <= MAX_TIME:     # logged with its A record, read back at replay
                problems.append(f"{where} task {task_id!r} waits {task.copy_wait!r} past its eta")
    for stone in table.tombstones.values():
        if (kept := error_bytes(stone.error)) > ERROR_BYTES:
            problems.append(f"tombstone {stone.id!r} keeps an error of {kept} bytes")
            continue
        problem = _stone_problem(stone, config)
        if problem is not None:
            problems.append(problem)
    return problems
