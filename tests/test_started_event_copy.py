"""A STARTED event applied to a standby copy (miyaq/cluster/holder_events.py,
``_started_elsewhere``), after it was made cheaper (2026-12-07: the copy's
extras read directly, and what ``check_event`` checked not checked again):
the copy still becomes a standby that waits exactly its rank's offsets past
the runner's lease, keeps the highest attempt, remembers who the attempt
was leased to (when the event names one), and an at-most-once task's copy
is dropped as started elsewhere. Copies are handed to one holder as a
REPLICATE would hand them, events as its stream would.
"""
from __future__ import annotations

from miyaq.cluster.holder_events import apply_events
from miyaq.core import placeholders
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import wall
from miyaq.store.records import task_record


def _copy_on(cluster, holder: str, rank: int, **fields) -> tuple[str, str]:
    """A task stored on ``holder`` as its copy of rank ``rank``; (id, its first holder)."""
    while True:
        tid = cluster.task_id()
        holders = cluster.holders(tid)
        if holders.index(holder) == rank:
            break
    node = cluster[holder]
    task = task_from_wire({"id": tid, "name": "noop", "body": b"x", **fields}, wall(), node.config)
    task.holders = tuple(holders)
    record = task_record(task)
    record.pop("rank", None)
    answer = node.role.copies.on_replicate(holders[0], {"tasks": [record], "clock": wall()})
    assert answer is None or tid in answer["ids"]
    cluster.settle(0.05)
    assert node.state(tid) == "scheduled"
    return tid, holders[0]


def test_a_started_event_makes_each_copy_wait_its_ranks_offsets_past_the_lease(inproc):
    cluster = inproc(3)
    node = cluster["n2"]
    offset = node.config.replica_offset
    for rank in (1, 2):
        tid, runner = _copy_on(cluster, "n2", rank)
        lease_end = wall() + 120.0
        apply_events(node.role, runner, [["S", tid, 1, lease_end, False, "w1"]])
        copy = node.task(tid)
        assert (copy.state, copy.standby, copy.attempt, copy.rank) == ("scheduled", True, 1, rank)
        assert node.due_at(tid) == lease_end + rank * offset
        assert copy.lessees == [(1, "w1")]


def test_a_started_event_keeps_the_higher_attempt_and_names_no_lessee_when_it_has_none(inproc):
    cluster = inproc(3)
    node = cluster["n2"]
    tid, runner = _copy_on(cluster, "n2", 1)
    lease_end = wall() + 60.0
    apply_events(node.role, runner, [["S", tid, 3, lease_end, False, None]])
    apply_events(node.role, runner, [["S", tid, 2, lease_end + 1.0, False, None]])   # an older attempt's, late
    copy = node.task(tid)
    assert copy.attempt == 3
    assert not copy.lessees
    assert node.due_at(tid) == lease_end + 1.0 + node.config.replica_offset


def test_a_started_event_drops_an_at_most_once_copy_as_started_elsewhere(inproc):
    cluster = inproc(3)
    node = cluster["n2"]
    tid, runner = _copy_on(cluster, "n2", 2, at_most_once=True)
    apply_events(node.role, runner, [["S", tid, 1, wall() + 60.0, True, "w1"]])
    assert node.task(tid) is None
    assert node.tombstone(tid).state == STARTED_ELSEWHERE


def test_a_started_event_that_fails_its_check_changes_nothing(inproc):
    cluster = inproc(3)
    node = cluster["n2"]
    tid, runner = _copy_on(cluster, "n2", 1)
    before = node.due_at(tid)
    apply_events(node.role, runner, [["S", tid, "1", wall() + 60.0, False, "w1"],     # attempt not an int
                                     ["S", tid, 1, wall() + 60.0, False, 7]])         # lessee not a name
    copy = node.task(tid)
    assert (copy.attempt, copy.lessees, node.due_at(tid)) == (0, None, before)


