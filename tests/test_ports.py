"""The one port picker of tests and tools (miyaq.testing.ports): ports the
kernel hands out for bind(0) come from the ephemeral range, where any
outgoing connection may take one before the server that wanted it binds it
(a CI run lost a gateway test so: "port 60715 is in use")."""
from __future__ import annotations

import socket

import pytest

from miyaq.testing import ports


def test_ports_are_picked_below_the_ephemeral_range_free_and_never_twice_in_a_row():
    start = ports._ephemeral_start()
    picked = [ports.free_port(span=3) for _ in range(300)]
    assert all(ports.LOWEST <= p and p + 3 <= start for p in picked)
    spans = [p + i for p in picked for i in range(3)]
    assert len(set(spans)) == len(spans)          # no port handed out twice, spans included
    with socket.socket() as s:
        s.bind(("127.0.0.1", picked[-1] + 2))     # the whole span was free


@pytest.mark.parametrize("count", [2, 3])
def test_parallel_test_workers_pick_from_slices_of_their_own(monkeypatch, count):
    slices = []
    for index in range(count):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
        low, high = ports._slice(3)
        assert high > low
        slices.append((low, high))
        assert all(low <= ports.free_port(span=3) < high for _ in range(20))
    for (_, high), (low, _) in zip(slices, slices[1:]):
        assert high <= low


def test_a_port_held_by_another_socket_is_not_picked(monkeypatch):
    """Fault: something already listens where the picker would go."""
    base = next(p for p in range(21_000, 22_000, 2) if ports.port_is_free(p) and ports.port_is_free(p + 1))
    monkeypatch.setattr(ports, "_slice", lambda span: (base, base + 2))
    monkeypatch.setattr(ports, "_next", {base: base})
    with socket.socket() as held:
        held.bind(("127.0.0.1", base))
        held.listen()
        assert ports.free_port() == base + 1


@pytest.mark.parametrize("count", [2, 3])
def test_a_workers_blocks_of_any_span_never_reach_into_another_workers_slice(monkeypatch, count):
    """Fault (review41): a slice's bounds were computed for the span asked
    (the ephemeral range's start less the span, split by the worker count)
    and bounded the block's first port only: with three workers gw0's
    block of 100 (a docs page's ``9000`` range, tests/docrun/ports.py) could
    start 99 ports before the end of its slice and so end up to 98 ports
    into gw1's, 65 into where gw1 hands out its single ports -- the race between a check and a
    bind the slices are there to prevent. Every port of every block a worker
    may hand out, whatever its span, is now within that worker's share."""
    ends = {}
    for index in range(count):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
        spans = {span: ports._slice(span) for span in (1, 3, 20, 50, 100)}
        first = min(low for low, _ in spans.values())
        last = max(high - 1 + span - 1 for span, (_, high) in spans.items())    # the last port of the last block
        ends[index] = (first, last)
    for index in range(count - 1):
        assert ends[index][1] < ends[index + 1][0], ends


def test_a_block_of_100_comes_from_the_slice_after_thousands_of_single_ports(monkeypatch):
    """Fault (CI, 2026-12-07): a pytest worker that had handed out a few
    thousand ports (its share of the suite) asked for a docs page's block
    of 100 and got one in the ephemeral range (60041): the picker skipped
    the last 4,096 ports it had handed out, scattered at random over a
    slice of 7,589, and no 100 consecutive ports avoided them. Now it walks
    its slice: the block comes from the slice, apart from every port
    handed out before it."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    monkeypatch.setattr(ports, "_next", {})
    low, high = ports._slice(1)
    singles = [ports.free_port() for _ in range(4_000)]
    block = ports.free_port(span=100)
    assert low <= block and block + 100 <= high + 1, (block, low, high)
    assert not set(singles) & set(range(block, block + 100))
    assert len(set(singles)) == len(singles)
