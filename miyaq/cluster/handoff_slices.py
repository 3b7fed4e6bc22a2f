"""How the handoff cuts its work into slices: a pass over every task, a
resend of the unconfirmed copies (:mod:`miyaq.cluster.handoff`) and an
outcomes' handoff (:mod:`miyaq.cluster.outcome_handoff`) each work through
their items a slice at a time, yielding to the hub between slices
(:func:`_slices`).

Tests slow the pause down (``_let_others_run``) or make the slices small
(``HANDOFF_SLICE``) to deliver answers mid-pass: both are read here.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from miyaq.constants import HANDOFF_SLICE
from miyaq.runtime import green

_let_others_run = green.let_others_run     # between slices (a test slows it down to deliver mid-pass)

FIRST_SLICE = 256
"""Items in the first slice of a pass, a resend or an outcomes' handoff; the
later slices are sized by how long the one before took (:func:`_slices`)."""
FEWEST_IN_A_SLICE = 32
"""However slow the host, a slice takes at least this many items (so a pass ends)."""

T = TypeVar("T")


def _slices(items: list[T]) -> Iterator[list[T]]:
    """``items`` in slices of about ``green.HUB_SLICE`` of real time each
    (:func:`miyaq.runtime.green.slices`: between ``FEWEST_IN_A_SLICE`` and
    ``HANDOFF_SLICE`` items, ``FIRST_SLICE`` first), yielding to the hub
    between them. Before 2026-12-05 every slice was ``HANDOFF_SLICE``
    (2,000) tasks: 46 ms of CPU at most, but 0.17-0.37 s of real time on a
    loaded host, and with the peer answers read between slices one hub
    iteration took up to 0.87 s, near a standby's 1 s QUERY deadline."""
    return green.slices(items, first=FIRST_SLICE, fewest=FEWEST_IN_A_SLICE, most=HANDOFF_SLICE,
                        pause=lambda: _let_others_run())