def test_a_give_back_heard_before_the_copy_came_undoes_the_started_event_held_for_it(inproc):
    """Fault (review41): the runner's ``S`` event overtakes the copy's
    REPLICATE and is held for it (``hold_early``); the worker then gives
    the attempt back unstarted, and its ``R`` event (eta 0, the attempt one
    less: review40) finds no copy either. It was dropped, and the copy,
    when it came, took the held ``S``: attempt 1 and a wait past a lease
    that never ran -- for a task of ``max_retries`` 0 a take-over after the
    runner was lost then dead-letters, ``Lost``, an attempt that never ran.
    The give-back now drops the held ``S`` event of the attempt it gives
    back (a later attempt's, or a put-back's of the same, it keeps)."""
    cluster = inproc(3)
    node = cluster["n2"]
    while True:
        tid = cluster.task_id()
        holders = cluster.holders(tid)
        if holders.index("n2") == 1:
            break
    runner = holders[0]
    events = node.role.events
    apply_events(node.role, runner, [["S", tid, 1, wall() + 120.0, False, "w1"]])
    assert tid in events.early
    apply_events(node.role, runner, [["R", tid, 1, wall() + 5.0, None]])     # a put-back: the attempt ran
    other = next(n for n in holders if n not in (runner, "n2"))
    apply_events(node.role, other, [["R", tid, 0, 0.0, None]])               # another holder's own run
    assert tid in events.early
    apply_events(node.role, runner, [["R", tid, 0, 0.0, None]])              # given back unstarted
    assert tid not in events.early and events.early_bytes == 0
    task = task_from_wire({"id": tid, "name": "noop", "body": b"x", "max_retries": 0}, wall(), node.config)
    task.holders = tuple(holders)
    record = task_record(task)
    record.pop("rank", None)
    node.role.copies.on_replicate(runner, {"tasks": [record], "clock": wall()})
    cluster.settle(0.05)
    copy = node.task(tid)
    assert (copy.state, copy.attempt, copy.lessees) == ("scheduled", 0, None)
    assert node.due_at(tid) < wall() + 60.0
    assert not cluster.crashes()


def test_the_placeholders_leases_are_bounded_the_oldest_dropped_first(inproc, monkeypatch):
    """The leases an at-most-once task's placeholders keep (the lessee each
    takes a DONE from: miyaq.core.placeholders) are bounded by
    ``MAX_PLACEHOLDER_LEASES``, the oldest dropped first; a placeholder
    whose lease went refuses its lessee's DONE, as before leases were kept
    (review41: no test held the bound, its mutant survived)."""
    monkeypatch.setattr(placeholders, "MAX_PLACEHOLDER_LEASES", 2)
    cluster = inproc(3)
    node = cluster["n2"]
    tids = []
    for lessee in ("w1", "w2", "w3"):
        tid, runner = _copy_on(cluster, "n2", 1, at_most_once=True)
        apply_events(node.role, runner, [["S", tid, 1, wall() + 60.0, True, lessee]])
        assert node.tombstone(tid).state == STARTED_ELSEWHERE
        tids.append(tid)
    leases = node.engine.placeholder_leases
    assert list(leases) == tids[1:] and [lease.lessee for lease in leases.values()] == ["w2", "w3"]
    refused = node.engine.not_leased
    assert not node.engine.complete(tids[0], 1, b"lost", wall(), by="w1")
    assert node.engine.not_leased == refused + 1
    assert node.tombstone(tids[0]).state == STARTED_ELSEWHERE
    assert node.engine.complete(tids[2], 1, b"kept", wall(), by="w3")
    assert (node.tombstone(tids[2]).state, node.tombstone(tids[2]).result) == ("done", b"kept")
    assert list(leases) == [tids[1]]
    assert not cluster.crashes()


def test_a_placeholder_takes_the_lessee_of_a_later_started_event_of_its_task(inproc):
    """The runner of an at-most-once task leased its attempt again after a
    give-back (review41): the placeholder's lease takes the new lessee; an
    ``S`` event of an earlier attempt changes nothing; one naming no lessee
    drops the lease (its DONE is then refused, as the placeholder cannot
    tell whose it is)."""
    cluster = inproc(3)
    node = cluster["n2"]
    tid, runner = _copy_on(cluster, "n2", 1, at_most_once=True)
    leases = node.engine.placeholder_leases
    apply_events(node.role, runner, [["S", tid, 2, wall() + 60.0, True, "w1"]])
    apply_events(node.role, runner, [["S", tid, 2, wall() + 60.0, True, "w2"]])
    assert (leases[tid].attempt, leases[tid].lessee) == (2, "w2")
    apply_events(node.role, runner, [["S", tid, 1, wall() + 60.0, True, "w3"]])     # an earlier attempt's, late
    assert (leases[tid].attempt, leases[tid].lessee) == (2, "w2")
    apply_events(node.role, runner, [["S", tid, 2, wall() + 60.0, True, None]])
    assert tid not in leases
    assert not node.engine.complete(tid, 2, b"x", wall(), by="w2")
    assert node.tombstone(tid).state == STARTED_ELSEWHERE
    assert not cluster.crashes()
