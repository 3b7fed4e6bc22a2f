"""Validate the replication stream's events and the answers other nodes
send to this node's peer requests (QUERY, REPLICATE), as
:mod:`miyaq.protocol.recordspec` validates task records: each check raises
:class:`~miyaq.errors.InvalidField` naming the field; items a newer version
adds at the end of an event are ignored.
"""
from __future__ import annotations

from typing import Any

from miyaq.config import NodeConfig
from miyaq.constants import MAX_LESSEE
from miyaq.errors import InvalidField
from miyaq.protocol import fields as f
from miyaq.protocol.failurespec import check_error
from miyaq.protocol.recordspec import MAX_HOLDERS, STONE_STATES, check_attempt, check_outcome, check_time
from miyaq.protocol.taskspec import check_id
from miyaq.store.task import DEAD, LIVE_STATES, MAX_REVIVALS

#: Stream events: op -> the fewest items it has (more are ignored).
_EVENT_LENGTH = {"S": 4, "T": 3, "F": 5, "R": 5, "D": 4, "V": 2, "P": 2}


def check_event(ev: Any, config: NodeConfig) -> None:
    """One replication stream event (:mod:`miyaq.cluster.holder_events`)."""
    if not isinstance(ev, list) or not ev or type(ev[0]) is not str or len(ev) < _EVENT_LENGTH.get(ev[0], 1 << 30):
        raise InvalidField("an event must be [op, id, ...] with a known op and its items", field="event")
    op = ev[0]
    check_id(ev[1])
    if op == "S":
        check_attempt(ev[2])
        check_time(ev[3], "lease_end")
        if len(ev) > 4 and type(ev[4]) is not bool:
            raise InvalidField("field 'at_most_once' must be true or false", field="at_most_once")
        if len(ev) > 5 and ev[5] is not None and (type(ev[5]) is not str or not 0 < len(ev[5]) <= MAX_LESSEE):
            raise InvalidField(f"a STARTED event's lessee must be nil or a name of 1 to {MAX_LESSEE} characters",
                               field="event")
    elif op == "T":
        check_time(ev[2], "lease_end")
    elif op == "F":
        check_outcome(ev[2], ev[3], ev[4], config)
        if len(ev) > 5 and ev[5] is not None and (type(ev[5]) is not str or not 0 < len(ev[5]) <= 256):
            raise InvalidField("a FINISHED event's key must be nil or 1 to 256 characters", field="key")
    elif op == "R":
        check_attempt(ev[2])
        check_time(ev[3], "eta")
        check_error(ev[4])
    elif op == "D":
        check_attempt(ev[2])
        check_error(ev[3])
    elif op == "V" and len(ev) > 2:
        f.integer({"revived": ev[2]}, "revived", lo=0, hi=MAX_REVIVALS)


def check_state_answer(a: Any, config: NodeConfig) -> None:
    """One id of a QUERY answer (:func:`miyaq.cluster.copies.describe`):
    ``[live state, standby, rank, time]``, ``["dead"]``, ``[finished state,
    result, error]`` or ``["unknown"]``."""
    if not isinstance(a, list) or not a or type(a[0]) is not str:
        raise InvalidField("a task's state must be [state, ...]", field="answer")
    state = a[0]
    if state in LIVE_STATES:
        if len(a) < 4 or type(a[1]) is not bool:
            raise InvalidField("a live task's state must be [state, standby, rank, time]", field="answer")
        f.integer({"rank": a[2]}, "rank", lo=0, hi=MAX_HOLDERS - 1)
        check_time(a[3], "eta")
    elif state in STONE_STATES:
        check_outcome(state, a[1] if len(a) > 1 else None, a[2] if len(a) > 2 else None, config)
    elif state not in (DEAD, "unknown"):
        raise InvalidField(f"unknown task state {state[:32]!r}", field="state")


def confirmed_ids(answer: dict[str, Any]) -> set[str]:
    """The task ids a REPLICATE answer says were stored (anything else in its
    ``ids`` is ignored)."""
    ids = answer.get("ids")
    if not isinstance(ids, list):
        return set()
    return {i for i in ids if type(i) is str}
