"""Who each attempt was leased to (miyaq.core.attempts): a copy that learns
the leases another holder knows keeps the latest LEASE_HISTORY in order."""
from __future__ import annotations

from miyaq.constants import LEASE_HISTORY
from miyaq.core.attempts import adopt_lessees, leased_to, note_lessee
from miyaq.store.task import Task


def _task(*leases: tuple[int, str]) -> Task:
    task = Task("t1", "q", "job", b"")
    for attempt, principal in leases:
        note_lessee(task, attempt, principal)
    return task


def test_a_copy_that_knew_no_lease_adopts_the_other_holders():
    mine, theirs = _task(), _task((1, "worker:a"))
    adopt_lessees(mine, theirs)
    assert mine.lessees == [(1, "worker:a")]
    assert leased_to(mine, 1, "worker:a") and leased_to(mine, None, "worker:a")


def test_leases_merge_in_attempt_order_and_the_latest_stay():
    mine = _task((1, "worker:a"), (3, "worker:c"))
    theirs = _task((2, "worker:b"), *((n, f"worker:{n}") for n in range(4, 2 + LEASE_HISTORY)))
    adopt_lessees(mine, theirs)
    assert [a for a, _ in mine.lessees] == list(range(2, 2 + LEASE_HISTORY))    # attempt 1 fell off
    assert mine.lessees[-1] == theirs.lessees[-1] and not leased_to(mine, 1, "worker:a")
    assert leased_to(mine, 2, "worker:b") and leased_to(mine, 3, "worker:c")


def test_nothing_new_changes_nothing():
    mine = _task((1, "worker:a"), (2, "worker:b"))
    before = mine.lessees
    adopt_lessees(mine, _task((2, "worker:b")))
    adopt_lessees(mine, _task())
    assert mine.lessees is before and mine.lessees == [(1, "worker:a"), (2, "worker:b")]
