"""``green.slices``: a loop over a snapshot of a node's state (a handoff
pass) takes slices sized by real time, so a slow host holds the hub about
as long as a fast one. The sizes asserted follow from lower bounds of
``time.sleep`` alone, never from how fast the machine is."""
from __future__ import annotations

import time

import pytest

from miyaq.cluster import handoff_slices as handoff
from miyaq.runtime import green

pytestmark = pytest.mark.timeout(60)


def test_a_slice_that_took_long_makes_the_next_one_as_small_as_allowed():
    """Fault: a handoff pass took 2,000 tasks a slice whatever the time:
    46 ms of CPU, but 0.17-0.37 s of real time on a loaded host, and one
    hub iteration (a slice plus the peer answers read after it) reached
    0.87 s, near a standby's 1 s QUERY deadline. Each slice is now sized
    from how long the one before took: 8 items that took at least 80 ms
    (10 times HUB_SLICE) make the next slice the fewest allowed."""
    pauses: list[int] = []
    seen: list[int] = []
    items = list(range(40))
    for chunk in green.slices(items, first=8, fewest=3, most=100, pause=lambda: pauses.append(len(seen))):
        seen.extend(chunk)
        if len(seen) == 8:
            time.sleep(0.08)      # the first slice: at least 80 ms for 8 items
    assert seen == items                     # every item once, in order
    sizes = [b - a for a, b in zip([0] + pauses, pauses + [len(items)])]
    assert sizes[0] == 8 and sizes[1] == 3, sizes
    assert len(pauses) == len(sizes) - 1     # a pause between two slices, never after the last


def test_the_slices_never_pass_the_most_nor_start_above_it():
    """The first slice is ``first`` unless ``most`` is smaller (tests of the
    handoff set a small ``HANDOFF_SLICE``), and no slice is larger."""
    sizes = [len(chunk) for chunk in green.slices(list(range(25)), first=256, fewest=32, most=10,
                                                   pause=lambda: None)]
    assert sizes[0] == 10 and max(sizes) <= 10 and sum(sizes) == 25


def test_a_handoff_pass_is_sliced_by_the_runtime(monkeypatch):
    """The handoff's passes, resends and outcome handoffs take their slices
    from ``green.slices`` with its bounds (``HANDOFF_SLICE`` at most)."""
    asked: list[dict[str, int]] = []

    def recording(items, *, first, fewest, most, pause=None):
        asked.append({"first": first, "fewest": fewest, "most": most})
        yield items

    monkeypatch.setattr(green, "slices", recording)
    assert list(handoff._slices([1, 2, 3])) == [[1, 2, 3]]
    assert asked == [{"first": handoff.FIRST_SLICE, "fewest": handoff.FEWEST_IN_A_SLICE,
                      "most": handoff.HANDOFF_SLICE}]
