"""A task's attempts: who each was leased to, and the wait before the next.

Who may report: every lease records who it went to (the consumer's
``principal``: a worker's key and id, a pull consumer's key or connection,
``http``, ``webhook``), for the last ``LEASE_HISTORY`` attempts. DONE, FAILED
and TOUCH name who reports (``by``); a report on an attempt that was not
leased to them -- a task never dispatched to them, a *scheduled* task never
dispatched at all -- changes nothing and is counted in the engine's
``not_leased``. ``by=None`` is the node's own trusted caller (tests, internal
use).

Plain functions on a :class:`~miyaq.store.task.Task`: no I/O, no engine
state, so the cluster's holders and the gateway's webhook delivery apply the
same rules as the engine.
"""
from __future__ import annotations

import random

from miyaq.constants import LEASE_HISTORY
from miyaq.store.task import Task


def note_lessee(task: Task, attempt: int, principal: str | None) -> None:
    """Remember that ``attempt`` of ``task`` was leased to ``principal`` (the
    last LEASE_HISTORY attempts are kept)."""
    if principal is None:
        return
    lessees = task.lessees
    if lessees is None:
        task.lessees = [(attempt, principal)]
        return
    lessees.append((attempt, principal))
    if len(lessees) > LEASE_HISTORY:
        del lessees[0]


def forget_lease(task: Task, attempt: int) -> None:
    """``attempt`` was given back unstarted: its number is leased again next,
    and only to whoever takes it then -- the consumer that gave it back may
    not report on that lease."""
    lessees = task.lessees
    if lessees and lessees[-1][0] == attempt:
        lessees.pop()


def adopt_lessees(task: Task, other: Task) -> None:
    """Remember on ``task`` the leases that ``other`` -- another holder's copy
    of it, handed off or sent in a resync -- knows of and it does not (the
    latest LEASE_HISTORY attempts of both, in attempt order)."""
    theirs = other.lessees
    if not theirs:
        return
    mine = task.lessees or []
    if all(lease in mine for lease in theirs):
        return
    task.lessees = sorted(set(mine) | set(theirs))[-LEASE_HISTORY:]


def leased_to(task: Task, attempt: int | None, principal: str) -> bool:
    """Was ``attempt`` of ``task`` (None: its latest lease) leased to ``principal``?"""
    lessees = task.lessees
    if not lessees:
        return False
    if attempt is None:
        return lessees[-1][1] == principal
    return (attempt, principal) in lessees     # no generator: once per DONE


def retry_delay(task: Task, rng: random.Random = random._inst) -> float:  # type: ignore[attr-defined]
    """Exponential backoff with equal jitter: half fixed, half random."""
    base = min(task.backoff_max, task.backoff * (2 ** max(0, task.attempt - 1)))
    return base / 2 + rng.random() * base / 2

