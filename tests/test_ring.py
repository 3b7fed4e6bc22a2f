"""Consistent-hash ring: placement is stable, distinct, balanced and weighted."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from miyaq.protocol.ring import MAX_POINTS, MAX_VNODES, MAX_WEIGHT, Ring, check_weight, stable_hash
from miyaq.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
TEN = {f"node-{i}": 1.0 for i in range(10)}
KEYS = [f"task-{i}" for i in range(20_000)]


def test_placement_is_identical_in_another_process():
    """Python's hash() is salted per process; the ring's hash must not be."""
    keys = [f"k{i}" for i in range(200)] + ["ключ", ""]
    here = [Ring(TEN).preference_list(k, 3) for k in keys]
    script = (
        "import json, sys\n"
        "from miyaq.protocol.ring import Ring\n"
        "keys = json.loads(sys.stdin.read())\n"
        f"ring = Ring({TEN!r})\n"
        "print(json.dumps([ring.preference_list(k, 3) for k in keys]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "random", "PATH": ""},
        timeout=30,
    )
    assert json.loads(out.stdout) == here


def test_bytes_and_str_keys_agree():
    ring = Ring(TEN)
    assert ring.preference_list("abc", 3) == ring.preference_list(b"abc", 3)
    assert stable_hash("abc") == stable_hash(b"abc")


def test_preference_list_holds_distinct_nodes():
    ring = Ring(TEN)
    for key in KEYS[:2000]:
        holders = ring.preference_list(key, 3)
        assert len(holders) == 3
        assert len(set(holders)) == 3
        assert holders[0] == ring.primary(key)


def test_n_larger_than_members_returns_every_member():
    ring = Ring({"a": 1, "b": 1, "c": 2})
    holders = ring.preference_list("x", 10)
    assert sorted(holders) == ["a", "b", "c"]
    assert ring.preference_list("x", 0) == []


def test_removing_one_of_ten_moves_about_a_tenth_of_primaries():
    before = Ring(TEN)
    after = Ring({k: w for k, w in TEN.items() if k != "node-3"})
    moved = sum(1 for k in KEYS if before.primary(k) != after.primary(k))
    assert moved / len(KEYS) < 0.20
    # Only keys the removed node owned may move.
    assert all(before.primary(k) == "node-3" for k in KEYS if before.primary(k) != after.primary(k))


def test_weight_two_gets_about_twice_the_share():
    members = dict(TEN, heavy=2.0)
    ring = Ring(members)
    share = ring.share()
    light = sum(v for k, v in share.items() if k != "heavy") / 10
    assert 1.5 < share["heavy"] / light < 2.5
    counts = {k: 0 for k in members}
    for key in KEYS:
        counts[ring.primary(key)] += 1
    assert 1.5 < counts["heavy"] / (sum(counts.values()) - counts["heavy"]) * 10 < 2.5


def test_share_sums_to_one():
    for members in (TEN, {"solo": 1.0}, {"a": 0.5, "b": 3.0, "c": 1.0}):
        assert math.isclose(sum(Ring(members).share().values()), 1.0, rel_tol=1e-12)
    assert Ring({"solo": 1.0}).share() == {"solo": 1.0}


def test_share_matches_key_placement():
    ring = Ring(TEN)
    counts = {k: 0 for k in TEN}
    for key in KEYS:
        counts[ring.primary(key)] += 1
    for node_id, fraction in ring.share().items():
        assert abs(counts[node_id] / len(KEYS) - fraction) < 0.02


@pytest.mark.parametrize(
    "members",
    [{}, {"a": 0}, {"a": -1.0}, {"a": float("nan")}, {"a": float("inf")}, {"a": "1"}, {"a": True}, {"": 1.0}],
)
def test_bad_members_raise_config_error(members):
    with pytest.raises(ConfigError):
        Ring(members)


@pytest.mark.parametrize("vnodes", [0, -5, 1.5, True, MAX_VNODES + 1])
def test_bad_vnodes_raise_config_error(vnodes):
    with pytest.raises(ConfigError):
        Ring(TEN, vnodes=vnodes)


@pytest.mark.parametrize("members,vnodes", [
    ({"a": 1, "b": MAX_WEIGHT * 2}, 160),          # one weight over the bound
    ({"a": 1, "b": 5000}, 1),                       # the audit's 5,000 (800,160 points at 160 vnodes)
    ({f"n{i}": 1 for i in range(500)}, 160),        # 80,000 points in all
])
def test_a_ring_too_large_to_build_everywhere_is_refused(members, vnodes):
    """Fault: an operator's typo (a weight of 5,000) or a znode another tool
    wrote. Every node and client builds the ring each time it changes, in
    the hub: before 2026-12-05 a weight of 5,000 made 800,160 points and
    stalled every node past its ZooKeeper session. A weight is at most
    MAX_WEIGHT and a ring at most MAX_POINTS points (the client's bound)."""
    with pytest.raises(ConfigError, match="at most|points"):
        Ring(members, vnodes=vnodes)
    with pytest.raises(ConfigError):
        check_weight(MAX_WEIGHT * 2)
    assert check_weight(MAX_WEIGHT) == MAX_WEIGHT
    assert len(Ring({f"n{i}": 1 for i in range(MAX_POINTS // 160)}))


def test_members_weights_len_contains_and_equality():
    ring = Ring({"b": 2, "a": 1})
    assert ring.members == ("a", "b")
    assert dict(ring.weights) == {"a": 1.0, "b": 2.0}
    assert len(ring) == 2
    assert "a" in ring and "z" not in ring
    assert ring == Ring({"a": 1.0, "b": 2.0})
    assert hash(ring) == hash(Ring({"a": 1.0, "b": 2.0}))
    assert ring != Ring({"a": 1.0, "b": 1.0})
    assert ring != Ring({"a": 1.0, "b": 2.0}, vnodes=100)
    with pytest.raises(TypeError):
        ring.weights["a"] = 5  # type: ignore[index]


def test_vnodes_scale_with_weight():
    assert Ring({"a": 1}, vnodes=10).points == 10
    assert Ring({"a": 1, "b": 2.5}, vnodes=10).points == 35
    assert Ring({"tiny": 0.0001}, vnodes=10).points == 1


def test_a_weight_past_a_floats_range_is_a_config_error_not_an_overflow():
    """Fault (a review audit): a member znode whose weight is an integer of
    401 digits made ``float()`` raise OverflowError, which the readers of
    member znodes do not catch (they skip a ConfigError): every node's start
    failed for as long as that znode stayed. It is a ConfigError naming the
    weight, shortened."""
    with pytest.raises(ConfigError, match=r"weight must be finite, > 0 and at most .*, got 1{40}\.\.\.$"):
        check_weight(int("1" * 401))
