"""zk_failover.through_failover's bounds, with its clock driven by the
test: what ends the retries of a registration cut by ZooKeeper failing
(the retries themselves, against a real server:
tests/test_zk_coordinator.py)."""
from __future__ import annotations

from typing import Any

import pytest

from miyaq.cluster import zk_failover
from miyaq.cluster.zk_failover import REGISTER_RETRY, through_failover
from miyaq.errors import ConfigError, Forbidden, Unavailable

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def clock(monkeypatch: Any) -> list[float]:
    """The module's clock, ``[now]``; its sleeps move it on at once."""
    now = [1000.0]
    monkeypatch.setattr(zk_failover, "monotonic", lambda: now[0])

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(zk_failover.green, "sleep", sleep)
    return now


def test_an_ensemble_that_stays_unreachable_ends_the_retries_within_the_connect_timeout(clock):
    """Fault: ZooKeeper never answers again while the node registers (the
    whole ensemble down). The steps are tried again for ``within`` seconds,
    not for ever (mutation of review32: without the deadline's check every
    test passed, and such a node's start never ended), then the last
    ``Unavailable`` is raised."""
    tries: list[float] = []
    start = clock[0]

    def steps() -> None:
        tries.append(clock[0])
        assert len(tries) <= 100, f"still trying {clock[0] - start:g} s after the start, within 2 s"
        raise Unavailable(f"ZooKeeper at 127.0.0.1:1: ConnectionLoss (try {len(tries)})")

    with pytest.raises(Unavailable, match=r"ConnectionLoss \(try 8\)"):
        through_failover(steps, 2.0, "n1")
    assert len(tries) == int(2.0 / REGISTER_RETRY)
    assert tries[-1] - start < 2.0


@pytest.mark.parametrize("error", [ConfigError("node id 'n1' is registered by another live session"),
                                   Forbidden("ZooKeeper refused these credentials (NoAuth)"),
                                   KeyError("a bug")])
def test_an_error_that_is_not_zookeeper_failing_ends_the_registration_at_once(clock, error, caplog):
    """An error a retry cannot mend -- the node id taken, credentials
    refused, a bug -- is raised at the first try, with no WARNING of a
    retry (mutation of review32: retrying every error passed every test;
    such a start then ended only after ``zk_connect_timeout``, a WARNING
    line every quarter second, saying ZooKeeper failed)."""
    tries = []

    def steps() -> None:
        tries.append(clock[0])
        raise error

    with caplog.at_level("WARNING", logger="miyaq.cluster.zk_coordinator"):
        with pytest.raises(type(error)):
            through_failover(steps, 10.0, "n1")
    assert len(tries) == 1
    assert not [r for r in caplog.records if "trying again" in r.getMessage()]


def test_steps_that_pass_after_a_failover_are_tried_again_until_they_do(clock):
    tries = []

    def steps() -> None:
        tries.append(clock[0])
        if len(tries) < 3:
            raise Unavailable("ZooKeeper at 127.0.0.1:1: ConnectionLoss")

    through_failover(steps, 10.0, "n1")
    assert len(tries) == 3


def test_a_long_failover_logs_a_line_every_ten_seconds_not_every_try(clock, caplog):
    """Fault: the ensemble stays unreachable for a whole long
    ``zk_connect_timeout`` (60 s here) while the node registers. Before
    2026-12-07 each try logged its WARNING, four a second (240 here, 14,400
    at the setting's largest, an hour); now the first failure at once, then
    one line every ``REGISTER_RETRY_LINES`` seconds, each with how many
    tries failed so far."""
    tries: list[float] = []

    def steps() -> None:
        tries.append(clock[0])
        assert len(tries) <= 1000
        raise Unavailable("ZooKeeper at 127.0.0.1:1: ConnectionLoss")

    with caplog.at_level("WARNING", logger="miyaq.cluster.zk_coordinator"):
        with pytest.raises(Unavailable):
            through_failover(steps, 60.0, "n1")
    lines = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(tries) == int(60.0 / REGISTER_RETRY)
    assert len(lines) == 6, lines
    assert "n1: ZooKeeper failed while registering (ZooKeeper at 127.0.0.1:1: ConnectionLoss)" in lines[0]
    assert "trying again for up to 60s (zk_connect_timeout): 1 try failed in 0s" in lines[0], lines[0]
    assert "41 tries failed in 10s" in lines[1], lines[1]
