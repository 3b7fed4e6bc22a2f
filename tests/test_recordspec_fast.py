"""The fast path of a copy's record check (miyaq/protocol/recordspec.py,
``_fast``) after it was made cheaper (2026-12-06): its checks inline, a
holder known from an earlier record checked by a set lookup, the task
built from its spec and its own extras at once. A bad record is still
refused -- by the fast path handing it to the full one, which names the
field -- and the task it builds is the one the full path builds, sharing
the default extras when it sets none of them.
"""
from __future__ import annotations

import time
from typing import Any

import pytest

from miyaq.config import NodeConfig
from miyaq.errors import InvalidField
from miyaq.protocol import recordspec as rs
from miyaq.store.task import NO_EXTRA

CONFIG = NodeConfig()
NOW = time.time()


class _Str(str):
    """A string of another type: equal to a node id, never one (msgpack makes none)."""


def _record(**fields: Any) -> dict[str, Any]:
    """A submit's copy as its sender lays it out (no rank), then ``fields``
    (a field it has keeps its place: the layout stays a submit's)."""
    record: dict[str, Any] = {"o": "A", "id": "t1", "queue": "default", "name": "noop", "method": "POST",
                              "body": b"x", "priority": 0, "eta": NOW, "created": NOW, "expires": 0.0,
                              "max_retries": 3, "backoff": 1.0, "backoff_max": 300.0, "timeout": 300.0,
                              "replicas": 3, "holders": ["n1", "n2", "n3"]}
    record.update(fields)
    return record


def test_a_submits_copy_is_read_in_its_layout():
    assert tuple(_record()) == rs.SUBMIT_LAYOUT
    assert tuple(_record(eta=NOW + 1.0)) == rs.SUBMIT_LAYOUT


@pytest.mark.parametrize("fields,field", [
    ({"holders": ["n1", _Str("n2")]}, "holders"),      # equal to a holder known already, not a str
    ({"holders": ["n1", ["n2"]]}, "holders"),          # not hashable: refused, no TypeError
    ({"holders": ["n1", "n 2"]}, "holders"),
    ({"holders": ["n1"] * 17}, "holders"),
    ({"eta": float("nan")}, "eta"), ({"created": -1.0}, "created"), ({"expires": 1e300}, "expires"),
    ({"eta": True}, "eta"), ({"priority": True}, "priority"), ({"backoff": 1}, None),
    ({"timeout": 0.001}, "timeout"), ({"rank": 16}, "rank"), ({"key": ""}, "key"),
    ({"method": "PUT"}, None), ({"method": 5}, "method"), ({"id": "a b"}, "id"), ({"queue": ""}, "queue"),
    ({"name": 7}, "name"), ({"body": "text"}, "body"), ({"replicas": 0}, "replicas"),
    ({"max_retries": -1}, "max_retries"), ({"holders": "n1"}, "holders"),
])
@pytest.mark.parametrize("ranked", [False, True], ids=["submit layout", "with rank"])
def test_a_bad_record_is_refused_after_good_ones(fields, field, ranked):
    """Good records first (their holders are then known), then one with a
    single field wrong, in a submit's layout (read by one unpacking) or with
    a rank (read field by field): the fast path builds no task from it, and
    the full path refuses it naming that field -- or, for what the full path
    accepts (an int backoff, a method other than POST), builds the task."""
    extra = {"rank": 1} if ranked else {}
    for i in range(3):
        assert rs._fast(_record(id=f"good{i}", **extra), CONFIG) is not None
    bad = _record(**extra)
    bad.update(fields)
    assert rs._fast(bad, CONFIG) is None
    if field is None:
        assert rs.task_from_record(bad, CONFIG).id == "t1"
        return
    with pytest.raises(InvalidField) as info:
        rs.task_from_record(bad, CONFIG)
    assert info.value.details["field"] == field


def test_the_fast_path_builds_the_full_paths_task():
    record = _record(key="k1", expires=NOW + 60.0, rank=1)
    quick, full = rs._fast(record, CONFIG), rs._full(record, CONFIG)
    assert quick is not None
    for name in ("id", "queue", "name", "body", "eta", "created", "expires", "key", "rank", "holders",
                 "replicas", "timeout", "spec", "standby", "copy_wait", "meta", "error", "state", "attempt"):
        assert getattr(quick, name) == getattr(full, name), name
    assert quick.spec is full.spec          # interned
    assert type(quick.holders) is tuple


def test_a_record_that_sets_no_extra_shares_the_defaults():
    """A task without holders, rank, key or expiry keeps the shared default
    extras (memory per task); one with any of them has its own."""
    bare = rs._fast(_record(holders=[], rank=0), CONFIG)
    assert bare is not None and bare.extra is NO_EXTRA
    copy = rs._fast(_record(), CONFIG)
    assert copy is not None and copy.extra is not NO_EXTRA and copy.holders == ("n1", "n2", "n3")
