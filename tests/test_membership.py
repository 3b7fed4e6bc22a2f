"""Membership values (Member, RingView) and the standalone coordinator: no ZooKeeper needed.

Each value is decoded from untrusted JSON, so the bad inputs listed here must
raise ``ConfigError`` rather than build a broken member or view.
"""
from __future__ import annotations

import json

import pytest

from miyaq.cluster.membership import StandaloneCoordinator
from miyaq.cluster.ring_view import Member, RingView
from miyaq.errors import ConfigError


def member(node_id: str, weight: float = 1.0) -> Member:
    base = 7400 + sum(node_id.encode()) % 500
    return Member(
        node_id=node_id,
        service=f"tcp://127.0.0.1:{base}",
        peer=f"tcp://127.0.0.1:{base + 1000}",
        pub=f"tcp://127.0.0.1:{base + 2000}",
        http=f"http://127.0.0.1:{base + 3000}",
        weight=weight,
    )


def test_member_round_trips_and_validates():
    m = member("n1", weight=2)
    assert Member.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert Member.from_dict({**m.to_dict(), "extra": 1}) == m
    for bad in (
        None,
        [],
        {**m.to_dict(), "node_id": ""},
        {**m.to_dict(), "node_id": "a/b"},
        {**m.to_dict(), "service": 5},
        {**m.to_dict(), "http": 1},
        {**m.to_dict(), "pub": "tcp://" + "h" * 600 + ":1"},      # longer than any endpoint a node advertises
        {**m.to_dict(), "http": "http://" + "h" * 600},
        {**m.to_dict(), "weight": "2"},
        {**m.to_dict(), "weight": 0},
        {k: v for k, v in m.to_dict().items() if k != "peer"},
    ):
        with pytest.raises(ConfigError):
            Member.from_dict(bad)


def test_ring_view_round_trips_and_routes():
    view = RingView(epoch=4, members={k: member(k) for k in ("a", "b", "c")}, leader="a")
    again = RingView.from_dict(json.loads(json.dumps(view.to_dict())))
    assert again == view and again.ring == view.ring
    assert [m.node_id for m in view.holders("k", 2)] == view.ring.preference_list("k", 2)
    assert RingView.empty().holders("k", 3) == [] and RingView.empty().ring is None
    with pytest.raises(ConfigError):
        RingView.from_dict({"epoch": "1", "members": {}})
    with pytest.raises(ConfigError):
        RingView.from_dict({"epoch": 1, "members": {"x": member("a").to_dict()}})


def test_standalone_is_a_ring_of_one_and_its_own_leader():
    local = member("solo")
    coordinator = StandaloneCoordinator(local)
    views: list[RingView] = []
    leadership: list[tuple[bool, int]] = []
    coordinator.add_listener(views.append)
    coordinator.add_leader_listener(lambda is_leader, epoch: leadership.append((is_leader, epoch)))
    coordinator.start()
    coordinator.start()
    assert [v.epoch for v in views] == [1]
    assert views[0].members == {"solo": local} and views[0].leader == "solo"
    assert coordinator.is_leader and leadership == [(True, 1)]
    assert [m.node_id for m in coordinator.view.holders("any", 3)] == ["solo"]
    assert coordinator.registered() == {"solo": local}
    assert coordinator.wait_for_view(lambda v: "solo" in v, timeout=1) is coordinator.view
    coordinator.join("solo")
    with pytest.raises(ConfigError):
        coordinator.join("other")
    with pytest.raises(ConfigError):
        coordinator.leave("solo")
    coordinator.stop()
    assert not coordinator.is_leader and leadership == [(True, 1), (False, 1)]
