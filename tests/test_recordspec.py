"""Unit tests of miyaq/protocol/recordspec.py: what a node accepts from
another node and from its log.

The replication path checks the common record in one pass (``_fast``) and
everything else field by field (``_full``); a seeded differential test
shows the two agree: the fast path accepts only what the full one accepts,
and builds the same task.
"""
from __future__ import annotations

import random
import time
from typing import Any

import pytest
from fuzz_inputs import Inputs

from miyaq.config import NodeConfig
from miyaq.errors import InvalidField
from miyaq.protocol import eventspec as es
from miyaq.protocol import recordspec as rs
from miyaq.store.table import TaskTable
from miyaq.store.task import EXTRA_FIELDS, SPEC_FIELDS, Task

NOW = time.time()
CONFIG = NodeConfig()


def _slots(task: Task) -> dict[str, Any]:
    """Every field of ``task``, the shared ones (spec, extra) read one by one."""
    fields = SPEC_FIELDS + EXTRA_FIELDS + ("id", "body", "eta", "created", "state", "attempt", "lease_end", "lane")
    return {k: getattr(task, k) for k in fields}


def test_fast_and_full_paths_agree_on_random_records():
    """Seeded: 20,000 records, valid ones and ones with one field wrong.
    Whenever the fast path builds a task, the full path builds the same;
    the full path alone decides what is refused."""
    inputs = Inputs(random.Random(5), "n1", "p1", NOW)
    fast = refused = 0
    for _ in range(20_000):
        record = inputs.record()
        if inputs.rng.random() < 0.5:
            record = inputs.mutate(record)
        try:
            full = rs._full(record, CONFIG)
        except InvalidField:
            full = None
            refused += 1
        quick = rs._fast(record, CONFIG)
        if quick is not None:
            fast += 1
            assert full is not None, record
            assert _slots(quick) == _slots(full), record
    assert fast > 2000 and refused > 2000       # both paths were exercised


@pytest.mark.parametrize("event", [
    ["F", "t1", "done", None, None], ["F", "t1", "started-elsewhere", b"r", {"type": "E", "message": "m"}],
    ["S", "t1", 1, NOW, True], ["S", "t1", 1, NOW], ["T", "t1", NOW], ["R", "t1", 2, 0.0, None],
    ["D", "t1", 3, {"type": "E", "status": 500, "failed_at": NOW}], ["V", "t1"], ["P", "t1"],
    ["F", "t1", "done", None, None, "a field of a newer version"],
])
def test_good_events_pass(event):
    es.check_event(event, CONFIG)


@pytest.mark.parametrize("event,field", [
    (["F", "t1", 12345, None, None], "state"), (["F", "t1", "dead", None, None], "state"),
    (["F", "t1", "done", "text", None], "result"), (["F", "t1", "done", None, ["e"]], "error"),
    (["S", "t1", -1, NOW], "attempt"), (["S", "t1", True, NOW], "attempt"), (["S", "t1", 1, float("nan")], "lease_end"),
    (["S", "t1", 1, NOW, "yes"], "at_most_once"), (["S", "t1", 1, NOW, False, 7], "event"),
    (["T", "t1", "soon"], "lease_end"), (["R", "t1", 1, 1e300, None], "eta"),
    (["D", "t1", 1, {"type": 5}], "error"), (["D", "t1", 1, {"k" * 65: 1}], "error"),
    (["Z", "t1"], "event"), (["F", "t1"], "event"), ([], "event"), ("F", "event"), (["F", 7, "done", None, None], "id"),
])
def test_bad_events_name_their_field(event, field):
    with pytest.raises(InvalidField) as info:
        es.check_event(event, CONFIG)
    assert info.value.details["field"] == field


@pytest.mark.parametrize("answer,ok", [
    (["running", False, 0, NOW], True), (["scheduled", True, 1, NOW], True), (["dead"], True), (["unknown"], True),
    (["done", b"r", None], True), (["cancelled"], True),
    (["running", "no", 0, NOW], False), (["running", False, 99, NOW], False), (["running", False, 0], False),
    (["done", "text", None], False), (["exploded"], False), ([], False), ({"state": "done"}, False),
])
def test_query_answers(answer, ok):
    if ok:
        es.check_state_answer(answer, CONFIG)
    else:
        with pytest.raises(InvalidField):
            es.check_state_answer(answer, CONFIG)


def test_invalid_stored_names_each_bad_task_and_tombstone():
    """A table poisoned behind the checks' back (as a bug would): the
    invariant names the task whose queue is an int, the one whose priority
    is a string, and the tombstone whose result is text."""
    table = TaskTable(100, 3600.0, 100)
    good = Task("good", "q", "n", b"", eta=NOW, created=NOW)
    table.add(good)
    bad_queue = Task("bad-queue", 12345, "n", b"", eta=NOW)      # type: ignore[arg-type]
    bad_prio = Task("bad-prio", "q", "n", b"", priority="high", eta=NOW)   # type: ignore[arg-type]
    table.add(bad_queue)
    table.add(bad_prio)
    table.bury(Task("stone", "q", "n", b""), "done", "text", NOW)      # type: ignore[arg-type]
    problems = rs.invalid_stored(table, CONFIG)
    assert [p.split(":")[0] for p in problems] == ["live task 'bad-queue'", "live task 'bad-prio'",
                                                   "tombstone 'stone'"], problems
